"""Blob store and blob exchange: real stores on disk, real transports (in-memory and libp2p)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest
import trio

from gossip.blobs import PROTOCOL, BlobError, BlobExchange, BlobNotFound, BlobStore, FetchFailed, Manifest
from gossip.identity import Identity
from gossip.libp2p_stream import Libp2pStream
from gossip.libp2p_transport import Libp2pTransport
from gossip.memory_transport import MemoryNetwork, MemoryTransport
from gossip.transport import ByteStream, PeerId, Transport
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

SMALL_CHUNK = 64 * 1024  # many chunks, little data: failover and resume need a transfer to cut


def _seeded(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes."""
    out = bytearray()
    block = hashlib.sha256(b"seed%d" % seed).digest()
    while len(out) < size:
        block = hashlib.sha512(block).digest()
        out += block
    return bytes(out[:size])


@dataclass
class Peer:
    transport: Transport
    store: BlobStore
    exchange: BlobExchange
    scope: trio.CancelScope  # cancel to make the peer vanish from the network
    reports: list[tuple[PeerId, str]] = field(default_factory=list)

    @property
    def peer_id(self) -> PeerId:
        return self.transport.peer_id


async def start_peer(
    nursery: trio.Nursery,
    transport: Transport,
    root: Path,
    *,
    chunk_size: int = SMALL_CHUNK,
    timeout: float = 5.0,
    max_uploads: int = 16,
) -> Peer:
    reports: list[tuple[PeerId, str]] = []
    store = BlobStore(root, chunk_size=chunk_size)
    report = lambda p, why: reports.append((p, why))  # noqa: E731
    exchange = BlobExchange(transport, store, report, timeout=timeout, max_uploads=max_uploads)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await transport.serve(task_status=task_status)

    await nursery.start(run)
    return Peer(transport, store, exchange, scope, reports)


@asynccontextmanager
async def memory_peers(tmp_path: Path, count: int) -> AsyncIterator[list[Peer]]:
    """count peers on one in-memory network, each with its own store under tmp_path."""
    network = MemoryNetwork(seed=7)
    async with trio.open_nursery() as nursery:
        peers = [
            await start_peer(nursery, network.transport(Identity.generate()), tmp_path / f"p{i}")
            for i in range(count)
        ]
        yield peers
        nursery.cancel_scope.cancel()
    for peer in peers:
        peer.store.close()


# ---- store ------------------------------------------------------------------------------------


def test_put_read_has_round_trip(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "s", chunk_size=1000)
    data = _seeded(3500, 1)
    blob_id = store.put_bytes(data)
    assert store.has(blob_id)
    assert store.read(blob_id) == data
    assert store.path(blob_id).read_bytes() == data
    manifest = store.manifest(blob_id)
    assert (manifest.size, manifest.chunk_size, manifest.chunk_count) == (3500, 1000, 4)
    assert manifest.chunks[3] == hashlib.sha256(data[3000:]).digest()
    assert manifest.blob_id == blob_id == hashlib.sha256(manifest.encode()).hexdigest()

    src = tmp_path / "file.bin"
    src.write_bytes(data)
    assert store.put_file(src) == blob_id  # same content, same id; idempotent
    assert store.put_bytes(data + b"x") != blob_id
    empty = store.put_bytes(b"")
    assert store.read(empty) == b"" and store.manifest(empty).chunk_count == 0
    assert list((tmp_path / "s" / "tmp").iterdir()) == []  # no temp files left behind
    store.close()

    reopened = BlobStore(tmp_path / "s", chunk_size=1000)  # the index survives a restart
    assert reopened.has(blob_id) and reopened.read(blob_id) == data
    other = hashlib.sha256(b"nothing").hexdigest()
    assert not reopened.has(other)
    with pytest.raises(BlobNotFound):
        reopened.read(other)
    with pytest.raises(BlobError, match="invalid blob id"):
        reopened.has("../../etc/passwd")
    reopened.close()


def test_store_refuses_a_blob_whose_file_vanished(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    blob_id = store.put_bytes(b"hello")
    store.path(blob_id).unlink()
    assert not store.has(blob_id)
    with pytest.raises(BlobNotFound):
        store.manifest(blob_id)
    store.close()


def test_manifest_verification() -> None:
    data = _seeded(5000, 2)
    digests = tuple(hashlib.sha256(data[i : i + 2048]).digest() for i in range(0, 5000, 2048))
    manifest = Manifest(5000, 2048, digests)
    encoded = manifest.encode()
    assert Manifest.decode(encoded, manifest.blob_id) == manifest

    with pytest.raises(BlobError, match="does not hash to"):
        Manifest.decode(encoded, hashlib.sha256(b"other").hexdigest())
    tampered = Manifest(5000, 2048, (digests[0], digests[2], digests[1])).encode()
    with pytest.raises(BlobError, match="does not hash to"):
        Manifest.decode(tampered, manifest.blob_id)

    # Self-consistent ids cannot smuggle in broken manifests either.
    def self_signed(raw: object) -> bytes:
        return msgpack.packb(raw, use_bin_type=True)

    for bad, why in [
        (self_signed([1, 5000, 2048, b"".join(digests[:2])]), "needs 3 digests"),
        (self_signed([2, 5000, 2048, b"".join(digests)]), "version"),
        (self_signed([1, 5000, 0, b""]), "chunk size"),
        (self_signed([1, -1, 2048, b""]), "size"),
        (self_signed({"size": 5000}), "malformed"),
        (b"\xc1garbage", "malformed"),
    ]:
        with pytest.raises(BlobError, match=why):
            Manifest.decode(bad, hashlib.sha256(bad).hexdigest())
    # Same values, longer integer encoding: a second id for the same blob is refused.
    non_canonical = b"\x94\x01\xce\x00\x00\x13\x88\xcd\x08\x00" + self_signed(b"".join(digests))
    with pytest.raises(BlobError, match="canonical"):
        Manifest.decode(non_canonical, hashlib.sha256(non_canonical).hexdigest())


# ---- exchange over the in-memory transport ----------------------------------------------------


async def test_fetch_between_two_peers(tmp_path: Path) -> None:
    data = _seeded(10 * SMALL_CHUNK + 123, 3)
    async with memory_peers(tmp_path, 2) as [server, client]:
        blob_id = server.store.put_bytes(data)
        seen: list[tuple[int, int]] = []
        path = await client.exchange.fetch(
            blob_id, [server.peer_id], progress=lambda d, t: seen.append((d, t))
        )
        assert path.read_bytes() == data
        assert client.store.has(blob_id)
        assert client.store.manifest(blob_id) == server.store.manifest(blob_id)
        assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert client.exchange.stats.chunks_fetched == server.exchange.stats.chunks_served == 11
        assert not list((tmp_path / "p1" / "partial").iterdir())  # renamed into place
        # Already here: no network at all.
        assert await client.exchange.fetch(blob_id, []) == path
        assert server.reports == client.reports == []


async def test_concurrent_fetches_of_one_blob_download_it_once(tmp_path: Path) -> None:
    data = _seeded(8 * SMALL_CHUNK, 4)
    async with memory_peers(tmp_path, 2) as [server, client]:
        blob_id = server.store.put_bytes(data)
        paths: list[Path] = []

        async def fetch() -> None:
            paths.append(await client.exchange.fetch(blob_id, [server.peer_id]))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(fetch)
        assert len(set(paths)) == 1 and paths[0].read_bytes() == data
        assert server.exchange.stats.chunks_served == 8


async def test_failover_when_server_disappears_mid_transfer(tmp_path: Path) -> None:
    data = _seeded(40 * SMALL_CHUNK, 5)
    async with memory_peers(tmp_path, 3) as [first, second, client]:
        blob_id = first.store.put_bytes(data)
        assert second.store.put_bytes(data) == blob_id

        def vanish_halfway(done: int, total: int) -> None:
            if done >= 8 * SMALL_CHUNK:
                first.scope.cancel()  # its transport stops: connections and streams reset

        path = await client.exchange.fetch(
            blob_id, [first.peer_id, second.peer_id], progress=vanish_halfway, parallel=1
        )
        assert path.read_bytes() == data
        from_first = 40 - second.exchange.stats.chunks_served
        assert 8 <= from_first < 40  # the second peer only sent what was missing...
        assert client.exchange.stats.chunks_fetched == 40  # ...and no chunk was fetched twice
        assert first.exchange.stats.chunks_served >= from_first
        assert client.reports == []  # vanishing is not misbehaviour


async def test_resume_after_restart_fetches_only_missing_chunks(tmp_path: Path) -> None:
    data = _seeded(40 * SMALL_CHUNK, 6)
    network = MemoryNetwork(seed=1)
    client_id = Identity.generate()
    async with trio.open_nursery() as nursery:
        first = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "first")
        second = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "second")
        blob_id = first.store.put_bytes(data)
        second.store.put_bytes(data)

        client = await start_peer(nursery, network.transport(client_id), tmp_path / "client")
        with trio.CancelScope() as fetch_scope:

            def stop_halfway(done: int, total: int) -> None:
                if done >= 8 * SMALL_CHUNK:
                    fetch_scope.cancel()

            await client.exchange.fetch(blob_id, [first.peer_id], progress=stop_halfway)
        assert fetch_scope.cancelled_caught
        client.scope.cancel()  # the client process "restarts": new store, exchange and transport
        await wait_until(lambda: client.peer_id not in network.peers())
        client.store.close()

        restarted = await start_peer(nursery, network.transport(client_id), tmp_path / "client")
        assert not restarted.store.has(blob_id)
        manifest = restarted.store.partial_manifest(blob_id)
        assert manifest is not None
        with restarted.store.open_partial(manifest) as part:
            kept = manifest.chunk_count - len(part.missing())
        assert 8 <= kept < 40
        seen: list[int] = []
        path = await restarted.exchange.fetch(blob_id, [second.peer_id], progress=lambda d, t: seen.append(d))
        assert path.read_bytes() == data
        assert second.exchange.stats.chunks_served == 40 - kept  # verified chunks are not fetched again
        assert seen[0] == kept * SMALL_CHUNK
        nursery.cancel_scope.cancel()
    for peer in (first, second, restarted):
        peer.store.close()


async def test_download_cut_after_its_last_chunk_completes_without_peers(tmp_path: Path) -> None:
    data = _seeded(5 * SMALL_CHUNK, 12)
    async with memory_peers(tmp_path, 2) as [server, client]:
        blob_id = server.store.put_bytes(data)
        with trio.CancelScope() as scope:

            def stop_at_the_end(done: int, total: int) -> None:
                if done == total:
                    scope.cancel()  # before the rename into place

            await client.exchange.fetch(blob_id, [server.peer_id], progress=stop_at_the_end)
        assert scope.cancelled_caught and not client.store.has(blob_id)
        path = await client.exchange.fetch(blob_id, [])
        assert path.read_bytes() == data
        assert server.exchange.stats.chunks_served == 5


async def test_lost_partial_file_restarts_the_download_from_scratch(tmp_path: Path) -> None:
    data = _seeded(20 * SMALL_CHUNK, 13)
    async with memory_peers(tmp_path, 2) as [server, client]:
        blob_id = server.store.put_bytes(data)
        with trio.CancelScope() as scope:

            def stop_early(done: int, total: int) -> None:
                if done >= 4 * SMALL_CHUNK:
                    scope.cancel()

            await client.exchange.fetch(blob_id, [server.peer_id], progress=stop_early)
        served_before = server.exchange.stats.chunks_served
        (tmp_path / "p1" / "partial" / blob_id).unlink()  # the index now names chunks that are gone
        path = await client.exchange.fetch(blob_id, [server.peer_id])
        assert path.read_bytes() == data
        assert server.exchange.stats.chunks_served - served_before == 20


def test_store_clears_puts_cut_short(tmp_path: Path) -> None:
    BlobStore(tmp_path).close()
    (tmp_path / "tmp" / "half-written").write_bytes(b"x" * 100)  # a put killed before its rename
    store = BlobStore(tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == []
    store.close()


async def test_corrupt_server_is_reported_and_honest_peer_completes(tmp_path: Path) -> None:
    data = _seeded(12 * SMALL_CHUNK, 7)
    async with memory_peers(tmp_path, 3) as [liar, honest, client]:
        blob_id = liar.store.put_bytes(data)
        honest.store.put_bytes(data)
        with open(liar.store.path(blob_id), "r+b") as f:  # bit rot in chunk 5 on the liar's disk
            f.seek(5 * SMALL_CHUNK + 100)
            f.write(b"\xff\x00\xff")

        # One provider at a time, liar first: it is certain to be the one asked for chunk 5.
        path = await client.exchange.fetch(blob_id, [liar.peer_id, honest.peer_id], parallel=1)
        assert path.read_bytes() == data
        assert len(client.reports) == 1
        peer, why = client.reports[0]
        assert peer == liar.peer_id and "chunk 5" in why and "hash" in why
        assert client.exchange.stats.bad_chunks == 1
        assert client.exchange.stats.chunks_fetched == 12  # each chunk written once
        # The liar's verified chunks (0..4, and any it sent after 5 before it was dropped) were kept.
        assert honest.exchange.stats.chunks_served <= 12 - 5


async def test_only_corrupt_peers_fail_with_clear_error(tmp_path: Path) -> None:
    data = _seeded(3 * SMALL_CHUNK, 8)
    async with memory_peers(tmp_path, 2) as [liar, client]:
        blob_id = liar.store.put_bytes(data)
        with open(liar.store.path(blob_id), "r+b") as f:
            f.write(b"\x00" * 10)
        with pytest.raises(FetchFailed, match=r"chunk 0 of blob \w+ does not match its hash") as info:
            await client.exchange.fetch(blob_id, [liar.peer_id])
        assert list(info.value.reasons) == [liar.peer_id]
        assert not client.store.has(blob_id)


async def test_unknown_blob_gives_clear_error(tmp_path: Path) -> None:
    async with memory_peers(tmp_path, 3) as [a, b, client]:
        missing = hashlib.sha256(b"never stored").hexdigest()
        with pytest.raises(FetchFailed) as info:
            await client.exchange.fetch(missing, [a.peer_id, b.peer_id])
        assert set(info.value.reasons) == {a.peer_id, b.peer_id}
        assert "not_found" in str(info.value) and missing in str(info.value)
        assert client.reports == a.reports == []
        with pytest.raises(FetchFailed, match="no peers to ask"):
            await client.exchange.fetch(missing, [])
        with pytest.raises(BlobError, match="invalid blob id"):
            await client.exchange.fetch("not-hex", [a.peer_id])
        # The servers are unharmed: a real blob still flows.
        blob_id = a.store.put_bytes(b"still serving")
        assert (await client.exchange.fetch(blob_id, [a.peer_id])).read_bytes() == b"still serving"


async def test_stalled_peer_is_skipped_after_the_deadline(tmp_path: Path) -> None:
    data = _seeded(4 * SMALL_CHUNK, 9)
    network = MemoryNetwork(seed=2)
    async with trio.open_nursery() as nursery:
        honest = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "h")
        blob_id = honest.store.put_bytes(data)
        manifest = honest.store.manifest(blob_id).encode()

        # A peer that answers the manifest, sends one chunk and then goes silent.
        staller: MemoryTransport = network.transport(Identity.generate())

        async def stall(stream: ByteStream) -> None:
            await read_raw_frame(stream)
            await stream.send_all(raw_frame(1, msgpack.packb({"ok": True, "manifest": manifest})))
            await read_raw_frame(stream)
            await stream.send_all(raw_frame(2, data[:SMALL_CHUNK]))
            await trio.sleep_forever()

        staller.set_stream_handler(PROTOCOL, stall)
        await nursery.start(staller.serve)
        client = await start_peer(
            nursery, network.transport(Identity.generate()), tmp_path / "c", timeout=0.5
        )

        start = trio.current_time()
        # One provider at a time: the honest peer is only asked once the staller's deadline passed.
        path = await client.exchange.fetch(blob_id, [staller.peer_id, honest.peer_id], parallel=1)
        assert path.read_bytes() == data
        assert trio.current_time() - start < 5
        assert honest.exchange.stats.chunks_served == 3  # the staller's one good chunk was kept
        assert client.reports == []
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("lie", "reported"),
    [
        ("manifest", "bad manifest"),
        ("short chunk", "sent 10 bytes for chunk 0"),
        ("garbage answer", "malformed answer"),
        ("unknown tag", "unknown tag 9"),
    ],
)
async def test_lying_peer_is_reported_and_skipped(tmp_path: Path, lie: str, reported: str) -> None:
    data = _seeded(3 * SMALL_CHUNK, 15)
    network = MemoryNetwork(seed=3)
    async with trio.open_nursery() as nursery:
        honest = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "h")
        blob_id = honest.store.put_bytes(data)
        manifest = honest.store.manifest(blob_id).encode()
        liar: MemoryTransport = network.transport(Identity.generate())

        async def lying(stream: ByteStream) -> None:
            await read_raw_frame(stream)
            if lie == "manifest":
                forged = _seeded(len(manifest), 99)  # does not hash to the id
                await stream.send_all(raw_frame(1, msgpack.packb({"ok": True, "manifest": forged})))
                return
            if lie == "garbage answer":
                await stream.send_all(raw_frame(1, b"\xc1\xc1"))
                return
            await stream.send_all(raw_frame(1, msgpack.packb({"ok": True, "manifest": manifest})))
            await read_raw_frame(stream)
            if lie == "short chunk":
                await stream.send_all(raw_frame(2, b"0123456789"))
            else:
                await stream.send_all(raw_frame(9, b"?"))

        liar.set_stream_handler(PROTOCOL, lying)
        await nursery.start(liar.serve)
        client = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "c")
        path = await client.exchange.fetch(blob_id, [liar.peer_id, honest.peer_id], parallel=1)
        assert path.read_bytes() == data
        assert len(client.reports) == 1
        peer, why = client.reports[0]
        assert peer == liar.peer_id and reported in why, why
        nursery.cancel_scope.cancel()


def raw_frame(tag: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, tag) + body


async def read_raw_frame(stream: ByteStream) -> tuple[int, bytes]:
    async def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            piece = await stream.receive_some(n - len(buf))
            assert piece, "stream ended"
            buf += piece
        return buf

    length, tag = struct.unpack(">IB", await exactly(5))
    return tag, await exactly(length - 1)


async def test_bad_requests_get_error_frames_and_the_server_keeps_serving(tmp_path: Path) -> None:
    async with memory_peers(tmp_path, 2) as [server, client]:
        blob_id = server.store.put_bytes(_seeded(3 * SMALL_CHUNK, 10))
        cases = [
            (raw_frame(1, b"\xc1\xc1 not msgpack"), "bad_request"),
            (raw_frame(1, msgpack.packb(["a", "list"])), "bad_request"),
            (raw_frame(1, msgpack.packb({"op": "delete", "id": blob_id})), "bad_request"),
            (raw_frame(1, msgpack.packb({"op": "manifest", "id": "../../x"})), "bad_request"),
            (
                raw_frame(1, msgpack.packb({"op": "chunks", "id": blob_id, "start": 2, "end": 1})),
                "bad_request",
            ),
            (
                raw_frame(1, msgpack.packb({"op": "chunks", "id": blob_id, "start": 0, "end": 99})),
                "bad_request",
            ),
            (
                raw_frame(1, msgpack.packb({"op": "chunks", "id": blob_id, "start": 0, "end": 5000})),
                "too_large",
            ),
            (raw_frame(2, b"a chunk is not a request"), "bad_request"),
            (struct.pack(">IB", 2**31, 1), "too_large"),  # claims a 2 GiB request: refused unread
        ]
        for request, code in cases:
            stream = await client.transport.open_stream(server.peer_id, PROTOCOL)
            await stream.send_all(request)
            with trio.fail_after(5):
                tag, body = await read_raw_frame(stream)
                answer = msgpack.unpackb(body)
                assert (tag, answer["ok"], answer["code"]) == (1, False, code), answer
                assert answer["msg"]
                assert await stream.receive_some(100) == b""  # and the server closed the stream
            await stream.aclose()
        assert len(server.reports) == len(cases)
        assert {peer for peer, _ in server.reports} == {client.peer_id}

        # Unknown blob is an ordinary answer, not a bad request: the stream stays open.
        stream = await client.transport.open_stream(server.peer_id, PROTOCOL)
        unknown = hashlib.sha256(b"?").hexdigest()
        await stream.send_all(raw_frame(1, msgpack.packb({"op": "manifest", "id": unknown})))
        assert msgpack.unpackb((await read_raw_frame(stream))[1])["code"] == "not_found"
        await stream.send_all(raw_frame(1, msgpack.packb({"op": "manifest", "id": blob_id})))
        tag, body = await read_raw_frame(stream)
        assert Manifest.decode(msgpack.unpackb(body)["manifest"], blob_id).chunk_count == 3
        await stream.aclose()
        assert len(server.reports) == len(cases)

        path = await client.exchange.fetch(blob_id, [server.peer_id])
        assert path.read_bytes() == server.store.read(blob_id)


# ---- exchange over real libp2p hosts ----------------------------------------------------------


async def test_fetch_over_libp2p(tmp_path: Path) -> None:
    data = _seeded(3 * 1024 * 1024 + 17, 11)
    async with trio.open_nursery() as nursery:
        server = await start_peer(
            nursery, Libp2pTransport(Identity.generate()), tmp_path / "s", chunk_size=1024 * 1024
        )
        client = await start_peer(
            nursery, Libp2pTransport(Identity.generate()), tmp_path / "c", chunk_size=1024 * 1024
        )
        blob_id = server.store.put_bytes(data)
        await client.transport.connect(server.transport.listen_addrs()[0])
        path = await client.exchange.fetch(blob_id, [server.peer_id])
        assert path.read_bytes() == data
        assert server.exchange.stats.chunks_served == 4

        missing = hashlib.sha256(b"missing").hexdigest()
        with pytest.raises(FetchFailed, match="not_found"):
            await client.exchange.fetch(missing, [server.peer_id])
        nursery.cancel_scope.cancel()
    server.store.close()
    client.store.close()


async def test_busy_server_refuses_extra_uploads(tmp_path: Path) -> None:
    data = _seeded(32 * 1024 * 1024, 14)  # more than yamux buffers for a reader that does not read
    async with trio.open_nursery() as nursery:
        server = await start_peer(
            nursery,
            Libp2pTransport(Identity.generate()),
            tmp_path / "s",
            chunk_size=1024 * 1024,
            max_uploads=1,
        )
        client = await start_peer(nursery, Libp2pTransport(Identity.generate()), tmp_path / "c")
        blob_id = server.store.put_bytes(data)
        await client.transport.connect(server.transport.listen_addrs()[0])

        # A client that asks for chunks and never reads them holds the only upload slot.
        hog = await client.transport.open_stream(server.peer_id, PROTOCOL)
        await hog.send_all(
            raw_frame(1, msgpack.packb({"op": "chunks", "id": blob_id, "start": 0, "end": 32}))
        )
        await wait_until(lambda: server.exchange.server.active_uploads == 1)
        with pytest.raises(FetchFailed, match="busy"):
            await client.exchange.fetch(blob_id, [server.peer_id])
        assert server.exchange.stats.chunks_served < 32  # the hog's upload is stuck, not finished

        assert isinstance(hog, Libp2pStream)
        await hog.reset()
        await wait_until(lambda: server.exchange.server.active_uploads == 0)
        assert (await client.exchange.fetch(blob_id, [server.peer_id])).read_bytes() == data
        assert server.reports == []
        nursery.cancel_scope.cancel()
    server.store.close()
    client.store.close()
