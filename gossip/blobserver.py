"""The serving side of blob exchange: answers "/hivemesh/blob/1" streams from a BlobStore.

Requests are checked before anything is read from disk; a malformed or oversized request
gets an error frame, a report of the sender, and the stream is closed. Nothing a client
sends can crash the server. Chunks go out as they are on disk (the client verifies them),
read in a worker thread a couple of chunks ahead of the one being sent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from gossip import blobwire as wire
from gossip.blobstore import BlobError, BlobNotFound, BlobStore, Manifest
from gossip.envelope import unpackb
from gossip.errors import InvalidMessage
from gossip.transport import ByteStream, PeerId

log = logging.getLogger(__name__)

READ_AHEAD = 2  # chunks read from disk ahead of the one being sent
SPARE_FRAMES = 2 * (READ_AHEAD + 2)  # frame buffers of the store's chunk size kept between requests

InThread = Callable[..., Awaitable[Any]]


@dataclass
class BlobStats:
    """Counters of one BlobExchange (both roles), for metrics and tests."""

    chunks_served: int = 0
    bytes_served: int = 0
    chunks_fetched: int = 0  # verified and written
    bytes_fetched: int = 0
    bad_chunks: int = 0


class BlobServer:
    """Stream handler for the blob protocol; counts what it serves in `stats`."""

    def __init__(
        self,
        store: BlobStore,
        *,
        timeout: float,
        in_thread: InThread,
        report: Callable[[PeerId, str], None],
        stats: BlobStats,
        max_uploads: int = 16,
    ) -> None:
        self._store = store
        # Each upload holds a few chunks in memory: bound them, so many clients cannot exhaust it.
        self.max_uploads = max_uploads
        self._uploads = trio.Semaphore(max_uploads)
        self._timeout = timeout
        self._in_thread = in_thread
        self._report = report
        self.stats = stats
        self._frames: list[bytearray] = []  # spare frame buffers, store.chunk_size each

    @property
    def active_uploads(self) -> int:
        return self.max_uploads - self._uploads.value

    async def handle(self, stream: ByteStream) -> None:
        """Answer requests until the client closes; bad input gets an error frame, never a crash."""
        peer = stream.remote_peer
        try:
            while True:
                try:
                    request = await self._read_request(stream)
                    if request is None:
                        return
                    await self._answer(stream, request)
                except wire.BadRequest as e:
                    self._report(peer, f"bad blob request: {e.reason}")
                    await wire.send(stream, wire.error_frame(e.code, e.reason), self._timeout)
                    return
        except wire.STREAM_ERRORS as e:
            log.debug("blob stream from %s ended: %s", peer, e)
        finally:
            await wire.close_quietly(stream)

    async def _read_request(self, stream: ByteStream) -> dict[str, Any] | None:
        """The next request, None at a clean end of stream. Raises BadRequest."""
        try:
            header = await wire.read_header(stream, self._timeout, eof_ok=True)
        except InvalidMessage as e:
            raise wire.BadRequest("bad_request", str(e)) from e
        if header is None:
            return None
        tag, size = header
        if tag != wire.TAG_CONTROL:
            raise wire.BadRequest(
                "bad_request", f"expected a request frame (tag {wire.TAG_CONTROL}), got tag {tag}"
            )
        if size > wire.MAX_REQUEST_BYTES:
            raise wire.BadRequest("too_large", f"request of {size} bytes exceeds {wire.MAX_REQUEST_BYTES}")
        body = await wire.receive_exactly(stream, size, self._timeout)
        try:
            request = unpackb(bytes(body), max_bytes=wire.MAX_REQUEST_BYTES)
        except InvalidMessage as e:
            raise wire.BadRequest("bad_request", str(e)) from e
        return wire.check_request(request)

    async def _answer(self, stream: ByteStream, request: dict[str, Any]) -> None:
        blob_id = request["id"]
        try:
            manifest: Manifest = await self._in_thread(self._store.manifest, blob_id)
        except BlobNotFound:
            await wire.send(
                stream, wire.error_frame("not_found", f"blob {blob_id} is not here"), self._timeout
            )
            return
        if request["op"] == "manifest":
            answer = wire.control_frame({"ok": True, "manifest": manifest.encode()})
            await wire.send(stream, answer, self._timeout)
            return
        start, end = request["start"], request["end"]
        if end > manifest.chunk_count:
            why = f"chunks {start}..{end} out of range: blob has {manifest.chunk_count}"
            raise wire.BadRequest("bad_request", why)
        if self._uploads.value == 0:  # refuse at once: the client has other peers to ask
            why = f"already serving {self.max_uploads} uploads"
            await wire.send(stream, wire.error_frame("busy", why), self._timeout)
            return
        async with self._uploads:
            await self._send_chunks(stream, blob_id, manifest, start, end)

    async def _send_chunks(
        self, stream: ByteStream, blob_id: str, manifest: Manifest, start: int, end: int
    ) -> None:
        """Stream chunks start..end-1; a reader task keeps the next ones ready while one is sent.

        READ_AHEAD + 2 frame buffers go round between the two tasks (one being filled, up to
        READ_AHEAD ready, one being sent): no fresh megabyte, and no page faults, per chunk.
        """
        try:
            fd: int = await self._in_thread(_open_blob, self._store, blob_id)
        except (BlobError, OSError) as e:
            why = f"cannot read blob {blob_id}: {e}"
            await wire.send(stream, wire.error_frame("unavailable", why), self._timeout)
            return
        frames, ready = trio.open_memory_channel[tuple[bytearray, int]](READ_AHEAD)
        spare, free = trio.open_memory_channel[bytearray](READ_AHEAD + 2)
        for _ in range(min(READ_AHEAD + 2, end - start)):
            spare.send_nowait(self._take_frame(manifest.chunk_size))
        broken: list[BaseException] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_frames, frames, free, fd, blob_id, manifest, start, end)
                try:
                    async with ready:
                        async for frame, size in ready:
                            if not size:  # an error frame ends the answer
                                await wire.send(stream, frame, self._timeout)
                                break
                            with memoryview(frame) as view:  # a short last chunk uses part of it
                                await wire.send(stream, view[: wire.HEADER.size + size], self._timeout)
                            spare.send_nowait(frame)
                            self.stats.chunks_served += 1
                            self.stats.bytes_served += size
                except wire.STREAM_ERRORS as e:  # re-raised outside the nursery, unwrapped
                    broken.append(e)
                    nursery.cancel_scope.cancel()
        finally:
            os.close(fd)  # only now: no reader thread can be using it any more
            while True:  # the next request (usually right behind this one) reuses them
                try:
                    self._give_frame(free.receive_nowait(), manifest.chunk_size)
                except trio.WouldBlock:
                    break
        if broken:
            raise broken[0]

    def _take_frame(self, chunk_size: int) -> bytearray:
        if chunk_size == self._store.chunk_size and self._frames:
            return self._frames.pop()
        return wire.chunk_frame(chunk_size)

    def _give_frame(self, frame: bytearray, chunk_size: int) -> None:
        if chunk_size == self._store.chunk_size and len(self._frames) < SPARE_FRAMES:
            self._frames.append(frame)

    async def _read_frames(
        self,
        frames: trio.MemorySendChannel[tuple[bytearray, int]],
        free: trio.MemoryReceiveChannel[bytearray],
        fd: int,
        blob_id: str,
        manifest: Manifest,
        start: int,
        end: int,
    ) -> None:
        """(frame, chunk size) for each chunk in order; an error frame (size 0) ends them early."""
        async with frames:
            for index in range(start, end):
                size = manifest.chunk_len(index)
                frame = await free.receive()  # header and data in one write: one frame, no copy
                wire.HEADER.pack_into(frame, 0, size + 1, wire.TAG_CHUNK)
                try:
                    got = await self._in_thread(
                        wire.pread_into, fd, frame, wire.HEADER.size, index * manifest.chunk_size, size
                    )
                    problem = "" if got == size else f"file ends {got} bytes into it"
                except OSError as e:
                    problem = str(e)
                if problem:
                    why = f"cannot read chunk {index} of blob {blob_id}: {problem}"
                    frame, size = bytearray(wire.error_frame("unavailable", why)), 0
                try:
                    await frames.send((frame, size))
                except trio.BrokenResourceError:
                    return  # the sender stopped: the stream broke
                if not size:
                    return


def _open_blob(store: BlobStore, blob_id: str) -> int:
    return os.open(store.path(blob_id), os.O_RDONLY)
