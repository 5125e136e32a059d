"""Dialer: keeps every bootstrap address connected, in the background, over any Transport.

No transport redials by itself (py-libp2p verifiably does not), and a dead bootstrap address
must never delay start-up. One task per address dials with exponential backoff and jitter,
then watches `connected_peers()` and dials again as soon as the peer drops. A dead address
keeps failing quietly; `status()` says what happened last.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import trio

from gossip.errors import GossipError
from gossip.transport import PeerId, Transport

log = logging.getLogger(__name__)


@dataclass
class _Target:
    addr: str
    peer_id: PeerId | None  # from the address when it names one, else learned on first connect
    last_error: str | None = None
    failures: int = 0
    dialing: bool = False  # the transport may list the peer before the dial has finished


def peer_id_in_address(addr: str) -> PeerId | None:
    """The peer id an address names: `.../p2p/<id>` (libp2p) or `/memory/<id>`; else None."""
    parts = [p for p in addr.strip().split("/") if p]
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "p2p":
            return parts[i + 1]
    if len(parts) == 2 and parts[0] == "memory":
        return parts[1]
    return None


class Dialer:
    """Keeps a transport connected to a fixed list of bootstrap addresses.

    Args:
        transport: a serving Transport (dials before it serves just fail and are retried).
        bootstrap: addresses to keep connected; duplicates and our own address are skipped.
        min_backoff / max_backoff: delay bounds between failed dials of one address (seconds).
        dial_timeout: limit of one dial attempt.
        poll_interval: how often a connected address is checked for a dropped connection.
        seed: makes the jitter reproducible.
    """

    def __init__(
        self,
        transport: Transport,
        bootstrap: list[str],
        *,
        min_backoff: float = 0.5,
        max_backoff: float = 10.0,
        dial_timeout: float = 10.0,
        poll_interval: float = 0.5,
        seed: int | None = None,
    ) -> None:
        if not 0 < min_backoff <= max_backoff:
            raise ValueError(f"need 0 < min_backoff <= max_backoff, got {min_backoff}, {max_backoff}")
        self._transport = transport
        self._min_backoff, self._max_backoff = min_backoff, max_backoff
        self._dial_timeout = dial_timeout
        self._poll_interval = poll_interval
        self._random = random.Random(seed)
        self._targets: list[_Target] = []
        for addr in dict.fromkeys(a.strip() for a in bootstrap if a.strip()):  # dedupe, keep order
            peer_id = peer_id_in_address(addr)
            if peer_id == transport.peer_id:
                log.debug("bootstrap address %s is ourselves; skipped", addr)
                continue
            self._targets.append(_Target(addr, peer_id))

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs until cancelled. `started()` at once: dialing never blocks start-up."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            for target in self._targets:
                nursery.start_soon(self._keep_connected, target)

    def status(self) -> list[dict[str, object]]:
        """Per address: addr, peer_id (None until known), connected, last_error."""
        connected = set(self._transport.connected_peers())
        return [
            {
                "addr": t.addr,
                "peer_id": t.peer_id,
                "connected": not t.dialing and t.peer_id is not None and t.peer_id in connected,
                "last_error": t.last_error,
            }
            for t in self._targets
        ]

    async def _keep_connected(self, target: _Target) -> None:
        while True:
            if target.peer_id is not None and target.peer_id in self._transport.connected_peers():
                await trio.sleep(self._poll_interval)
                continue
            if await self._dial(target):
                await trio.sleep(self._poll_interval)  # a peer that drops at once is not hammered
                continue
            await trio.sleep(self._backoff(target.failures))

    async def _dial(self, target: _Target) -> bool:
        target.dialing = True
        try:
            peer_id = await self._transport.connect(target.addr, timeout=self._dial_timeout)
        except GossipError as e:  # DialError: refused, timed out, wrong identity, not serving
            target.failures += 1
            target.last_error = str(e)
            # A dead bootstrap peer is normal life: say so once, then keep quiet.
            level = logging.INFO if target.failures == 1 else logging.DEBUG
            log.log(level, "bootstrap %s unreachable (attempt %d): %s", target.addr, target.failures, e)
            return False
        finally:
            target.dialing = False
        if peer_id == self._transport.peer_id:  # an address without an id that leads to us
            target.failures += 1
            target.last_error = "address leads to ourselves"
            return False
        if target.failures or target.peer_id is None:
            log.info("connected to bootstrap %s", target.addr)
        target.peer_id = peer_id
        target.failures = 0
        target.last_error = None
        return True

    def _backoff(self, failures: int) -> float:
        """min_backoff * 2^(failures-1), capped, times a jitter in [0.5, 1.5) so peers spread out."""
        base = min(self._max_backoff, self._min_backoff * 2 ** min(max(failures - 1, 0), 32))
        return min(self._max_backoff, base * self._random.uniform(0.5, 1.5))
