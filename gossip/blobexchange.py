"""Fetch and serve content-addressed blobs over "/hivemesh/blob/1" streams.

Wire protocol. Every frame is `u32 big-endian length of the rest | u8 tag | body`: tag 1 is
a msgpack control message, tag 2 the raw bytes of one chunk. On one stream the client sends
one request at a time and reads its whole answer before the next:

    {"op": "manifest", "id": <hex>}                       -> {"ok": True, "manifest": <bytes>}
    {"op": "chunks", "id": <hex>, "start": i, "end": j}   -> chunk frames i .. j-1, in order
    any request                                           -> {"ok": False, "code": ..., "msg": ...}

An error may also stand in place of any chunk frame (the server lost its file mid-way).
Codes: "not_found" and "unavailable" (the stream stays usable), "bad_request" and
"too_large" (the server closes the stream after answering and reports the sender).

The client checks the manifest against the id and every chunk against the manifest before
writing it; a peer that sends anything wrong is reported through on_misbehaviour and the
fetch moves on to the next peer. A refusal, a reset or a stall (no progress within
`timeout`) also moves on, without a report. Verified chunks stay on disk (see
gossip.blobstore.PartialBlob), so the next peer, or a later call, only sends what is missing.
Hashing and disk I/O run in worker threads; the event loop only moves bytes.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from gossip.blobstore import (
    MAX_MANIFEST_BYTES,
    BlobError,
    BlobNotFound,
    BlobStore,
    Manifest,
    PartialBlob,
    check_blob_id,
)
from gossip.envelope import packb, unpackb
from gossip.errors import DialError, InvalidMessage, StreamBroken
from gossip.transport import ByteStream, PeerId, Transport

log = logging.getLogger(__name__)

PROTOCOL = "/hivemesh/blob/1"
TAG_CONTROL = 1
TAG_CHUNK = 2
DEFAULT_TIMEOUT = 10.0
MAX_REQUEST_BYTES = 4096
MAX_ANSWER_BYTES = MAX_MANIFEST_BYTES + 4096
MAX_CHUNKS_PER_REQUEST = 1024
BATCH_CHUNKS = 16  # chunks per request: bounds how far a server runs ahead of a failover
PIPELINE_DEPTH = 4  # chunks received but not yet verified and written
FLUSH_BYTES = 32 << 20  # record progress (and start writeback) every this many bytes...
FLUSH_SECONDS = 2.0  # ...or this often, whichever comes first
CLOSE_TIMEOUT = 2.0
SERVER_READ_AHEAD = 2  # chunks read from disk ahead of the one being sent
_HEADER = struct.Struct(">IB")
# What a stream raises when the peer resets, vanishes or stalls.
_STREAM_ERRORS = (StreamBroken, trio.BrokenResourceError, trio.ClosedResourceError)

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


class _BadRequest(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass
class BlobStats:
    """Counters of one exchange (both roles), for metrics and tests."""

    chunks_served: int = 0
    bytes_served: int = 0
    chunks_fetched: int = 0  # verified and written
    bytes_fetched: int = 0
    bad_chunks: int = 0


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
    ) -> None:
        self._transport = transport
        self._store = store
        self._on_misbehaviour = on_misbehaviour
        self._timeout = timeout
        self._io = trio.CapacityLimiter(io_threads)
        self._fetch_locks: dict[str, trio.Lock] = {}
        self.stats = BlobStats()
        transport.set_stream_handler(PROTOCOL, self._serve_stream)

    # ---- fetching ---------------------------------------------------------------------------

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
            for peer in dict.fromkeys(peers):
                try:
                    part = await self._fetch_from(peer, download)
                except _PeerFailed as e:
                    reasons[peer] = e.reason
                    if e.misbehaved:
                        self._report(peer, e.reason)
                    continue
                except (DialError, *_STREAM_ERRORS) as e:
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
            await _close_quietly(stream)

    async def _request_manifest(self, stream: ByteStream, blob_id: str) -> Manifest:
        await _send(stream, _control_frame({"op": "manifest", "id": blob_id}), self._timeout)
        answer = await self._read_answer(stream)
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
        """Request the missing chunks batch by batch; a second task verifies and writes them."""
        send, receive = trio.open_memory_channel[tuple[int, bytearray]](PIPELINE_DEPTH)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_chunks, receive, part, progress, nursery)
            async with send:
                for start, end in _batches(part.missing(), BATCH_CHUNKS):
                    request = {"op": "chunks", "id": part.blob_id, "start": start, "end": end}
                    await _send(stream, _control_frame(request), self._timeout)
                    for index in range(start, end):
                        await send.send((index, await self._read_chunk(stream, part.manifest, index)))

    async def _read_chunk(self, stream: ByteStream, manifest: Manifest, index: int) -> bytearray:
        tag, size = await _read_header(stream, self._timeout)
        if tag == TAG_CONTROL:
            raise _refusal(await self._read_control(stream, size), f"chunk {index}")
        if tag != TAG_CHUNK:
            raise _PeerFailed(f"sent a frame with unknown tag {tag}", misbehaved=True)
        if size != manifest.chunk_len(index):
            raise _PeerFailed(
                f"sent {size} bytes for chunk {index}, expected {manifest.chunk_len(index)}", misbehaved=True
            )
        return await _receive_exactly(stream, size, self._timeout)

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
                    raise _PeerFailed(
                        f"chunk {index} of blob {part.blob_id} does not match its hash", misbehaved=True
                    )
                self.stats.chunks_fetched += 1
                self.stats.bytes_fetched += len(data)
                if progress is not None:
                    progress(part.done_bytes, part.manifest.size)
                unflushed += len(data)
                late = trio.current_time() - last_flush >= FLUSH_SECONDS
                if (unflushed >= FLUSH_BYTES or late) and not flushing.locked():
                    nursery.start_soon(flush)  # off the critical path: receiving goes on meanwhile
                    unflushed, last_flush = 0, trio.current_time()

    async def _read_answer(self, stream: ByteStream) -> dict[str, Any]:
        tag, size = await _read_header(stream, self._timeout)
        if tag != TAG_CONTROL:
            raise _PeerFailed(f"answered a request with a frame of tag {tag}", misbehaved=True)
        answer = await self._read_control(stream, size)
        if answer.get("ok") is not True:
            raise _refusal(answer, "the manifest")
        return answer

    async def _read_control(self, stream: ByteStream, size: int) -> dict[str, Any]:
        if size > MAX_ANSWER_BYTES:
            raise _PeerFailed(f"sent a {size}-byte control frame (limit {MAX_ANSWER_BYTES})", misbehaved=True)
        body = await _receive_exactly(stream, size, self._timeout)
        try:
            message = unpackb(bytes(body), max_bytes=MAX_ANSWER_BYTES)
        except InvalidMessage as e:
            raise _PeerFailed(f"sent a malformed answer: {e}", misbehaved=True) from e
        if not isinstance(message, dict):
            raise _PeerFailed("sent an answer that is not a map", misbehaved=True)
        return message

    # ---- serving ----------------------------------------------------------------------------

    async def _serve_stream(self, stream: ByteStream) -> None:
        """Answer requests until the client closes; bad input gets an error frame, never a crash."""
        peer = stream.remote_peer
        try:
            while True:
                try:
                    request = await self._read_request(stream)
                    if request is None:
                        return
                    await self._answer(stream, request)
                except _BadRequest as e:
                    self._report(peer, f"bad blob request: {e.reason}")
                    await _send(stream, _error_frame(e.code, e.reason), self._timeout)
                    return
        except _STREAM_ERRORS as e:
            log.debug("blob stream from %s ended: %s", peer, e)
        finally:
            await _close_quietly(stream)

    async def _read_request(self, stream: ByteStream) -> dict[str, Any] | None:
        """The next request, None at a clean end of stream. Raises _BadRequest."""
        header = await _receive(stream, _HEADER.size, self._timeout, eof_ok=True)
        if header is None:
            return None
        length, tag = _HEADER.unpack(header)
        if tag != TAG_CONTROL or length < 1:
            raise _BadRequest("bad_request", f"expected a request frame (tag {TAG_CONTROL}), got tag {tag}")
        if length - 1 > MAX_REQUEST_BYTES:
            raise _BadRequest("too_large", f"request of {length - 1} bytes exceeds {MAX_REQUEST_BYTES}")
        body = await _receive_exactly(stream, length - 1, self._timeout)
        try:
            request = unpackb(bytes(body), max_bytes=MAX_REQUEST_BYTES)
        except InvalidMessage as e:
            raise _BadRequest("bad_request", str(e)) from e
        return _check_request(request)

    async def _answer(self, stream: ByteStream, request: dict[str, Any]) -> None:
        blob_id = request["id"]
        try:
            manifest = await self._in_thread(self._store.manifest, blob_id)
        except BlobNotFound:
            await _send(stream, _error_frame("not_found", f"blob {blob_id} is not here"), self._timeout)
            return
        if request["op"] == "manifest":
            await _send(stream, _control_frame({"ok": True, "manifest": manifest.encode()}), self._timeout)
            return
        start, end = request["start"], request["end"]
        if end > manifest.chunk_count:
            raise _BadRequest(
                "bad_request", f"chunks {start}..{end} out of range: blob has {manifest.chunk_count}"
            )
        await self._send_chunks(stream, blob_id, manifest, start, end)

    async def _send_chunks(
        self, stream: ByteStream, blob_id: str, manifest: Manifest, start: int, end: int
    ) -> None:
        """Stream chunks start..end-1; a reader task keeps the next ones ready while one is sent."""
        try:
            fd = await self._in_thread(_open_blob, self._store, blob_id)
        except (BlobError, OSError) as e:
            await _send(
                stream, _error_frame("unavailable", f"cannot read blob {blob_id}: {e}"), self._timeout
            )
            return
        frames, ready = trio.open_memory_channel[tuple[bytearray, int]](SERVER_READ_AHEAD)
        broken: list[BaseException] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_frames, frames, fd, blob_id, manifest, start, end)
                try:
                    async with ready:
                        async for frame, size in ready:
                            await _send(stream, frame, self._timeout)
                            if size:
                                self.stats.chunks_served += 1
                                self.stats.bytes_served += size
                except _STREAM_ERRORS as e:  # re-raised outside the nursery, unwrapped
                    broken.append(e)
                    nursery.cancel_scope.cancel()
        finally:
            os.close(fd)  # only now: no reader thread can be using it any more
        if broken:
            raise broken[0]

    async def _read_frames(
        self,
        frames: trio.MemorySendChannel[tuple[bytearray, int]],
        fd: int,
        blob_id: str,
        manifest: Manifest,
        start: int,
        end: int,
    ) -> None:
        """Chunk frames (frame, chunk size) in order; an error frame (size 0) ends them early."""
        async with frames:
            for index in range(start, end):
                size = manifest.chunk_len(index)
                frame = bytearray(_HEADER.size + size)  # header and data in one write: no copy, one frame
                _HEADER.pack_into(frame, 0, size + 1, TAG_CHUNK)
                offset = index * manifest.chunk_size
                try:
                    got = await self._in_thread(_pread_into, fd, frame, _HEADER.size, offset)
                    problem = "" if got == size else f"file ends {got} bytes into it"
                except OSError as e:
                    problem = str(e)
                if problem:
                    why = f"cannot read chunk {index} of blob {blob_id}: {problem}"
                    frame, size = bytearray(_error_frame("unavailable", why)), 0
                try:
                    await frames.send((frame, size))
                except trio.BrokenResourceError:
                    return  # the sender stopped: the stream broke
                if not size:
                    return

    # ---- helpers ----------------------------------------------------------------------------

    def _report(self, peer: PeerId, reason: str) -> None:
        log.info("blob peer %s misbehaved: %s", peer, reason)
        if self._on_misbehaviour is not None:
            self._on_misbehaviour(peer, reason)

    async def _in_thread(self, fn: Callable[..., R], *args: Any) -> R:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io)


def _check_request(request: object) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise _BadRequest("bad_request", "request must be a map")
    op = request.get("op")
    try:
        check_blob_id(request.get("id"))
    except BlobError as e:
        raise _BadRequest("bad_request", str(e)) from e
    if op == "manifest" and set(request) == {"op", "id"}:
        return request
    if op == "chunks" and set(request) == {"op", "id", "start", "end"}:
        start, end = request["start"], request["end"]
        if not (_is_uint(start) and _is_uint(end) and start < end):
            raise _BadRequest(
                "bad_request", f"chunk range must be integers 0 <= start < end, got {start!r}..{end!r}"
            )
        if end - start > MAX_CHUNKS_PER_REQUEST:
            raise _BadRequest("too_large", f"at most {MAX_CHUNKS_PER_REQUEST} chunks per request")
        return request
    raise _BadRequest("bad_request", f"unknown request {sorted(request)!r} (op {op!r})")


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
        if not isinstance(e, _PeerFailed | Exception) or isinstance(e, OSError | BlobError):
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


def _control_frame(message: dict[str, Any]) -> bytes:
    body = packb(message)
    return _HEADER.pack(len(body) + 1, TAG_CONTROL) + body


def _error_frame(code: str, msg: str) -> bytes:
    return _control_frame({"ok": False, "code": code, "msg": msg})


def _open_blob(store: BlobStore, blob_id: str) -> int:
    return os.open(store.path(blob_id), os.O_RDONLY)


def _pread_into(fd: int, buf: bytearray, at: int, offset: int) -> int:
    """Fill buf[at:] from the file at offset; returns the bytes read (short only at end of file)."""
    with memoryview(buf) as view:
        filled = at
        while filled < len(buf):
            n = os.preadv(fd, [view[filled:]], offset + filled - at)
            if n == 0:
                break
            filled += n
    return filled - at


async def _read_header(stream: ByteStream, timeout: float) -> tuple[int, int]:
    """(tag, body size) of the next frame."""
    length, tag = _HEADER.unpack(await _receive_exactly(stream, _HEADER.size, timeout))
    if length < 1:
        raise _PeerFailed("sent an empty frame", misbehaved=True)
    return tag, length - 1


async def _receive_exactly(stream: ByteStream, n: int, timeout: float) -> bytearray:
    """Exactly n bytes within timeout, in one buffer. Raises StreamBroken on EOF or stall."""
    buf = await _receive(stream, n, timeout, eof_ok=False)
    assert buf is not None
    return buf


async def _receive(stream: ByteStream, n: int, timeout: float, *, eof_ok: bool) -> bytearray | None:
    """As _receive_exactly, but None if eof_ok and the stream ends before the first byte."""
    buf = bytearray(n)
    filled = 0
    try:
        with trio.fail_after(timeout), memoryview(buf) as view:
            while filled < n:
                piece = await stream.receive_some(n - filled)
                if not piece:
                    if eof_ok and filled == 0:
                        return None
                    raise StreamBroken(f"stream from {stream.remote_peer} ended after {filled} of {n} bytes")
                view[filled : filled + len(piece)] = piece
                filled += len(piece)
    except trio.TooSlowError as e:
        raise StreamBroken(f"{stream.remote_peer} stalled: {filled} of {n} bytes in {timeout}s") from e
    return buf


async def _send(stream: ByteStream, data: bytes | bytearray, timeout: float) -> None:
    try:
        with trio.fail_after(timeout):
            await stream.send_all(data)  # type: ignore[arg-type]  # bytearray: avoids a copy
    except trio.TooSlowError as e:
        raise StreamBroken(f"write to {stream.remote_peer} stalled for {timeout}s") from e


async def _close_quietly(stream: ByteStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await stream.aclose()
        except _STREAM_ERRORS as e:
            log.debug("closing blob stream to %s: %s", stream.remote_peer, e)
