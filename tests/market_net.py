"""An in-memory market network for tests: four peers with real ledgers and market services.

A validator that is also the solver, a submitter, a registered verifier and an outsider (no
verifier role) share one in-memory network and one chain (a single validator, so blocks come
fast). Every ledger step is a real signed tx through consensus; the market services talk over
their real request/response protocols, blob exchange and tasks topic. A test may stop a peer's
market service, or restart it on the same data dir (`Net.restart`: what a daemon restarted
after kill -9 has, its chain, blobs and journals, and nothing it kept in memory), or make a
peer's market deaf to some kinds of market message (`Peer.deaf_to`: gossip it never gets).
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

from gossip.errors import DialError
from gossip.identity import Identity
from gossip.memory_transport import MemoryNetwork, MemoryTransport
from gossip.node import GossipNode
from gossip.topics import TOPIC_TASKS
from ledger.genesis import Genesis, GenesisValidator
from ledger.node import LedgerNode
from ledger.params import Params
from ledger.store import LedgerStore
from peer.ledger_service import LedgerService
from peer.market.service import MarketService
from peer.market.solver import SolverPolicy
from peer.market.wire import validate_envelope
from tests.ledger_cluster import (
    BLOCK_SYNC_INTERVAL,
    EMPTY_BLOCK_INTERVAL,
    GOSSIP_SYNC_INTERVAL,
    TEST_TIMEOUTS,
)
from tests.waiting import wait_until

NAMES = ("solver", "submitter", "verifier", "outsider")
IDS = {n: Identity.from_seed(hashlib.sha256(f"checkpoint-service/{n}".encode()).digest()) for n in NAMES}
MLP = {"arch": "mlp", "in": 16, "hidden": [32], "out": 4}
GENESIS = Genesis(
    chain_id="hm-checkpoint-service",
    balances={i.peer_id: 10_000_000 for i in IDS.values()},
    validators=(GenesisValidator(IDS["solver"].peer_id, IDS["solver"].public, 1_000, 0),),
    params=Params(min_fee=1, registration_burn=10, min_challenge_window_blocks=2),
    genesis_time_ms=1_000,
)


@dataclass
class Peer:
    """One peer's lasting parts and its market service, which a test may stop and start again on
    the same data dir (a restart: same identity, ledger and blobs, nothing kept in memory)."""

    identity: Identity
    transport: MemoryTransport
    gossip: GossipNode
    ledger: LedgerService
    home: Path
    nursery: trio.Nursery
    market: MarketService | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event | None = None
    deaf_to: set[str] = field(default_factory=set)  # envelope kinds its market never hears (gossip lost)
    policy: SolverPolicy = field(default_factory=lambda: SolverPolicy(enabled=False))  # no bids or quotes

    async def start(self) -> None:
        await self.nursery.start(self._run_market)

    async def stop(self) -> None:
        """Cancel the market service and wait until its tasks are done and its blob store closed."""
        assert self.scope is not None and self.stopped is not None
        self.scope.cancel()
        await self.stopped.wait()
        self.market = None

    async def restart(self) -> MarketService:
        await self.stop()
        await self.start()
        assert self.market is not None
        return self.market

    async def _run_market(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        market = MarketService(
            identity=self.identity,
            transport=self.transport,
            gossip=self.gossip,
            ledger=self.ledger,
            data_dir=self.home / "data",
            policy=self.policy,
            own_addrs=self.transport.listen_addrs,
        )
        self.stopped = trio.Event()
        try:
            self.scope = trio.CancelScope()
            with self.scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(market.serve)
                    self.market = market
                    task_status.started()
        finally:
            market.close()
            self.stopped.set()

    async def deliver(self, envelope: Any) -> None:
        if self.market is not None and envelope.kind not in self.deaf_to:  # a stopped market misses it
            await self.market.deliver(envelope)


@dataclass
class Net:
    peers: dict[str, Peer]

    @property
    def markets(self) -> dict[str, MarketService]:
        return {name: peer.market for name, peer in self.peers.items() if peer.market is not None}

    def __getitem__(self, name: str) -> MarketService:
        market = self.peers[name].market
        assert market is not None, f"the market of {name} is stopped"
        return market

    async def stop(self, name: str) -> None:
        await self.peers[name].stop()

    async def restart(self, name: str) -> MarketService:
        return await self.peers[name].restart()


async def _peer(
    net: MemoryNetwork,
    identity: Identity,
    home: Path,
    others: list[str],
    policy: SolverPolicy,
    task_status: Any,
) -> None:
    store = LedgerStore(home / "ledger.sqlite")
    try:
        async with trio.open_nursery() as nursery:
            transport = net.transport(identity)
            await nursery.start(transport.serve)
            for addr in others:
                with suppress(DialError):
                    await transport.connect(addr)
            gossip = GossipNode(transport, identity, CollectorRegistry(), sync_interval=GOSSIP_SYNC_INTERVAL)
            tasks = gossip.subscribe(TOPIC_TASKS, validate_envelope)
            node = LedgerNode(
                gossip,
                identity,
                store,
                GENESIS,
                registry=CollectorRegistry(),
                timeouts=TEST_TIMEOUTS,
                empty_block_interval=EMPTY_BLOCK_INTERVAL,
                sync_interval=BLOCK_SYNC_INTERVAL,
            )
            await nursery.start(gossip.serve)
            await nursery.start(node.serve)
            ledger = LedgerService(node, store, identity, GENESIS)
            peer = Peer(identity, transport, gossip, ledger, home, nursery, policy=policy)
            await peer.start()

            async def forward() -> None:
                async for envelope in tasks:
                    await peer.deliver(envelope)

            nursery.start_soon(forward)
            task_status.started((peer, transport.listen_addrs()[0]))
    finally:
        store.close()


@asynccontextmanager
async def market_net(root: Path, policies: dict[str, SolverPolicy] | None = None) -> AsyncIterator[Net]:
    """The network; `policies` enables the solver agent of the peers it names (off by default)."""
    memory = MemoryNetwork(seed=11)
    peers: dict[str, Peer] = {}
    addrs: list[str] = []
    async with trio.open_nursery() as nursery:
        for name in NAMES:
            (root / name).mkdir()
            policy = (policies or {}).get(name, SolverPolicy(enabled=False))
            peer, addr = await nursery.start(_peer, memory, IDS[name], root / name, list(addrs), policy)
            peers[name] = peer
            addrs.append(addr)
        net = Net(peers)
        await wait_until(lambda: all(m.ledger.height >= 1 for m in net.markets.values()), timeout=45)
        await net["solver"].ledger.send("register", {"role": "solver"})
        await net["verifier"].ledger.send("register", {"role": "verifier"})
        await net["submitter"].ledger.send("register", {"role": "model_owner"})
        yield net
        nursery.cancel_scope.cancel()


async def assign(net: Net, job_id: str) -> dict[str, Any]:
    solver = net["solver"]
    await wait_until(lambda: solver.ledger.job(job_id) is not None, timeout=45)
    body = {"job_id": job_id, "price": 100, "bond": 100, "encryption_key": solver.encryption_key}
    await solver.ledger.send("job_bid", body)
    await wait_until(lambda: (solver.ledger.job(job_id) or {}).get("status") == "assigned", timeout=45)
    return solver.ledger.job(job_id) or {}


async def committed(net: Net, job_id: str, commitment: dict[str, Any]) -> dict[str, Any]:
    await net["solver"].ledger.send("job_commit", {"job_id": job_id, **commitment})
    for market in net.markets.values():
        await wait_until(
            lambda m=market: (m.ledger.job(job_id) or {}).get("status") == "committed", timeout=20
        )
    return net["verifier"].ledger.job(job_id) or {}
