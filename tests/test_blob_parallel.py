"""Fetching one blob from several providers at once: spreading, lying and dying providers, resume.

The plan (gossip.blobplan) is pure and tested step by step; downloads use real stores and real
exchanges over the in-memory transport, and over real libp2p hosts for a provider that dies.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

from gossip.blobplan import ChunkPlan
from gossip.blobs import PROTOCOL, BlobExchange, BlobStore
from gossip.identity import Identity
from gossip.libp2p_transport import Libp2pTransport
from gossip.memory_transport import MemoryNetwork
from gossip.transport import ByteStream, PeerId
from tests.test_blobs import SMALL_CHUNK, _seeded, memory_peers, start_peer
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


# ---- the plan ---------------------------------------------------------------------------------


def test_plan_hands_out_contiguous_batches_and_takes_back_unfinished_ones() -> None:
    plan = ChunkPlan([0, 1, 2, 3, 5, 6, 7, 8, 9], batch_chunks=3)
    assert plan.take("a", steal=False) == (0, 3)
    assert plan.take("b", steal=False) == (3, 4)  # a gap ends a batch: 4 is already here
    assert plan.take("a", steal=False) == (5, 8)
    plan.fetched("a", (0, 3))
    for i in (0, 1, 2, 5):
        plan.done(i)
    plan.release("a")  # a dies with 6 and 7 unverified: they go back, 0..2 and 5 do not
    assert plan.take("b", steal=False) == (6, 9)
    assert plan.take("b", steal=False) == (9, 10)
    assert plan.take("c", steal=False) is None and plan.wanted == 5


def test_plan_duplicates_a_batch_once_when_nothing_is_left_and_retries_bad_chunks() -> None:
    plan = ChunkPlan(range(4), batch_chunks=4)
    assert plan.take("slow", steal=True) == (0, 4)
    assert plan.take("fast", steal=False) is None  # busy providers do not duplicate
    plan.done(0)
    assert plan.take("fast", steal=True) == (1, 4)  # only what is still wanted
    assert plan.take("third", steal=True) is None  # a batch is copied once, a copy never
    assert not plan.has_work("third")
    plan.retry(2)  # a chunk failed its hash: it is wanted from anyone
    assert plan.has_work("third") and plan.take("third", steal=False) == (2, 3)
    for i in (1, 2, 3):
        plan.done(i)
    assert plan.complete and plan.take("fast", steal=True) is None


# ---- downloads --------------------------------------------------------------------------------


async def test_chunks_come_from_every_provider(tmp_path: Path) -> None:
    data = _seeded(96 * SMALL_CHUNK + 5, 30)
    async with memory_peers(tmp_path, 4) as [a, b, c, client]:
        blob_id = a.store.put_bytes(data)
        assert b.store.put_bytes(data) == c.store.put_bytes(data) == blob_id
        path = await client.exchange.fetch(blob_id, [a.peer_id, b.peer_id, c.peer_id], parallel=3)
        assert path.read_bytes() == data
        served = [p.exchange.stats.chunks_served for p in (a, b, c)]
        assert all(n > 0 for n in served), served
        assert sum(served) >= 97 and client.exchange.stats.chunks_fetched == 97
        assert client.reports == []


async def test_lying_provider_is_dropped_and_its_chunks_come_from_another(tmp_path: Path) -> None:
    data = _seeded(24 * SMALL_CHUNK, 31)
    network = MemoryNetwork(seed=31)
    async with trio.open_nursery() as nursery:
        liar = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "liar")
        honest = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "honest")
        blob_id = liar.store.put_bytes(data)
        honest.store.put_bytes(data)
        with open(liar.store.path(blob_id), "r+b") as f:  # every chunk of the liar's copy is wrong
            for i in range(24):
                f.seek(i * SMALL_CHUNK + 7)
                f.write(b"\x00\xff")

        # The honest provider only answers once the liar has been caught, so the liar is
        # certainly asked for chunks while both are in use.
        reported = trio.Event()
        reports: list[tuple[PeerId, str]] = []

        def on_misbehaviour(peer: PeerId, why: str) -> None:
            reports.append((peer, why))
            reported.set()

        async def gated(stream: ByteStream) -> None:
            await reported.wait()
            await honest.exchange.server.handle(stream)

        honest.transport.set_stream_handler(PROTOCOL, gated)
        transport = network.transport(Identity.generate())
        store = BlobStore(tmp_path / "client", chunk_size=SMALL_CHUNK)
        exchange = BlobExchange(transport, store, on_misbehaviour, timeout=10.0)
        await nursery.start(transport.serve)

        path = await exchange.fetch(blob_id, [liar.peer_id, honest.peer_id], parallel=2)
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
        assert {peer for peer, _ in reports} == {liar.peer_id}  # the honest provider never is
        assert any("does not match its hash" in why for _, why in reports)
        assert exchange.stats.bad_chunks >= 1
        assert honest.exchange.stats.chunks_served >= 24  # nothing the liar sent was kept
        nursery.cancel_scope.cancel()
    for s in (liar.store, honest.store, store):
        s.close()


async def test_fetch_from_three_libp2p_providers_survives_one_dying(tmp_path: Path) -> None:
    data = _seeded(64 * SMALL_CHUNK + 99, 32)
    async with trio.open_nursery() as nursery:
        providers = [
            await start_peer(nursery, Libp2pTransport(Identity.generate()), tmp_path / f"p{i}", timeout=10.0)
            for i in range(3)
        ]
        client = await start_peer(nursery, Libp2pTransport(Identity.generate()), tmp_path / "c", timeout=10.0)
        blob_id = providers[0].store.put_bytes(data)
        for p in providers[1:]:
            assert p.store.put_bytes(data) == blob_id
        for p in providers:
            await client.transport.connect(p.transport.listen_addrs()[0])
        doomed = providers[0]

        def kill_a_quarter_in(done: int, total: int) -> None:
            if done >= total // 4:
                doomed.scope.cancel()  # its host goes away: connections and streams die

        path = await client.exchange.fetch(
            blob_id, [p.peer_id for p in providers], progress=kill_a_quarter_in, parallel=3
        )
        assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        assert client.store.manifest(blob_id) == providers[1].store.manifest(blob_id)
        assert client.exchange.stats.chunks_fetched == 65  # each chunk written once
        assert 0 < doomed.exchange.stats.chunks_served < 65
        assert sum(p.exchange.stats.chunks_served for p in providers[1:]) > 0
        assert client.reports == []  # dying is not misbehaviour
        nursery.cancel_scope.cancel()
    for p in [*providers, client]:
        p.store.close()


async def test_parallel_download_resumes_after_restart(tmp_path: Path) -> None:
    data = _seeded(48 * SMALL_CHUNK, 33)
    network = MemoryNetwork(seed=33)
    client_id = Identity.generate()
    async with trio.open_nursery() as nursery:
        a, b, spare = [
            await start_peer(nursery, network.transport(Identity.generate()), tmp_path / name)
            for name in ("a", "b", "spare")
        ]
        blob_id = a.store.put_bytes(data)
        b.store.put_bytes(data)
        spare.store.put_bytes(data)
        client = await start_peer(nursery, network.transport(client_id), tmp_path / "client")
        with trio.CancelScope() as fetch_scope:

            def stop_halfway(done: int, total: int) -> None:
                if done >= total // 2:
                    fetch_scope.cancel()

            await client.exchange.fetch(blob_id, [a.peer_id, b.peer_id], progress=stop_halfway, parallel=2)
        assert fetch_scope.cancelled_caught
        client.scope.cancel()  # the client process "restarts"
        await wait_until(lambda: client.peer_id not in network.peers())
        client.store.close()

        restarted = await start_peer(nursery, network.transport(client_id), tmp_path / "client")
        manifest = restarted.store.partial_manifest(blob_id)
        assert manifest is not None
        with restarted.store.open_partial(manifest) as part:
            kept = manifest.chunk_count - len(part.missing())
        assert 24 <= kept < 48
        path = await restarted.exchange.fetch(blob_id, [spare.peer_id, a.peer_id], parallel=1)
        assert path.read_bytes() == data
        assert spare.exchange.stats.chunks_served == 48 - kept  # verified chunks are not fetched again
        nursery.cancel_scope.cancel()
    for peer in (a, b, spare, restarted):
        peer.store.close()
