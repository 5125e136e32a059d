"""200 GossipNodes on one in-memory network in one process: reach, loss and repair at scale."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

from gossip.envelope import Envelope
from gossip.identity import Identity
from gossip.memory_transport import MemoryNetwork
from gossip.node import GossipNode
from gossip.topics import TOPIC_TX
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

PEERS = 200
SYNC_INTERVAL = 0.2


@dataclass
class MeshPeer:
    node: GossipNode
    channel: trio.MemoryReceiveChannel[Envelope]
    received: list[bytes] = field(default_factory=list)

    def drain(self) -> set[bytes]:
        """Take what has been delivered so far (non-blocking) and return the distinct ids."""
        while True:
            try:
                self.received.append(self.channel.receive_nowait().msg_id)
            except trio.WouldBlock:
                return set(self.received)


def random_graph(count: int, rng: random.Random) -> set[tuple[int, int]]:
    """A ring (so the graph is connected) plus one or two random chords per peer: degree ~4-6."""
    edges = {(i, (i + 1) % count) for i in range(count)}
    for i in range(count):
        for _ in range(rng.choice((1, 2))):
            j = rng.randrange(count)
            if j != i and (j, i) not in edges:
                edges.add((i, j))
    return edges


@asynccontextmanager
async def mesh(net: MemoryNetwork, seed: int) -> AsyncIterator[list[MeshPeer]]:
    rng = random.Random(seed)
    async with trio.open_nursery() as nursery:
        peers = []
        for _ in range(PEERS):
            identity = Identity.generate()
            transport = net.transport(identity)
            await nursery.start(transport.serve)
            node = GossipNode(transport, identity, sync_interval=SYNC_INTERVAL)
            channel = node.subscribe(TOPIC_TX)
            await nursery.start(node.serve)
            peers.append(MeshPeer(node, channel))
        edges = random_graph(PEERS, rng)
        for a, b in edges:
            await peers[a].node.transport.connect(peers[b].node.transport.listen_addrs()[0])
        degrees = [len(p.node.transport.connected_peers()) for p in peers]
        assert 4 <= sum(degrees) / PEERS <= 6, sum(degrees) / PEERS
        yield peers
        nursery.cancel_scope.cancel()


def everyone_has(peers: list[MeshPeer], ids: set[bytes]) -> bool:
    return all(p.drain() >= ids for p in peers)


def assert_exactly_once(peers: list[MeshPeer], ids: set[bytes]) -> None:
    for peer in peers:
        peer.drain()
        assert sorted(peer.received) == sorted(ids), "every message delivered once, nothing else"


async def test_one_message_reaches_all_200_peers() -> None:
    net = MemoryNetwork(seed=1)
    async with mesh(net, seed=1) as peers:
        env = await peers[0].node.publish(TOPIC_TX, "tx", {"hello": "mesh"})
        await wait_until(lambda: everyone_has(peers, {env.msg_id}), timeout=10)
        assert_exactly_once(peers, {env.msg_id})
        assert sum(p.node.stats()["recovered_by_sync"] for p in peers) == 0  # gossip alone did it


async def test_anti_entropy_delivers_everything_despite_10_percent_loss() -> None:
    net = MemoryNetwork(seed=2)
    async with mesh(net, seed=2) as peers:
        net.drop = 0.10
        rng = random.Random(2)
        ids = set()
        for i in range(20):
            env = await rng.choice(peers).node.publish(TOPIC_TX, "tx", {"i": i})
            ids.add(env.msg_id)
        await wait_until(lambda: everyone_has(peers, ids), timeout=20)
        assert net.counters["dropped"] > 0
        assert_exactly_once(peers, ids)


async def test_peers_cut_off_while_messages_flowed_catch_up_by_anti_entropy() -> None:
    net = MemoryNetwork(seed=3)
    async with mesh(net, seed=3) as peers:
        net.drop = 0.10
        rng = random.Random(3)
        isolated = rng.sample(peers, 20)
        rest = [p for p in peers if p not in isolated]
        net.partition([p.node.peer_id for p in isolated])  # the other 180 form the second group
        ids = set()
        for i in range(10):
            env = await rng.choice(rest).node.publish(TOPIC_TX, "tx", {"i": i})
            ids.add(env.msg_id)
        await wait_until(lambda: everyone_has(rest, ids), timeout=20)
        assert all(p.drain() == set() for p in isolated)
        net.heal()
        await wait_until(lambda: everyone_has(peers, ids), timeout=20)
        assert_exactly_once(peers, ids)
        # Gossip is never replayed, so every delivery to a cut-off peer came by anti-entropy.
        assert sum(p.node.stats()["recovered_by_sync"] for p in isolated) == len(isolated) * len(ids)
