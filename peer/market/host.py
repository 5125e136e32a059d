"""The daemon's handle on the market: loads it off the event loop and feeds it the tasks topic.

The market needs torch, whose import takes seconds; the daemon must serve its API and join
consensus meanwhile. So `MarketHost.serve` starts draining the tasks topic at once (every
envelope goes to the daemon's received log; market messages are buffered), imports the
market service in a worker thread, starts it, and then hands it the buffered and the new
market messages. Until then `service` is None and the API answers 503 "market starting".

This module imports nothing heavy, so the daemon can import it unconditionally.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from gossip.envelope import Envelope
from gossip.identity import Identity
from gossip.node import GossipNode
from gossip.transport import Transport
from peer.errors import PeerError
from peer.market.errors import MarketError
from peer.market.wire import is_market

if TYPE_CHECKING:
    from peer.ledger_service import LedgerService
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

BUFFER = 4096


class MarketHost:
    """Starts the market service of a peer with a ledger (see the module docstring).

    Args:
        policy: SolverPolicy fields (enabled, price_bps, min_price, max_jobs, behaviour).
        options: further MarketService keyword arguments (the verifier settings).
        own_addrs: our dialable addresses (announced with every market message).
        known_addrs: addresses of a peer that peer exchange learned (to dial a blob's holder).
    """

    def __init__(
        self,
        *,
        identity: Identity,
        transport: Transport,
        gossip: GossipNode,
        ledger: LedgerService,
        data_dir: Path,
        policy: dict[str, Any],
        own_addrs: Callable[[], list[str]],
        known_addrs: Callable[[str], Sequence[str]],
        options: dict[str, Any] | None = None,
    ) -> None:
        self._args = (options or {}) | {
            "identity": identity,
            "transport": transport,
            "gossip": gossip,
            "ledger": ledger,
            "data_dir": data_dir,
            "own_addrs": own_addrs,
            "known_addrs": known_addrs,
        }
        self._policy = policy
        self.service: MarketService | None = None

    async def serve(
        self,
        channel: trio.MemoryReceiveChannel[Envelope],
        on_envelope: Callable[[Envelope], object],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Drain `channel` (every envelope to `on_envelope`), load the market, run it until cancelled."""
        send, market_messages = trio.open_memory_channel[Envelope](BUFFER)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain, channel, on_envelope, send)
            task_status.started()
            module = await trio.to_thread.run_sync(importlib.import_module, "peer.market.service")
            try:
                service = module.MarketService(**self._args, policy=module.SolverPolicy(**self._policy))
            except (MarketError, OSError) as e:
                raise PeerError(f"cannot start the market: {e}") from None
            await nursery.start(service.serve)
            self.service = service
            log.info("market ready", solver=service.solver.status())
            async with market_messages:
                async for envelope in market_messages:
                    await service.deliver(envelope)

    async def _drain(
        self,
        channel: trio.MemoryReceiveChannel[Envelope],
        on_envelope: Callable[[Envelope], object],
        send: trio.MemorySendChannel[Envelope],
    ) -> None:
        async with channel, send:
            async for envelope in channel:
                on_envelope(envelope)
                if is_market(envelope):
                    try:
                        send.send_nowait(envelope)
                    except trio.WouldBlock:
                        log.warning("market busy, dropping a message (it will be re-announced)")

    def close(self) -> None:
        """Release the market's files; call after every task of the peer has finished."""
        if self.service is not None:
            self.service.close()

    def status(self) -> dict[str, Any]:
        return self.service.status() if self.service is not None else {"ready": False}
