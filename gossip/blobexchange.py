"""Fetch blobs from peers into a BlobStore, and serve ours (gossip.blobserver) to them.

The wire protocol is in gossip.blobwire. The client checks the manifest against the id and
every chunk against the manifest before writing it; a peer that sends anything wrong is
reported through on_misbehaviour and the fetch moves on to the next peer. A refusal, a
reset or a stall (no progress within `timeout`) also moves on, without a report. Verified
chunks stay on disk (gossip.blobstore.PartialBlob), so the next peer, or a later call,
only sends what is still missing.

Chunks are requested in batches, the next request queued before the current batch is read;
one task reads frames off the stream while a second one hashes and writes them in a worker
thread, so the event loop only moves bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from gossip import blobwire as wire
from gossip.blobserver import BlobServer, BlobStats
from gossip.blobstore import BlobError, BlobNotFound, BlobStore, Manifest, PartialBlob, check_blob_id
from gossip.envelope import unpackb
from gossip.errors import GossipError, InvalidMessage
from gossip.transport import ByteStream, PeerId, Transport

log = logging.getLogger(__name__)

PROTOCOL = wire.PROTOCOL
DEFAULT_TIMEOUT = 10.0
BATCH_CHUNKS = 16  # chunks per request; with one request queued ahead, bounds what a server sends unasked
PIPELINE_DEPTH = 4  # chunks received but not yet verified and written
FLUSH_BYTES = 32 << 20  # record progress (and start writeback) every this many bytes...
FLUSH_SECONDS = 2.0  # ...or this often, whichever comes first

R = TypeVar("R")
Progress = Callable[[int, int], None]


class FetchFailed(BlobError):
    """No peer could provide the blob; `reasons` says why for each peer tried."""

    def __init__(self, blob_id: str, reasons: dict[PeerId, str]) -> None:
        detail = "; ".join(f"{peer}: {why}" for peer, why in reasons.items()) or "no peers to ask"
        super().__init__(f"could not fetch blob {blob_id}: {detail}")
        self.blob_id, self.reasons = blob_id, reasons


class _PeerFailed(Exception):
    """This peer cannot give us the blob now; misbehaved means it sent something wrong."""

    def __init__(self, reason: str, *, misbehaved: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.misbehaved = reason, misbehaved


@dataclass
class _Download:
    """One fetch call: outlives each peer's attempt, so what one peer sent is kept for the next."""

    blob_id: str
    progress: Progress | None
    part: PartialBlob | None = None


class BlobExchange:
    """Serves the blobs of a store to peers and fetches blobs from them into it."""

    def __init__(
        self,
        transport: Transport,
        store: BlobStore,
        on_misbehaviour: Callable[[PeerId, str], None] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        io_threads: int = 8,
        max_uploads: int = 16,
    ) -> None:
        self._transport = transport
        self._store = store
        self._on_misbehaviour = on_misbehaviour
        self._timeout = timeout
        self._io = trio.CapacityLimiter(io_threads)  # hashing and disk I/O, both roles
        self._fetch_locks: dict[str, trio.Lock] = {}
        self.stats = BlobStats()
        self.server = BlobServer(
            store,
            timeout=timeout,
            in_thread=self._in_thread,
            report=self._report,
            stats=self.stats,
            max_uploads=max_uploads,
        )
        transport.set_stream_handler(PROTOCOL, self.server.handle)

    async def fetch(self, blob_id: str, peers: list[PeerId], *, progress: Progress | None = None) -> Path:
        """Get the blob into the store (asking peers in order) and return its path.

        Args:
            blob_id: hex sha256 of the blob's manifest.
            peers: peers to ask, in order of preference; each is asked for what is still missing.
            progress: called as progress(bytes_done, bytes_total) after every verified chunk.

        Returns:
            The path of the complete blob in the store (already there: returned at once).

        Raises:
            FetchFailed (a BlobError): no peer could provide the missing chunks; what was
                verified stays on disk and a later call resumes from it.
            BlobError: invalid id, or the local disk failed.

        Cancelling a fetch also keeps what was verified, for the next call to resume from.
        """
        check_blob_id(blob_id)
        lock = self._fetch_locks.setdefault(blob_id, trio.Lock())
        try:
            async with lock:  # one download per blob; a second caller waits and finds it done
                return await self._fetch_locked(blob_id, peers, progress)
        except OSError as e:
            raise BlobError(f"local disk error while fetching blob {blob_id}: {e}") from e
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._fetch_locks.pop(blob_id, None)

    async def _fetch_locked(self, blob_id: str, peers: list[PeerId], progress: Progress | None) -> Path:
        try:
            return await self._in_thread(self._store.path, blob_id)
        except BlobNotFound:
            pass
        download = _Download(blob_id, progress)
        reasons: dict[PeerId, str] = {}
        try:
            manifest = await self._in_thread(self._store.partial_manifest, blob_id)
            if manifest is not None:  # resume a download an earlier call or process started
                download.part = await self._in_thread(self._store.open_partial, manifest)
                if download.part.complete:  # every chunk was on disk, only the rename was missing
                    return await self._in_thread(download.part.finish)
            for peer in dict.fromkeys(peers):
                try:
                    part = await self._fetch_from(peer, download)
                except _PeerFailed as e:
                    reasons[peer] = e.reason
                    if e.misbehaved:
                        self._report(peer, e.reason)
                    continue
                except BlobError:
                    raise  # our own disk or store, not the peer
                except (GossipError, *wire.STREAM_ERRORS) as e:  # refused, unreachable, reset, stalled
                    reasons[peer] = str(e) or type(e).__name__
                    continue
                log.debug("blob %s complete after %s", blob_id, peer)
                return await self._in_thread(part.finish)
            raise FetchFailed(blob_id, reasons)
        finally:
            if download.part is not None:
                with trio.CancelScope(shield=True):  # keep what was verified, even when cancelled
                    await self._in_thread(download.part.close)

    async def _fetch_from(self, peer: PeerId, download: _Download) -> PartialBlob:
        """Everything still missing, from one peer. Returns the (now complete) partial."""
        stream = await self._transport.open_stream(peer, PROTOCOL, timeout=self._timeout)
        try:
            if download.part is None:
                manifest = await self._request_manifest(stream, download.blob_id)
                download.part = await self._in_thread(self._store.open_partial, manifest)
            part, progress = download.part, download.progress
            if progress is not None:
                progress(part.done_bytes, part.manifest.size)
            try:
                await self._receive_missing(stream, part, progress)
            except BaseExceptionGroup as group:  # trio nurseries always wrap: surface the main failure
                raise _main_failure(group) from None
            return part
        finally:
            await wire.close_quietly(stream)

    async def _request_manifest(self, stream: ByteStream, blob_id: str) -> Manifest:
        await wire.send(stream, wire.control_frame({"op": "manifest", "id": blob_id}), self._timeout)
        tag, size = await self._read_header(stream)
        if tag != wire.TAG_CONTROL:
            raise _PeerFailed(f"answered a manifest request with a frame of tag {tag}", misbehaved=True)
        answer = await self._read_control(stream, size)
        if answer.get("ok") is not True:
            raise _refusal(answer, "the manifest")
        data = answer.get("manifest")
        if not isinstance(data, bytes):
            raise _PeerFailed("answered a manifest request without manifest bytes", misbehaved=True)
        try:
            return await self._in_thread(Manifest.decode, data, blob_id)
        except BlobError as e:
            raise _PeerFailed(f"sent a bad manifest: {e}", misbehaved=True) from e

    async def _receive_missing(
        self, stream: ByteStream, part: PartialBlob, progress: Progress | None
    ) -> None:
        """Request the missing chunks batch by batch; a second task verifies and writes them.

        The request for the next batch goes out before the current batch is read, so the
        server never waits a round trip between batches.
        """
        batches = _batches(part.missing(), BATCH_CHUNKS)

        async def request(i: int) -> None:
            if i < len(batches):
                start, end = batches[i]
                message = {"op": "chunks", "id": part.blob_id, "start": start, "end": end}
                await wire.send(stream, wire.control_frame(message), self._timeout)

        send, receive = trio.open_memory_channel[tuple[int, bytearray]](PIPELINE_DEPTH)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_chunks, receive, part, progress, nursery)
            async with send:
                await request(0)
                for i, (start, end) in enumerate(batches):
                    await request(i + 1)
                    for index in range(start, end):
                        await send.send((index, await self._read_chunk(stream, part.manifest, index)))

    async def _read_chunk(self, stream: ByteStream, manifest: Manifest, index: int) -> bytearray:
        tag, size = await self._read_header(stream)
        if tag == wire.TAG_CONTROL:
            raise _refusal(await self._read_control(stream, size), f"chunk {index}")
        if tag != wire.TAG_CHUNK:
            raise _PeerFailed(f"sent a frame with unknown tag {tag}", misbehaved=True)
        if size != manifest.chunk_len(index):
            why = f"sent {size} bytes for chunk {index}, expected {manifest.chunk_len(index)}"
            raise _PeerFailed(why, misbehaved=True)
        return await wire.receive_exactly(stream, size, self._timeout)

    async def _write_chunks(
        self,
        receive: trio.MemoryReceiveChannel[tuple[int, bytearray]],
        part: PartialBlob,
        progress: Progress | None,
        nursery: trio.Nursery,
    ) -> None:
        unflushed, last_flush = 0, trio.current_time()
        flushing = trio.Lock()

        async def flush() -> None:
            async with flushing:
                await self._in_thread(part.flush)

        async with receive:
            async for index, data in receive:
                if not await self._in_thread(part.write_chunk, index, data):
                    self.stats.bad_chunks += 1
                    why = f"chunk {index} of blob {part.blob_id} does not match its hash"
                    raise _PeerFailed(why, misbehaved=True)
                self.stats.chunks_fetched += 1
                self.stats.bytes_fetched += len(data)
                if progress is not None:
                    progress(part.done_bytes, part.manifest.size)
                unflushed += len(data)
                late = trio.current_time() - last_flush >= FLUSH_SECONDS
                if (unflushed >= FLUSH_BYTES or late) and not flushing.locked():
                    nursery.start_soon(flush)  # off the critical path: receiving goes on meanwhile
                    unflushed, last_flush = 0, trio.current_time()

    async def _read_header(self, stream: ByteStream) -> tuple[int, int]:
        try:
            header = await wire.read_header(stream, self._timeout)
        except InvalidMessage as e:
            raise _PeerFailed(f"sent a bad frame: {e}", misbehaved=True) from e
        assert header is not None
        return header

    async def _read_control(self, stream: ByteStream, size: int) -> dict[str, Any]:
        if size > wire.MAX_ANSWER_BYTES:
            why = f"sent a {size}-byte control frame (limit {wire.MAX_ANSWER_BYTES})"
            raise _PeerFailed(why, misbehaved=True)
        body = await wire.receive_exactly(stream, size, self._timeout)
        try:
            message = unpackb(bytes(body), max_bytes=wire.MAX_ANSWER_BYTES)
        except InvalidMessage as e:
            raise _PeerFailed(f"sent a malformed answer: {e}", misbehaved=True) from e
        if not isinstance(message, dict):
            raise _PeerFailed("sent an answer that is not a map", misbehaved=True)
        return message

    def _report(self, peer: PeerId, reason: str) -> None:
        log.info("blob peer %s misbehaved: %s", peer, reason)
        if self._on_misbehaviour is not None:
            self._on_misbehaviour(peer, reason)

    async def _in_thread(self, fn: Callable[..., R], *args: Any) -> R:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io)


def _refusal(answer: dict[str, Any], what: str) -> _PeerFailed:
    code, msg = answer.get("code"), answer.get("msg")
    if not isinstance(code, str) or not isinstance(msg, str):
        return _PeerFailed(f"sent a malformed answer for {what}", misbehaved=True)
    return _PeerFailed(f"refused {what}: {code}: {msg[:200]}")


def _main_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure that explains a transfer's end: local trouble, then a lying peer, then the rest."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        e = pending.pop(0)
        if isinstance(e, BaseExceptionGroup):
            pending[:0] = e.exceptions
        elif not isinstance(e, trio.Cancelled):
            leaves.append(e)
    if not leaves:
        return group  # only cancellation: let trio see it as it was

    def rank(e: BaseException) -> int:
        if not isinstance(e, Exception) or isinstance(e, OSError | BlobError):
            return 0
        return 1 if isinstance(e, _PeerFailed) and e.misbehaved else 2

    return min(leaves, key=rank)


def _batches(indices: list[int], limit: int) -> list[tuple[int, int]]:
    """Sorted chunk indices as [start, end) runs of at most limit chunks."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i and i - runs[-1][0] < limit:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
