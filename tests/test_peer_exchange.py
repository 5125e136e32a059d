"""Peer exchange over the in-memory transport: a bootstrap star grows into a mesh; liars pay."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from gossip.dialer import Dialer
from gossip.errors import InvalidMessage
from gossip.identity import Identity
from gossip.memory_transport import MemoryNetwork, MemoryTransport
from gossip.node import GossipNode
from gossip.peerexchange import MAX_SAMPLE, PEERS_PROTOCOL, AddressBook, PeerExchange, parse_addrs
from gossip.reqresp import RemoteError, RequestResponse
from gossip.topics import TOPIC_TX
from gossip.transport import PeerId
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

INTERVAL = 0.05


@dataclass
class Peer:
    transport: MemoryTransport
    node: GossipNode
    exchange: PeerExchange
    scope: trio.CancelScope  # cancelling it stops this peer alone

    @property
    def addr(self) -> str:
        return self.transport.listen_addrs()[0]

    def degree(self) -> int:
        return len(self.transport.connected_peers())


async def run_peer(
    net: MemoryNetwork, bootstrap: list[str], target: int, *, task_status: trio.TaskStatus[Peer]
) -> None:
    identity = Identity.generate()
    transport = net.transport(identity)
    node = GossipNode(transport, identity, sync_interval=0.5)
    node.subscribe(TOPIC_TX)
    exchange = PeerExchange(node, target_degree=target, interval=INTERVAL, dial_timeout=1.0)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.serve)
            await nursery.start(node.serve)
            await nursery.start(Dialer(transport, bootstrap, min_backoff=0.05, max_backoff=0.2).serve)
            await nursery.start(exchange.serve)
            task_status.started(Peer(transport, node, exchange, scope))


async def start_peer(nursery: trio.Nursery, net: MemoryNetwork, bootstrap: list[str], target: int) -> Peer:
    peer: Peer = await nursery.start(run_peer, net, bootstrap, target)
    return peer


@asynccontextmanager
async def star(net: MemoryNetwork, count: int, target: int = 6) -> AsyncIterator[list[Peer]]:
    """count peers; every one but the first is told only the first's address."""
    async with trio.open_nursery() as nursery:
        hub = await start_peer(nursery, net, [], target)
        peers = [hub] + [await start_peer(nursery, net, [hub.addr], target) for _ in range(count - 1)]
        yield peers
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def liar(net: MemoryNetwork, answer: list[Any]) -> AsyncIterator[MemoryTransport]:
    """A bare transport that answers every PEERS_PROTOCOL request with answer[0]."""

    async def reply(peer: PeerId, body: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return answer[0]

    async with trio.open_nursery() as nursery:
        transport = net.transport(Identity.generate())
        RequestResponse(transport).set_handler(PEERS_PROTOCOL, reply)
        await nursery.start(transport.serve)
        yield transport
        nursery.cancel_scope.cancel()


async def test_thirty_peers_bootstrapped_from_one_reach_the_target_degree() -> None:
    net = MemoryNetwork(seed=1)
    async with star(net, 30, target=6) as peers:
        await wait_until(lambda: all(p.degree() >= 6 for p in peers), timeout=20)
        leaves = peers[1:]
        # Not a star any more: leaves are linked to each other, not only to the hub.
        hub = peers[0].node.peer_id
        assert all(len(set(p.transport.connected_peers()) - {hub}) >= 5 for p in leaves)
        for peer in peers:
            assert peer.node.peer_id not in peer.exchange.book
            assert len(peer.exchange.book) <= 29
        # The mesh carries gossip to everyone.
        env = await leaves[-1].node.publish(TOPIC_TX, "tx", {"n": 1})
        await wait_until(lambda: all(env.msg_id in p.node.seen for p in peers), timeout=10)


async def test_the_mesh_survives_its_bootstrap_peer_at_the_default_target() -> None:
    net = MemoryNetwork(seed=6)
    target = PeerExchange.__init__.__kwdefaults__["target_degree"]
    async with star(net, 20, target=target) as peers:
        await wait_until(lambda: all(p.degree() >= target for p in peers), timeout=20)
        hub, rest = peers[0], peers[1:]
        hub.scope.cancel()
        await wait_until(lambda: all(hub.node.peer_id not in p.transport.connected_peers() for p in rest))
        # Peers left below the target find new neighbours from their books; nobody is cut off.
        await wait_until(lambda: all(p.degree() >= target for p in rest), timeout=20)
        env = await rest[0].node.publish(TOPIC_TX, "tx", {"after": "hub"})
        await wait_until(lambda: all(env.msg_id in p.node.seen for p in rest), timeout=10)
        assert all(p.node.stats()["recovered_by_sync"] == 0 for p in rest)  # gossip alone did it


async def test_with_fewer_peers_than_the_target_everyone_links_to_everyone() -> None:
    async with star(MemoryNetwork(seed=2), 4) as peers:
        await wait_until(lambda: all(p.degree() == 3 for p in peers), timeout=10)
        await wait_until(
            lambda: all(
                p.exchange.book.is_verified(q.node.peer_id) for p in peers for q in peers if q is not p
            ),
            timeout=10,
        )


async def test_a_well_connected_peer_does_not_ask() -> None:
    async with star(MemoryNetwork(seed=3), 3, target=1) as peers:
        await wait_until(lambda: all(p.degree() >= 1 for p in peers))
        assert await peers[1].exchange.exchange_once() == 0
        assert peers[0].degree() == 2 and peers[1].degree() == 1  # nobody went looking for more


async def test_malformed_answers_are_penalised_and_ignored() -> None:
    net = MemoryNetwork(seed=4)
    stranger = f"/memory/{Identity.generate().peer_id}"
    other = f"/memory/{Identity.generate().peer_id}"
    bad_answers: list[Any] = [
        "not a map",
        {"self": [], "peers": [], "extra": 1},
        {"self": [stranger], "peers": []},  # claims to be someone else
        {"self": [], "peers": [[stranger, other]]},  # one entry, two peer ids
        {"self": [], "peers": [["/ip4/1.2.3.4/tcp/1"]]},  # names no peer id
        {"self": [], "peers": [[stranger]] * (MAX_SAMPLE + 1)},
        {"self": [], "peers": [[7]]},
        {"self": [], "peers": [[]]},
    ]
    answer: list[Any] = [bad_answers[0]]
    async with trio.open_nursery() as nursery, liar(net, answer) as liar_transport:
        liar_id = liar_transport.peer_id
        victim = await start_peer(nursery, net, [], target=6)
        victim.node.scores.ban_threshold = -1e9  # keep talking to the liar throughout
        await victim.transport.connect(liar_transport.listen_addrs()[0])
        for bad in bad_answers:
            answer[0] = bad
            floor = victim.node.scores.score(liar_id) - 15  # past any answer already in flight
            await wait_until(lambda: victim.node.scores.score(liar_id) < floor)  # noqa: B023
            assert "malformed peer-exchange answer" in victim.node.scores.last_reason(liar_id)
        assert stranger.removeprefix("/memory/") not in victim.exchange.book  # nothing of it was kept
        assert victim.transport.connected_peers() == [liar_id]
        # A well-formed answer from the same peer is used again.
        answer[0] = {"self": [liar_transport.listen_addrs()[0]], "peers": []}
        await wait_until(lambda: victim.exchange.book.is_verified(liar_id))
        nursery.cancel_scope.cancel()


async def test_malformed_requests_are_refused_and_penalised() -> None:
    net = MemoryNetwork(seed=5)
    async with trio.open_nursery() as nursery:
        server = await start_peer(nursery, net, [], target=1)
        prober = net.transport(Identity.generate())
        await nursery.start(prober.serve)
        rpc = RequestResponse(prober)
        me = prober.listen_addrs()[0]
        reply = await rpc.request(server.node.peer_id, PEERS_PROTOCOL, {"self": [me]})
        assert reply == {"self": [server.addr], "peers": []}
        assert server.exchange.book.addrs(prober.peer_id) == (me,)
        bad_requests: list[Any] = [[1], {"self": [server.addr]}, {"self": "x"}, {"self": [me], "more": 1}]
        for body in bad_requests:
            with pytest.raises(RemoteError, match="peer-exchange request"):
                await rpc.request(server.node.peer_id, PEERS_PROTOCOL, body)
        assert server.node.scores.score(prober.peer_id) == pytest.approx(-10 * len(bad_requests), abs=0.1)
        nursery.cancel_scope.cancel()


def test_address_book_is_bounded_prefers_first_hand_and_forgets_dead_addresses() -> None:
    me = Identity.generate().peer_id
    book = AddressBook(me, max_peers=8)
    ids = [Identity.generate().peer_id for _ in range(20)]
    book.learn(me, [f"/memory/{me}"], first_hand=True)
    assert me not in book and len(book) == 0  # never ourselves
    book.learn(ids[0], [f"/memory/{ids[0]}"], first_hand=True)
    book.learn(ids[0], ["/memory/elsewhere"], first_hand=False)  # hearsay never overrides the peer itself
    assert book.addrs(ids[0]) == (f"/memory/{ids[0]}",) and book.is_verified(ids[0])
    for peer in ids[1:]:
        book.learn(peer, [f"/memory/{peer}"], first_hand=False)
    assert len(book) == 8 and ids[0] in book  # unverified entries were evicted first
    rng = random.Random(0)
    assert book.sample(MAX_SAMPLE, rng, exclude=set()) == [[f"/memory/{ids[0]}"]]  # only verified ones
    assert book.sample(MAX_SAMPLE, rng, exclude={ids[0]}) == []
    victim = ids[-1]
    assert victim in book.candidates(0.0, skip=lambda p: False)
    book.failed(victim, now=0.0)
    assert victim not in book.candidates(1.0, skip=lambda p: False)  # backing off
    book.failed(victim, now=100.0)
    book.failed(victim, now=200.0)
    assert victim not in book  # forgotten after repeated failures
    with pytest.raises(InvalidMessage):
        parse_addrs([f"/memory/{ids[1]}"], ids[2], "self")
