"""Tx gossip in batches: txs admitted here leave as few, larger TOPIC_TX messages.

py-libp2p spends a few milliseconds of CPU per gossip message per hop, whatever its size
(notes/libp2p-measurements.md), so a burst of one message per tx queues up in front of the
consensus messages and stalls the chain. The batcher collects the txs our own mempool
admitted and publishes them as one kind "txs" envelope once `delay` seconds have passed
since the first of them, or as soon as MAX_BATCH_TXS txs or MAX_BATCH_BYTES bytes wait.
A batch that gossip loses is recovered by the gossip node's anti-entropy like any message.

One task (`run`) owns the pending batch; `add` hands it a tx over a memory channel.
"""

from __future__ import annotations

import structlog
import trio

from gossip.errors import GossipError
from gossip.node import GossipNode
from gossip.topics import TOPIC_TX
from ledger.inbound import KIND_TXS, MAX_BATCH_TXS

log = structlog.get_logger(__name__)

MAX_BATCH_BYTES = 64 * 1024  # ~250 transfers: amortises the per-message cost, stays a small message
QUEUE = 4096


class TxBatcher:
    """Publishes locally admitted txs on TOPIC_TX in batches. See the module docstring."""

    def __init__(self, gossip: GossipNode, *, delay: float = 0.02) -> None:
        self.gossip, self.delay = gossip, delay
        self.batches = 0
        self._send, self._recv = trio.open_memory_channel[bytes](QUEUE)

    async def add(self, tx: bytes) -> None:
        """Queue an admitted tx for the next batch (waits only if QUEUE txs are already waiting)."""
        await self._send.send(tx)

    async def run(self) -> None:
        carry: bytes | None = None
        while True:
            first = carry if carry is not None else await self._recv.receive()
            batch, size, carry = [first], len(first), None
            with trio.move_on_after(self.delay):
                while len(batch) < MAX_BATCH_TXS:
                    tx = await self._recv.receive()
                    if size + len(tx) > MAX_BATCH_BYTES:
                        carry = tx  # starts the next batch
                        break
                    batch.append(tx)
                    size += len(tx)
            await self._publish(batch)

    async def _publish(self, batch: list[bytes]) -> None:
        try:
            await self.gossip.publish(TOPIC_TX, KIND_TXS, batch)
        except GossipError as e:  # they stay in our mempool: we propose them ourselves in time
            log.info("tx batch gossip failed", txs=len(batch), error=str(e))
            return
        self.batches += 1
