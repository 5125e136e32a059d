"""Blob size limits and hostile servers: a peer's claims never make us fetch, store or reserve more.

Hostile servers are hand-written stream handlers on the in-memory transport; the honest side is
the real BlobExchange and BlobStore.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack
import pytest
import trio

from gossip.blobs import (
    PROTOCOL,
    BlobTooLarge,
    DiskFull,
    FetchFailed,
)
from gossip.blobstore import MAX_CHUNK_SIZE
from gossip.identity import Identity
from gossip.memory_transport import MemoryNetwork, MemoryTransport
from gossip.transport import ByteStream
from tests.test_blobs import SMALL_CHUNK, Peer, _seeded, memory_peers, raw_frame, read_raw_frame, start_peer

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[ByteStream], Awaitable[None]]


def forged_manifest(size: int, chunk_size: int, digests: int) -> tuple[str, bytes]:
    """A canonical manifest with any claims, and the id it hashes to (anyone can mint one)."""
    body = msgpack.packb([1, size, chunk_size, os.urandom(32) * digests])
    return hashlib.sha256(body).hexdigest(), body


def manifest_server(manifest: bytes) -> Handler:
    """A server that answers the manifest request with these bytes and nothing else."""

    async def handle(stream: ByteStream) -> None:
        await read_raw_frame(stream)
        await stream.send_all(raw_frame(1, msgpack.packb({"ok": True, "manifest": manifest})))
        await until_closed(stream)  # a chunk request would come next: it never should

    return handle


async def until_closed(stream: ByteStream) -> None:
    while await stream.receive_some(4096):
        pass


async def hostile_peer(nursery: trio.Nursery, network: MemoryNetwork, handler: Handler) -> MemoryTransport:
    transport: MemoryTransport = network.transport(Identity.generate())
    transport.set_stream_handler(PROTOCOL, handler)
    await nursery.start(transport.serve)
    return transport


def nothing_on_disk(peer: Peer, blob_id: str) -> bool:
    partial_dir = peer.store.root / "partial"
    return not list(partial_dir.iterdir()) and peer.store.partial_manifest(blob_id) is None


async def test_blob_over_the_callers_max_size_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    data = _seeded(10 * SMALL_CHUNK, 20)
    async with memory_peers(tmp_path, 2) as [server, client]:
        blob_id = server.store.put_bytes(data)
        with pytest.raises(
            BlobTooLarge, match=f"{len(data)} bytes, over the limit of {len(data) - 1}"
        ) as info:
            await client.exchange.fetch(blob_id, [server.peer_id], max_size=len(data) - 1)
        assert (info.value.size, info.value.limit) == (len(data), len(data) - 1)
        assert server.exchange.stats.chunks_served == 0
        assert nothing_on_disk(client, blob_id)
        assert [peer for peer, _ in client.reports] == [server.peer_id]
        # The limit the caller knows is the only thing that changed: at the right size it flows.
        path = await client.exchange.fetch(blob_id, [server.peer_id], max_size=len(data))
        assert path.read_bytes() == data
        with pytest.raises(BlobTooLarge):  # a blob already here is held to the same limit
            await client.exchange.fetch(blob_id, [], max_size=len(data) - 1)


async def test_forged_terabyte_manifest_is_refused_by_the_default_limit(tmp_path: Path) -> None:
    # 1 TiB in 8 MiB chunks: a 4 MiB manifest, well-formed, hashing to the id we ask for.
    blob_id, manifest = forged_manifest(1 << 40, MAX_CHUNK_SIZE, (1 << 40) // MAX_CHUNK_SIZE)
    network = MemoryNetwork(seed=21)
    async with trio.open_nursery() as nursery:
        liar = await hostile_peer(nursery, network, manifest_server(manifest))
        client = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "c")
        with pytest.raises(BlobTooLarge, match="over the limit of 2147483648"):
            await client.exchange.fetch(blob_id, [liar.peer_id])
        assert len(client.reports) == 1 and client.reports[0][0] == liar.peer_id
        assert "offered blob" in client.reports[0][1]
        assert nothing_on_disk(client, blob_id)
        nursery.cancel_scope.cancel()
    client.store.close()


async def test_claim_larger_than_the_free_disk_reserves_nothing(tmp_path: Path) -> None:
    stat = os.statvfs(tmp_path)
    free = stat.f_bavail * stat.f_frsize
    claim = max(1 << 40, (free // MAX_CHUNK_SIZE + 1024) * MAX_CHUNK_SIZE)  # always over the free space
    blob_id, manifest = forged_manifest(claim, MAX_CHUNK_SIZE, claim // MAX_CHUNK_SIZE)
    network = MemoryNetwork(seed=22)
    async with trio.open_nursery() as nursery:
        liar = await hostile_peer(nursery, network, manifest_server(manifest))
        client = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "c")
        client.exchange.max_blob_size = 4 * claim  # an operator who accepts huge blobs
        with pytest.raises(DiskFull, match=f"needs {claim} bytes"):
            await client.exchange.fetch(blob_id, [liar.peer_id])
        assert nothing_on_disk(client, blob_id)
        assert client.reports == []  # the blob may be real: our disk is what is short
        nursery.cancel_scope.cancel()
    client.store.close()


async def test_manifest_whose_chunk_list_does_not_match_its_size_is_refused(tmp_path: Path) -> None:
    # Claims 10 chunks' worth of bytes but lists one digest.
    blob_id, manifest = forged_manifest(10 * SMALL_CHUNK, SMALL_CHUNK, 1)
    network = MemoryNetwork(seed=23)
    async with trio.open_nursery() as nursery:
        liar = await hostile_peer(nursery, network, manifest_server(manifest))
        client = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "c")
        with pytest.raises(FetchFailed, match="needs 10 digests"):
            await client.exchange.fetch(blob_id, [liar.peer_id])
        assert len(client.reports) == 1 and "bad manifest" in client.reports[0][1]
        assert nothing_on_disk(client, blob_id)
        nursery.cancel_scope.cancel()
    client.store.close()


@pytest.mark.parametrize("lie", ["longer chunk", "bytes after the last chunk"])
async def test_server_sending_more_than_asked_is_reported(tmp_path: Path, lie: str) -> None:
    data = _seeded(3 * SMALL_CHUNK, 24)
    network = MemoryNetwork(seed=24)
    async with trio.open_nursery() as nursery:
        honest = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "h")
        blob_id = honest.store.put_bytes(data)
        manifest = honest.store.manifest(blob_id).encode()
        sent_extra = trio.Event()

        async def liar_handler(stream: ByteStream) -> None:
            await read_raw_frame(stream)
            await stream.send_all(raw_frame(1, msgpack.packb({"ok": True, "manifest": manifest})))
            await read_raw_frame(stream)  # chunks 0..3
            if lie == "longer chunk":  # announces one byte more than chunk 0 has
                await stream.send_all(raw_frame(2, data[: SMALL_CHUNK + 1]))
            else:  # every chunk right, then a frame nobody asked for
                for i in range(3):
                    await stream.send_all(raw_frame(2, data[i * SMALL_CHUNK : (i + 1) * SMALL_CHUNK]))
                await stream.send_all(raw_frame(2, b"unasked"))
            sent_extra.set()
            await until_closed(stream)

        liar = await hostile_peer(nursery, network, liar_handler)
        client = await start_peer(nursery, network.transport(Identity.generate()), tmp_path / "c")
        path = await client.exchange.fetch(blob_id, [liar.peer_id, honest.peer_id], parallel=1)
        assert path.read_bytes() == data
        assert sent_extra.is_set()
        assert [peer for peer, _ in client.reports] == [liar.peer_id]
        why = client.reports[0][1]
        if lie == "longer chunk":
            assert f"sent {SMALL_CHUNK + 1} bytes for chunk 0, expected {SMALL_CHUNK}" in why
            assert honest.exchange.stats.chunks_served == 3
        else:
            assert "after the last chunk asked for" in why
            assert honest.exchange.stats.chunks_served == 0  # the liar's chunks were right: kept
        nursery.cancel_scope.cancel()
    honest.store.close()
    client.store.close()
