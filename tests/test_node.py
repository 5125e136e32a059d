"""GossipNode over the in-memory transport: delivery, rejection, scoring, anti-entropy."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from gossip import antientropy
from gossip.antientropy import ID_PREFIX, SYNC_MARGIN, SYNC_PROTOCOL
from gossip.envelope import Envelope, packb
from gossip.errors import InvalidMessage
from gossip.identity import Identity
from gossip.memory_transport import MemoryNetwork, MemoryTransport
from gossip.node import GossipNode
from gossip.reqresp import RemoteError, RequestResponse
from gossip.scoring import PeerScores
from gossip.seen import SeenStore
from gossip.topics import TOPIC_TASKS, TOPIC_TX
from gossip.transport import PeerId, Verdict
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(30)


@dataclass
class Peer:
    transport: MemoryTransport
    node: GossipNode
    channel: trio.MemoryReceiveChannel[Envelope]
    registry: CollectorRegistry

    @property
    def addr(self) -> str:
        return self.transport.listen_addrs()[0]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


async def start_peer(
    nursery: trio.Nursery, net: MemoryNetwork, sync_interval: float = 0.05, **subscribe: Any
) -> Peer:
    identity = Identity.generate()
    transport = net.transport(identity)
    await nursery.start(transport.serve)
    registry = CollectorRegistry()
    node = GossipNode(transport, identity, registry, sync_interval=sync_interval)
    channel = node.subscribe(TOPIC_TX, **subscribe)
    await nursery.start(node.serve)
    return Peer(transport, node, channel, registry)


@asynccontextmanager
async def cluster(
    net: MemoryNetwork,
    count: int,
    edges: Sequence[tuple[int, int]] | None = None,
    sync_interval: float = 0.05,
    **subscribe: Any,
) -> AsyncIterator[list[Peer]]:
    """count nodes, connected in a line unless edges are given."""
    async with trio.open_nursery() as nursery:
        peers = [await start_peer(nursery, net, sync_interval, **subscribe) for _ in range(count)]
        for a, b in edges if edges is not None else [(i, i + 1) for i in range(count - 1)]:
            await peers[a].transport.connect(peers[b].addr)
        yield peers
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def raw_peer(net: MemoryNetwork, *targets: Peer) -> AsyncIterator[MemoryTransport]:
    """A bare transport with no validator: it forwards whatever bytes it is given."""
    async with trio.open_nursery() as nursery:
        transport = net.transport(Identity.generate())
        await nursery.start(transport.serve)
        for target in targets:
            await transport.connect(target.addr)
        yield transport
        nursery.cancel_scope.cancel()


async def take(
    channel: trio.MemoryReceiveChannel[Envelope], count: int, timeout: float = 5.0
) -> list[Envelope]:
    with trio.fail_after(timeout):
        return [await channel.receive() for _ in range(count)]


def pending(channel: trio.MemoryReceiveChannel[Envelope]) -> list[Envelope]:
    out = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except trio.WouldBlock:
            return out


def consistent(stats: dict[str, int]) -> bool:
    return stats["received"] == stats["accepted"] + stats["rejected"] + stats["ignored"]


def bad_envelopes() -> dict[str, bytes]:
    author = Identity.generate()
    good = Envelope.create(author, "tx", 1, {"amount": 1})
    v2 = Envelope(kind="tx", author=author.public, seq=2, body={}, signature=b"", version=2)
    return {
        "malformed msgpack": b"\xc1\xc1\xc1",
        "not an envelope": packb({"hello": "world"}),
        "wrong signature": dataclasses.replace(good, body={"amount": 1000}).encode(),
        "unknown version": dataclasses.replace(v2, signature=author.sign(v2.signed_bytes)).encode(),
    }


async def test_publish_reaches_every_node_once_including_the_author() -> None:
    async with cluster(MemoryNetwork(), 5, edges=[(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (1, 3)]) as peers:
        first = await peers[0].node.publish(TOPIC_TX, "tx", {"n": 1})
        second = await peers[3].node.publish(TOPIC_TX, "tx", {"n": 2})
        for peer in peers:
            got = await take(peer.channel, 2)
            assert {e.msg_id for e in got} == {first.msg_id, second.msg_id}
            assert {e.author_id for e in got} == {peers[0].node.peer_id, peers[3].node.peer_id}
        assert peers[0].node.stats()["published"] == 1
        assert peers[0].metric("hivemesh_gossip_published_total", topic=TOPIC_TX) == 1
        assert peers[2].node.stats()["accepted"] == 2
        assert peers[2].metric("hivemesh_gossip_received_total", topic=TOPIC_TX, verdict="accept") == 2
        assert all(consistent(p.node.stats()) and p.node.scores.snapshot() == {} for p in peers)


async def test_invalid_envelopes_are_rejected_counted_penalised_and_never_delivered() -> None:
    net = MemoryNetwork()
    async with cluster(net, 2) as (a, b), raw_peer(net, a) as attacker:
        bad = bad_envelopes()
        for data in bad.values():
            await attacker.publish(TOPIC_TX, data)
        sentinel = await b.node.publish(TOPIC_TX, "tx", {"ok": True})
        # a's inbox is FIFO: had any bad envelope been accepted it would come before the sentinel.
        assert [e.msg_id for e in await take(a.channel, 1)] == [sentinel.msg_id]
        stats = a.node.stats()
        assert stats["rejected"] == len(bad) and stats["accepted"] == 1 and consistent(stats)
        assert a.metric("hivemesh_gossip_received_total", topic=TOPIC_TX, verdict="reject") == len(bad)
        assert a.metric("hivemesh_gossip_penalties_total") == len(bad)
        assert a.node.scores.score(attacker.peer_id) == pytest.approx(-10.0 * len(bad), abs=0.1)
        assert "unknown version" in bad and "not supported" in a.node.scores.last_reason(attacker.peer_id)
        assert b.node.stats()["received"] == 0  # nothing bad was forwarded on to b
        assert not a.node.scores.is_banned(attacker.peer_id)
        await wait_until(lambda: a.node.stats()["sync_rounds"] >= 3)
        assert pending(a.channel) == [] and pending(b.channel) == [sentinel]


async def test_repeat_offender_is_banned_disconnected_and_ignored() -> None:
    net = MemoryNetwork()
    async with cluster(net, 1) as (a,), raw_peer(net, a) as attacker:
        for i in range(12):  # 10 penalties of 10 reach -100 only without decay; a few more to be sure
            await attacker.publish(TOPIC_TX, b"\xc1garbage %d" % i)
        await wait_until(lambda: a.node.scores.is_banned(attacker.peer_id))
        await wait_until(lambda: attacker.peer_id not in a.transport.connected_peers())
        assert a.metric("hivemesh_gossip_bans_total") == 1
        await attacker.connect(a.addr)  # it comes back with a valid envelope: ignored, not delivered
        valid = Envelope.create(Identity.generate(), "tx", 1, {"n": 1})
        ignored_before = a.node.stats()["ignored"]
        await attacker.publish(TOPIC_TX, valid.encode())
        await wait_until(lambda: a.node.stats()["ignored"] == ignored_before + 1)
        await wait_until(lambda: attacker.peer_id not in a.transport.connected_peers())
        assert pending(a.channel) == []


async def test_topic_validator_rejection_is_penalised_and_not_forwarded() -> None:
    def no_negative(envelope: Envelope) -> Verdict:
        return Verdict.REJECT if envelope.body.get("amount", 0) < 0 else Verdict.ACCEPT

    net = MemoryNetwork()
    async with cluster(net, 2, validate=no_negative) as (a, c), cluster(net, 1) as (liar,):
        await liar.transport.connect(a.addr)
        with pytest.raises(InvalidMessage, match="validator"):
            await a.node.publish(TOPIC_TX, "tx", {"amount": -1})  # we never sign what we would reject
        await liar.node.publish(TOPIC_TX, "tx", {"amount": -5})
        await wait_until(lambda: a.node.stats()["rejected"] >= 1)
        assert a.node.scores.score(liar.node.peer_id) < 0
        assert "validator rejected" in a.node.scores.last_reason(liar.node.peer_id)
        good = await liar.node.publish(TOPIC_TX, "tx", {"amount": 5})
        assert [e.msg_id for e in await take(c.channel, 1)] == [good.msg_id]
        assert pending(a.channel) == [good] and pending(c.channel) == []


async def test_a_crashing_topic_validator_counts_as_reject() -> None:
    def fragile(envelope: Envelope) -> Verdict:
        return Verdict.ACCEPT if envelope.body["must"] else Verdict.IGNORE

    net = MemoryNetwork()
    async with cluster(net, 1, validate=fragile) as (a,), cluster(net, 1) as (b,):
        await b.transport.connect(a.addr)
        await b.node.publish(TOPIC_TX, "tx", {"other": 1})  # KeyError inside a's validator
        good = await b.node.publish(TOPIC_TX, "tx", {"must": 1})
        assert [e.msg_id for e in await take(a.channel, 1)] == [good.msg_id]
        assert a.node.stats()["rejected"] >= 1


async def test_exactly_once_delivery_with_duplicating_network() -> None:
    net = MemoryNetwork(seed=11)
    net.duplicate = 0.5
    # Loss and reordering too, so that sync recoveries race late gossip copies.
    net.drop, net.delay = 0.2, (0.0, 0.05)
    edges = [(i, (i + 1) % 6) for i in range(6)] + [(0, 3), (1, 4), (2, 5)]
    async with cluster(net, 6, edges=edges) as peers:
        published = [await peers[i % 6].node.publish(TOPIC_TX, "tx", {"i": i}) for i in range(12)]
        ids = {e.msg_id for e in published}
        for peer in peers:
            assert {e.msg_id for e in await take(peer.channel, len(ids))} == ids
        # Let gossip settle and anti-entropy run a few rounds everywhere, then look for extras.
        goal = {p.node.peer_id: p.node.stats()["sync_rounds"] + 3 for p in peers}
        await wait_until(lambda: all(p.node.stats()["sync_rounds"] >= goal[p.node.peer_id] for p in peers))
        assert net.counters["duplicated"] > 0
        assert all(pending(p.channel) == [] and consistent(p.node.stats()) for p in peers)


async def test_anti_entropy_recovers_what_gossip_lost() -> None:
    net = MemoryNetwork()
    net.drop = 1.0  # gossip carries nothing; streams still work
    async with cluster(net, 3) as peers:
        env = await peers[0].node.publish(TOPIC_TX, "tx", {"n": 1})
        for peer in peers:
            assert [e.msg_id for e in await take(peer.channel, 1)] == [env.msg_id]
        for peer in peers[1:]:
            assert peer.node.stats()["recovered_by_sync"] == 1
            assert peer.metric("hivemesh_gossip_recovered_by_sync_total", topic=TOPIC_TX) == 1
        assert peers[2].node.seen.recent(TOPIC_TX, trio.current_time())[0].wire == env.encode()


async def test_recovery_after_a_partition_heals() -> None:
    net = MemoryNetwork()
    async with cluster(net, 4) as peers:
        left, right = [p.node.peer_id for p in peers[:2]], [p.node.peer_id for p in peers[2:]]
        net.partition(left, right)
        env = await peers[0].node.publish(TOPIC_TX, "tx", {"n": 1})
        await take(peers[1].channel, 1)
        await wait_until(
            lambda: peers[1].node.stats()["sync_failures"] + peers[2].node.stats()["sync_failures"]
        )
        assert pending(peers[2].channel) == [] and pending(peers[3].channel) == []
        net.heal()
        for peer in peers[2:]:
            assert [e.msg_id for e in await take(peer.channel, 1)] == [env.msg_id]


async def test_a_peer_serving_forged_envelopes_by_sync_is_penalised() -> None:
    net = MemoryNetwork()
    forged = bad_envelopes()["wrong signature"]
    answers = [{"e": [[TOPIC_TX, forged]]}, {"e": "not a list"}, {"e": [[TOPIC_TASKS, forged]]}]

    served: list[PeerId] = []

    async def lying_sync(peer: PeerId, body: Any) -> Any:
        await trio.lowlevel.checkpoint()
        served.append(peer)
        return answers[min(len(served), len(answers)) - 1]

    async with cluster(net, 1) as (a,), raw_peer(net, a) as liar:
        RequestResponse(liar).set_handler(SYNC_PROTOCOL, lying_sync)
        await wait_until(lambda: len(served) >= 3)
        await wait_until(lambda: a.node.scores.score(liar.peer_id) <= -30)
        reasons = a.node.scores.last_reason(liar.peer_id)
        assert a.node.stats()["rejected"] >= 1 and a.node.stats()["accepted"] == 0
        assert "sync response" in reasons
        assert pending(a.channel) == []


async def test_malformed_sync_requests_are_refused_and_penalised() -> None:
    net = MemoryNetwork()
    async with cluster(net, 1) as (a,), raw_peer(net, a) as prober:
        rpc = RequestResponse(prober)
        env = await a.node.publish(TOPIC_TX, "tx", {"n": 1})

        async def ask(span: float, ids: list[bytes]) -> Any:
            return await rpc.request(a.node.peer_id, SYNC_PROTOCOL, {"t": {TOPIC_TX: {"s": span, "i": ids}}})

        assert await ask(60, []) == {"e": [[TOPIC_TX, env.encode()]]}
        assert await ask(60, [env.msg_id[:ID_PREFIX]]) == {"e": []}
        assert await ask(SYNC_MARGIN, []) == {"e": []}  # nothing is offered inside the margin

        def entry(**change: Any) -> dict[str, Any]:
            return {"t": {TOPIC_TX: {"s": 60, "i": [], **change}}}

        bad_requests: list[Any] = [
            {"t": "nope"},
            entry(i=[b"short"]),
            entry(i=[env.msg_id]),  # full ids: only prefixes are listed
            entry(s=-1),
            entry(s=True),
            entry(s=float("inf")),
            entry(n=1),
            {"t": {TOPIC_TX: []}},
            [1, 2],
        ]
        a.node.scores.ban_threshold = -1e9  # count every penalty; banning is tested elsewhere
        for body in bad_requests:
            with pytest.raises(RemoteError, match="sync request"):
                await rpc.request(a.node.peer_id, SYNC_PROTOCOL, body)
        assert a.node.scores.score(prober.peer_id) == pytest.approx(-10 * len(bad_requests), abs=0.1)


async def test_sync_never_resends_what_the_asker_holds_even_past_the_id_limit(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setattr(antientropy, "MAX_SYNC_IDS", 10)
    net = MemoryNetwork()
    async with cluster(net, 2, sync_interval=1e6) as (a, b):  # rounds only when the test asks
        for i in range(30):
            await b.node.publish(TOPIC_TX, "tx", {"i": i})
            await trio.sleep(1)
        await take(a.channel, 30)
        offered = a.node.stats()["received"]
        assert await a.node.sync.sync_once(b.node.peer_id) == 0
        # Only 10 ids fit in a request, so it covers a shorter span instead of inviting 20 resends.
        assert a.node.stats()["received"] == offered
        net.drop = 1.0
        lost = await b.node.publish(TOPIC_TX, "tx", {"i": "lost"})
        assert await a.node.sync.sync_once(b.node.peer_id) == 1
        assert [e.msg_id for e in pending(a.channel)] == [lost.msg_id]
        assert a.node.stats()["received"] == offered + 1  # the one it lacked, nothing else


async def test_quiet_sync_rounds_list_prefixes_and_back_off(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    requests: list[tuple[float, dict[str, Any]]] = []
    answer: list[Any] = []

    async def server(peer: PeerId, body: Any) -> Any:
        await trio.lowlevel.checkpoint()
        requests.append((trio.current_time(), body["t"][TOPIC_TX]))
        return {"e": [answer.pop()] if answer else []}

    async with trio.open_nursery() as nursery:
        identity = Identity.generate()
        transport = net.transport(identity)
        await nursery.start(transport.serve)
        node = GossipNode(transport, identity, sync_interval=1.0)
        node.subscribe(TOPIC_TX)
        published = [await node.publish(TOPIC_TX, "tx", {"i": i}) for i in range(50)]
        async with raw_peer(net) as other:
            RequestResponse(other).set_handler(SYNC_PROTOCOL, server)
            await other.connect(transport.listen_addrs()[0])
            await nursery.start(node.serve)
            await wait_until(lambda: len(requests) >= 8, timeout=600)
            window = node.seen.recent_window
            assert all(body["s"] == window for _, body in requests)
            assert sorted(requests[0][1]["i"]) == sorted(e.msg_id[:ID_PREFIX] for e in published)
            gaps = [t2 - t1 for (t1, _), (t2, _) in itertools.pairwise(requests)]
            assert all(gap >= 2.0 - 0.01 for gap in gaps[-4:])  # quiet: waits grew to 4 intervals +-50%
            # A round that recovers something resets the wait to one interval (+-50%).
            answer.append([TOPIC_TX, Envelope.create(Identity.generate(), "tx", 1, {"x": 1}).encode()])
            count = len(requests)
            await wait_until(lambda: len(requests) >= count + 2, timeout=600)
            assert requests[count + 1][0] - requests[count][0] <= 1.5 + 0.01
            assert node.stats()["recovered_by_sync"] == 1
        nursery.cancel_scope.cancel()


async def test_mutated_envelopes_never_crash_the_node() -> None:
    net = MemoryNetwork()
    rng = random.Random(1234)
    author = Identity.generate()
    original = Envelope.create(author, "tx", 1, {"to": "x" * 20, "amount": 12345})
    wire = original.encode()
    async with cluster(net, 1) as (a,), raw_peer(net, a) as fuzzer:
        a.node.scores.ban_threshold = -1e9  # keep listening to the fuzzer throughout
        for _ in range(300):
            mutated = bytearray(wire)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            await fuzzer.publish(TOPIC_TX, bytes(mutated[: rng.randint(1, len(mutated))]))
        sentinel = Envelope.create(author, "tx", 2, {"ok": 1})
        await fuzzer.publish(TOPIC_TX, sentinel.encode())
        await wait_until(lambda: sentinel.msg_id in a.node.seen)
        delivered = {e.msg_id for e in pending(a.channel)}
        assert sentinel.msg_id in delivered and delivered <= {sentinel.msg_id, original.msg_id}
        assert a.node.stats()["rejected"] >= 250 and consistent(a.node.stats())


def test_peer_scores_accumulate_decay_ban_and_forgive() -> None:
    now = [0.0]
    banned: list[PeerId] = []
    scores = PeerScores(on_ban=banned.append, half_life=100.0, ban_duration=50.0, clock=lambda: now[0])
    scores.penalize("p", "garbage", weight=30)
    scores.penalize("p", "garbage", weight=30)
    assert scores.score("p") == -60 and scores.score("q") == 0 and not scores.is_banned("p")
    now[0] = 100.0  # one half-life
    assert scores.score("p") == pytest.approx(-30)
    scores.penalize("p", "forged", weight=80)
    assert scores.is_banned("p") and banned == ["p"] and scores.last_reason("p") == "forged"
    scores.penalize("p", "more", weight=80)
    assert banned == ["p"]  # on_ban fires once per ban
    assert set(scores.snapshot()) == {"p"}
    now[0] = 151.0  # the ban has been served: a fresh start
    assert not scores.is_banned("p") and scores.score("p") == 0
    with pytest.raises(ValueError):
        scores.penalize("p", "negative", weight=-1)


def test_seen_store_keeps_records_for_the_window_and_ids_longer() -> None:
    store = SeenStore(recent_window=10.0, id_window=100.0)
    store.add(TOPIC_TX, b"a" * 32, b"wire-a", now=0.0)
    store.add(TOPIC_TASKS, b"b" * 32, b"wire-b", now=5.0)
    store.add(TOPIC_TX, b"c" * 32, b"wire-c", now=8.0)
    assert store.recent_ids(TOPIC_TX, now=9.0, limit=10) == [b"a" * 32, b"c" * 32]
    assert store.recent_ids(TOPIC_TX, now=9.0, limit=1) == [b"c" * 32]  # the newest when capped
    assert [r.wire for r in store.recent(TOPIC_TX, now=12.0)] == [b"wire-c"]
    assert len(store) == 2 and b"a" * 32 in store  # record gone, id still known
    store.prune(now=150.0)
    assert len(store) == 0 and b"c" * 32 not in store
