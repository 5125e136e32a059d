"""In-process ledger clusters for tests: LedgerNodes over one MemoryNetwork, each with its own store.

Every peer (transport, gossip node, ledger node, SQLite store) runs in its own cancel scope,
so a test can stop one (as a crash would: its tasks cancelled, only the store left) and start
it again from the same store, or start a fresh one on an empty store. Peers are connected
in a full mesh at start. Keys are derived from names, so a run is reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from gossip.envelope import Envelope
from gossip.errors import DialError
from gossip.identity import Identity
from gossip.memory_transport import MemoryNetwork, MemoryTransport
from gossip.node import GossipNode
from gossip.topics import TOPIC_CONSENSUS
from ledger.consensus import TimeoutConfig
from ledger.genesis import Genesis, GenesisValidator
from ledger.node import LedgerNode
from ledger.params import Params
from ledger.store import LedgerStore
from ledger.tx import sign_tx

CHAIN = "hm-ledger-node-test"
STAKE = 1_000
BALANCE = 1_000_000
TEST_TIMEOUTS = TimeoutConfig(
    propose_ms=300,
    propose_delta_ms=100,
    prevote_ms=150,
    prevote_delta_ms=50,
    precommit_ms=150,
    precommit_delta_ms=50,
    rebroadcast_ms=300,
    rebroadcast_delta_ms=100,
)
EMPTY_BLOCK_INTERVAL = 0.2
GOSSIP_SYNC_INTERVAL = 0.25
BLOCK_SYNC_INTERVAL = 0.5


def key(name: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(b"ledger-node-test/" + name.encode()).digest())


def make_genesis(validators: list[Identity], accounts: list[Identity]) -> Genesis:
    return Genesis(
        chain_id=CHAIN,
        balances={a.peer_id: BALANCE for a in accounts},
        validators=tuple(GenesisValidator(v.peer_id, v.public, STAKE, 0) for v in validators),
        params=Params(min_fee=1),
        genesis_time_ms=1_000,
    )


@dataclass
class LedgerPeer:
    index: int
    identity: Identity
    path: Path
    transport: MemoryTransport
    gossip: GossipNode
    node: LedgerNode
    store: LedgerStore
    registry: CollectorRegistry
    scope: trio.CancelScope
    stopped: trio.Event

    @property
    def addr(self) -> str:
        return self.transport.listen_addrs()[0]

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@dataclass
class Spy:
    """A bare gossip node that records every consensus envelope it sees (forwarding them too)."""

    gossip: GossipNode
    envelopes: list[Envelope] = field(default_factory=list)


class LedgerCluster:
    """Validators 0..n-1 (genesis validators) and observers n.. (not in the validator set)."""

    def __init__(self, nursery: trio.Nursery, root: Path, *, validators: int = 4, observers: int = 1) -> None:
        self.nursery, self.root = nursery, root
        self.net = MemoryNetwork(seed=7)
        self.identities = [key(f"validator-{i}") for i in range(validators)]
        self.identities += [key(f"observer-{i}") for i in range(observers)]
        self.validators = validators
        self.users = [key(f"user-{i}") for i in range(4)]
        self.genesis = make_genesis(self.identities[:validators], self.users + self.identities)
        self.peers: dict[int, LedgerPeer] = {}
        self._nonces: dict[int, int] = {}

    # -- peers --------------------------------------------------------------------------------

    def path(self, index: int) -> Path:
        return self.root / f"peer-{index}.sqlite"

    async def start(
        self, index: int, *, identity: Identity | None = None, connect: tuple[str, ...] = (), **node_args: Any
    ) -> LedgerPeer:
        """Start peer `index` on its store (created if missing), connected to every running peer
        and to the addresses in `connect`."""
        ident = identity or self.identities[index]
        peer: LedgerPeer = await self.nursery.start(self._run, index, ident, connect, node_args)
        self.peers[index] = peer
        return peer

    async def start_all(self, **node_args: Any) -> list[LedgerPeer]:
        return [await self.start(i, **node_args) for i in range(len(self.identities))]

    async def gossip_peer(self, identity: Identity | None = None) -> GossipNode:
        """A serving gossip node with no ledger, connected to every running peer (for hostile or
        byzantine behaviour scripted by the test)."""
        identity = identity or Identity.generate()
        transport = self.net.transport(identity)
        await self.nursery.start(transport.serve)
        for peer in self.peers.values():
            await transport.connect(peer.addr)
        node = GossipNode(transport, identity, CollectorRegistry(), sync_interval=GOSSIP_SYNC_INTERVAL)
        await self.nursery.start(node.serve)
        return node

    async def stop(self, index: int) -> None:
        """Cancel the peer's tasks, as a crash would; its store is closed and kept."""
        peer = self.peers.pop(index)
        peer.scope.cancel()
        await peer.stopped.wait()

    def wipe(self, index: int) -> None:
        """Delete a stopped peer's store, as a fresh install would start."""
        assert index not in self.peers, "stop it first"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path(index)}{suffix}").unlink(missing_ok=True)

    async def _run(
        self,
        index: int,
        identity: Identity,
        connect: tuple[str, ...],
        node_args: dict[str, Any],
        task_status: trio.TaskStatus[LedgerPeer],
    ) -> None:
        store = LedgerStore(self.path(index))
        stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    transport = self.net.transport(identity)
                    await nursery.start(transport.serve)
                    for addr in [p.addr for p in self.peers.values()] + list(connect):
                        with suppress(DialError):
                            await transport.connect(addr)
                    registry = CollectorRegistry()
                    gossip = GossipNode(transport, identity, registry, sync_interval=GOSSIP_SYNC_INTERVAL)
                    args: dict[str, Any] = {
                        "registry": registry,
                        "timeouts": TEST_TIMEOUTS,
                        "empty_block_interval": EMPTY_BLOCK_INTERVAL,
                        "sync_interval": BLOCK_SYNC_INTERVAL,
                        **node_args,
                    }
                    node = LedgerNode(gossip, identity, store, self.genesis, **args)
                    await nursery.start(gossip.serve)
                    await nursery.start(node.serve)
                    peer = LedgerPeer(
                        index,
                        identity,
                        self.path(index),
                        transport,
                        gossip,
                        node,
                        store,
                        registry,
                        scope,
                        stopped,
                    )
                    task_status.started(peer)
        finally:
            store.close()
            stopped.set()

    async def spy(self) -> Spy:
        """A gossip-only peer connected to everyone, recording consensus envelopes."""
        identity = Identity.generate()
        transport = self.net.transport(identity)
        await self.nursery.start(transport.serve)
        for peer in self.peers.values():
            await transport.connect(peer.addr)
        spy = Spy(GossipNode(transport, identity, CollectorRegistry(), sync_interval=GOSSIP_SYNC_INTERVAL))
        channel = spy.gossip.subscribe(TOPIC_CONSENSUS)
        await self.nursery.start(spy.gossip.serve)

        async def record() -> None:
            async for envelope in channel:
                spy.envelopes.append(envelope)

        self.nursery.start_soon(record)
        return spy

    # -- queries and txs ----------------------------------------------------------------------

    def running(self) -> list[LedgerPeer]:
        return [self.peers[i] for i in sorted(self.peers)]

    def heights(self) -> list[int]:
        return [p.node.height for p in self.running()]

    def transfer(self, user: int, to: str, amount: int) -> bytes:
        """A signed transfer from users[user] with its next nonce (tracked here)."""
        nonce = self._nonces.get(user, 0)
        self._nonces[user] = nonce + 1
        stx = sign_tx(
            self.users[user], "transfer", {"to": to, "amount": amount}, nonce=nonce, fee=1, chain_id=CHAIN
        )
        return stx.encoded

    def converged(self, peers: list[LedgerPeer] | None = None, *, at_least: int = 0) -> bool:
        """True when the peers stand at one height (>= at_least) with one block hash and app hash."""
        heads = [p.node.head for p in (peers or self.running())]
        return (
            heads[0].state.height >= at_least
            and len({(h.state.height, h.block_hash, h.app_hash) for h in heads}) == 1
        )

    def same_chain(self, peers: list[LedgerPeer], up_to: int) -> bool:
        """Every peer stores the same block hash for heights 1..up_to."""
        for height in range(1, up_to + 1):
            infos = [p.node.block_info(height) for p in peers]
            if any(i is None for i in infos) or len({i["hash"] for i in infos if i}) != 1:
                return False
        return True


@asynccontextmanager
async def ledger_cluster(root: Path, **kwargs: Any) -> AsyncIterator[LedgerCluster]:
    async with trio.open_nursery() as nursery:
        yield LedgerCluster(nursery, root, **kwargs)
        nursery.cancel_scope.cancel()
