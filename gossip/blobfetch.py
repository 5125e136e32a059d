"""The client side of "/hivemesh/blob/1": ask a peer for a manifest, download chunks from several.

`Download` fills one PartialBlob from up to `parallel` providers at once: one task per provider
and one writer task. A provider task keeps BATCHES_AHEAD chunk requests queued on its stream, so
the server never waits a round trip, and hands every chunk it reads to the writer, which hashes
and writes all the chunks that are ready in one worker-thread call, so the event loop only moves
bytes. gossip.blobplan decides who fetches which batch.

Faults: a provider that refuses, resets or stalls (no progress within `timeout`) is dropped and
its unfinished chunks go to the others; one that sends anything wrong (a chunk of the wrong
size or hash, an unknown frame, bytes nobody asked for) is dropped and reported through
`report`. The next untried provider takes a dropped one's place. A provider with nothing left
to do half-closes its stream and checks that the server sent no more than it was asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from gossip import blobwire as wire
from gossip.blobplan import Batch, ChunkPlan
from gossip.blobserver import BlobStats
from gossip.blobstore import BlobError, Manifest, PartialBlob
from gossip.envelope import unpackb
from gossip.errors import GossipError, InvalidMessage
from gossip.transport import ByteStream, PeerId, Transport

log = logging.getLogger(__name__)

BATCH_BYTES = 8 << 20  # one chunk request asks for about this much...
MAX_BATCH_CHUNKS = 8  # ...in at most this many chunks (small chunks still spread over providers)
BATCHES_AHEAD = 2  # requests queued per stream: the server never waits for our next request
WRITE_BATCH = 8  # chunks verified and written per worker-thread call, at most
FLUSH_BYTES = 32 << 20  # record progress (and start writeback) every this many bytes...
FLUSH_SECONDS = 2.0  # ...or this often, whichever comes first

Progress = Callable[[int, int], None]
InThread = Callable[..., Awaitable[Any]]
Report = Callable[[PeerId, str], None]


class FetchFailed(BlobError):
    """No peer could provide the blob; `reasons` says why for each peer tried."""

    def __init__(self, blob_id: str, reasons: dict[PeerId, str]) -> None:
        detail = "; ".join(f"{peer}: {why}" for peer, why in reasons.items()) or "no peers to ask"
        super().__init__(f"could not fetch blob {blob_id}: {detail}")
        self.blob_id, self.reasons = blob_id, reasons


class BlobTooLarge(BlobError):
    """The blob is larger than the caller (or this peer) accepts; nothing was downloaded."""

    def __init__(self, blob_id: str, size: int, limit: int) -> None:
        super().__init__(f"blob {blob_id} is {size} bytes, over the limit of {limit}")
        self.blob_id, self.size, self.limit = blob_id, size, limit


class PeerFailed(Exception):
    """This peer cannot give us the blob now; misbehaved means it sent something wrong."""

    def __init__(self, reason: str, *, misbehaved: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.misbehaved = reason, misbehaved


# ---- reading answers ----------------------------------------------------------------------------


async def request_manifest(stream: ByteStream, blob_id: str, timeout: float) -> bytes:
    """The manifest bytes a peer sends for blob_id (not yet checked). Raises PeerFailed."""
    await wire.send(stream, wire.control_frame({"op": "manifest", "id": blob_id}), timeout)
    tag, size = await read_header(stream, timeout)
    if tag != wire.TAG_CONTROL:
        raise PeerFailed(f"answered a manifest request with a frame of tag {tag}", misbehaved=True)
    answer = await read_control(stream, size, timeout)
    if answer.get("ok") is not True:
        raise refusal(answer, "the manifest")
    data = answer.get("manifest")
    if not isinstance(data, bytes):
        raise PeerFailed("answered a manifest request without manifest bytes", misbehaved=True)
    return data


async def read_chunk(
    stream: ByteStream, manifest: Manifest, index: int, timeout: float, buf: bytearray
) -> memoryview:
    """Chunk index, read into buf (a chunk_size buffer: hashed in one call, off the event loop).

    Never reads past the size the manifest gives the chunk.
    """
    tag, size = await read_header(stream, timeout)
    if tag == wire.TAG_CONTROL:
        raise refusal(await read_control(stream, size, timeout), f"chunk {index}")
    if tag != wire.TAG_CHUNK:
        raise PeerFailed(f"sent a frame with unknown tag {tag}", misbehaved=True)
    if size != manifest.chunk_len(index):
        why = f"sent {size} bytes for chunk {index}, expected {manifest.chunk_len(index)}"
        raise PeerFailed(why, misbehaved=True)
    await wire.receive(stream, size, timeout, eof_ok=False, into=buf)
    return memoryview(buf)[:size]


async def read_header(stream: ByteStream, timeout: float) -> tuple[int, int]:
    try:
        header = await wire.read_header(stream, timeout)
    except InvalidMessage as e:
        raise PeerFailed(f"sent a bad frame: {e}", misbehaved=True) from e
    assert header is not None
    return header


async def read_control(stream: ByteStream, size: int, timeout: float) -> dict[str, Any]:
    if size > wire.MAX_ANSWER_BYTES:
        raise PeerFailed(f"sent a {size}-byte control frame (limit {wire.MAX_ANSWER_BYTES})", misbehaved=True)
    body = await wire.receive_exactly(stream, size, timeout)
    try:
        message = unpackb(bytes(body), max_bytes=wire.MAX_ANSWER_BYTES)
    except InvalidMessage as e:
        raise PeerFailed(f"sent a malformed answer: {e}", misbehaved=True) from e
    if not isinstance(message, dict):
        raise PeerFailed("sent an answer that is not a map", misbehaved=True)
    return message


def refusal(answer: dict[str, Any], what: str) -> PeerFailed:
    code, msg = answer.get("code"), answer.get("msg")
    if not isinstance(code, str) or not isinstance(msg, str):
        return PeerFailed(f"sent a malformed answer for {what}", misbehaved=True)
    return PeerFailed(f"refused {what}: {code}: {msg[:200]}")


def batch_chunks(chunk_size: int) -> int:
    return max(1, min(MAX_BATCH_CHUNKS, BATCH_BYTES // chunk_size))


# ---- the download -------------------------------------------------------------------------------


class Download:
    """Fills part from providers (in order of preference, up to `parallel` at once)."""

    def __init__(
        self,
        part: PartialBlob,
        providers: list[PeerId],
        *,
        transport: Transport,
        timeout: float,
        parallel: int,
        in_thread: InThread,
        report: Report,
        stats: BlobStats,
        progress: Progress | None,
        reasons: dict[PeerId, str],
    ) -> None:
        self._part = part
        self._untried = list(dict.fromkeys(providers))
        self._transport, self._timeout, self._parallel = transport, timeout, max(1, parallel)
        self._in_thread, self._report, self._stats, self._progress = in_thread, report, stats, progress
        self.reasons = reasons  # why each provider that failed did (shared with the caller)
        self._plan = ChunkPlan(part.missing(), batch_chunks(part.manifest.chunk_size))
        self._scopes: dict[PeerId, trio.CancelScope] = {}  # the running provider tasks
        self._closing: set[PeerId] = set()  # providers checking that their stream ended cleanly
        self._queued = 0  # chunks handed to the writer and not yet verified (briefly -1: see _session)
        self._changed = trio.Event()  # set (and replaced) whenever the plan or the providers change
        self._done_bytes = part.done_bytes
        depth = max(4, 2 * self._parallel)
        self._chunks_in, self._chunks_out = trio.open_memory_channel[tuple[PeerId, int, memoryview]](depth)
        # Chunk buffers go round from providers to the writer and back: no fresh megabyte (and its
        # page faults) per chunk. At most depth + WRITE_BATCH + parallel are ever out at once.
        self._buffers: list[bytearray] = []

    async def run(self, first: tuple[PeerId, ByteStream] | None = None) -> None:
        """Return once every chunk is verified and written. Raises FetchFailed, BlobError, OSError.

        first is a provider whose stream is already open (the one that sent the manifest):
        it is used at once and closed here.
        """
        if self._progress is not None:
            self._progress(self._done_bytes, self._part.manifest.size)
        writer = trio.CancelScope()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_chunks, nursery, writer)
                if first is not None:
                    peer, stream = first
                    if peer in self._untried:
                        self._untried.remove(peer)
                    self._start(nursery, peer, stream)
                    first = None
                while not self._plan.complete:
                    while len(self._scopes) < self._parallel and self._untried:
                        self._start(nursery, self._untried.pop(0), None)
                    if not self._scopes and not self._queued:
                        break  # nobody left to ask and nothing left to check
                    changed = self._changed
                    await changed.wait()
                # Done (or hopeless): stop all but the providers checking their stream's end, which
                # takes one round trip and catches a server that sent more than it was asked for.
                writer.cancel()
                for peer, scope in self._scopes.items():
                    if peer not in self._closing:
                        scope.cancel()
        except BaseExceptionGroup as group:  # trio nurseries always wrap: surface the main failure
            raise _main_failure(group) from None
        finally:
            if first is not None:
                await wire.close_quietly(first[1])
        if not self._plan.complete:
            raise FetchFailed(self._part.blob_id, self.reasons)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _start(self, nursery: trio.Nursery, peer: PeerId, stream: ByteStream | None) -> None:
        scope = trio.CancelScope()
        self._scopes[peer] = scope
        nursery.start_soon(self._provide, peer, stream, scope)

    def _drop(self, peer: PeerId, reason: str, *, misbehaved: bool) -> None:
        """Stop using peer; a misbehaving one is reported (once)."""
        if misbehaved:
            self._report(peer, reason)
            self.reasons[peer] = reason
        else:
            self.reasons.setdefault(peer, reason)
        scope = self._scopes.get(peer)
        if scope is not None:
            scope.cancel()

    # ---- one provider ---------------------------------------------------------------------

    async def _provide(self, peer: PeerId, stream: ByteStream | None, scope: trio.CancelScope) -> None:
        """Fetch batches from peer until the blob is complete or the peer fails."""
        try:
            with scope:
                while not self._plan.complete:
                    if stream is None:
                        changed = self._changed
                        if not self._plan.has_work(peer):
                            await changed.wait()
                            continue
                        stream = await self._transport.open_stream(peer, wire.PROTOCOL, timeout=self._timeout)
                    try:
                        await self._session(peer, stream)
                    finally:
                        self._plan.release(peer)
                        self._notify()
                    await self._end_session(peer, stream)
                    stream = None
        except PeerFailed as e:
            self._drop(peer, e.reason, misbehaved=e.misbehaved)
        except BlobError:
            raise  # ours, not the peer's
        except (GossipError, *wire.STREAM_ERRORS) as e:  # refused, unreachable, reset, stalled
            self._drop(peer, str(e) or type(e).__name__, misbehaved=False)
        finally:
            if stream is not None:
                await wire.close_quietly(stream)
            del self._scopes[peer]
            self._plan.release(peer)
            self._notify()

    async def _session(self, peer: PeerId, stream: ByteStream) -> None:
        """Request and read batches on one stream until the plan has nothing more for peer."""
        manifest = self._part.manifest
        outstanding: list[Batch] = []
        while True:
            while len(outstanding) < BATCHES_AHEAD:
                batch = self._plan.take(peer, steal=not outstanding)
                if batch is None:
                    break
                request = {"op": "chunks", "id": self._part.blob_id, "start": batch[0], "end": batch[1]}
                await wire.send(stream, wire.control_frame(request), self._timeout)
                outstanding.append(batch)
            if not outstanding:
                return
            batch = outstanding.pop(0)
            for index in range(*batch):
                buf = self._buffers.pop() if self._buffers else bytearray(manifest.chunk_size)
                try:
                    chunk = await read_chunk(stream, manifest, index, self._timeout, buf)
                except BaseException:
                    self._buffers.append(buf)
                    raise
                await self._chunks_in.send((peer, index, chunk))
                self._queued += 1  # only once sent: a provider cancelled in send() queued nothing
            self._plan.fetched(peer, batch)

    async def _end_session(self, peer: PeerId, stream: ByteStream) -> None:
        """Half-close and expect the server's end of stream: anything more is bytes nobody asked for."""
        self._closing.add(peer)
        try:
            with trio.move_on_after(self._timeout):
                await stream.send_eof()
                extra = await stream.receive_some(wire.MAX_REQUEST_BYTES)
                if extra:
                    why = f"sent {len(extra)}+ bytes after the last chunk asked for"
                    raise PeerFailed(why, misbehaved=True)
        except wire.STREAM_ERRORS as e:
            log.debug("ending blob stream to %s: %s", stream.remote_peer, e)
        finally:
            self._closing.discard(peer)
            await wire.close_quietly(stream)

    # ---- verification and disk --------------------------------------------------------------

    async def _write_chunks(self, nursery: trio.Nursery, scope: trio.CancelScope) -> None:
        with scope:
            await self._write_all(nursery)

    async def _write_all(self, nursery: trio.Nursery) -> None:
        part, size = self._part, self._part.manifest.size
        unflushed, last_flush = 0, trio.current_time()
        flushing = trio.Lock()

        async def flush() -> None:
            async with flushing:
                await self._in_thread(part.flush)

        async for item in self._chunks_out:
            items = [item]
            while len(items) < WRITE_BATCH:
                try:
                    items.append(self._chunks_out.receive_nowait())
                except trio.WouldBlock:
                    break
            verdicts = await self._in_thread(_verify_and_write, part, items)
            self._queued -= len(items)
            for _, _, chunk in items:
                self._buffers.append(chunk.obj)  # type: ignore[arg-type]  # a view of a pool buffer
                chunk.release()
            for (peer, index, _), verdict in zip(items, verdicts, strict=True):
                if verdict is None:
                    continue  # a duplicate of a chunk already written
                if not verdict:
                    self._stats.bad_chunks += 1
                    self._plan.retry(index)
                    why = f"chunk {index} of blob {part.blob_id} does not match its hash"
                    self._drop(peer, why, misbehaved=True)
                    continue
                length = part.manifest.chunk_len(index)
                self._plan.done(index)
                self._stats.chunks_fetched += 1
                self._stats.bytes_fetched += length
                self._done_bytes += length
                unflushed += length
                if self._progress is not None:
                    self._progress(self._done_bytes, size)
            self._notify()
            late = trio.current_time() - last_flush >= FLUSH_SECONDS
            if (unflushed >= FLUSH_BYTES or late) and not flushing.locked():
                nursery.start_soon(flush)  # off the critical path: receiving goes on meanwhile
                unflushed, last_flush = 0, trio.current_time()


def _verify_and_write(part: PartialBlob, items: list[tuple[PeerId, int, memoryview]]) -> list[bool | None]:
    """For each chunk: True (verified and written), False (wrong), None (already had it)."""
    return [None if part.has_chunk(index) else part.write_chunk(index, data) for _, index, data in items]


def _main_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure that explains a download's end: the first that is not a cancellation."""
    pending: list[BaseException] = [group]
    while pending:
        e = pending.pop(0)
        if isinstance(e, BaseExceptionGroup):
            pending[:0] = e.exceptions
        elif not isinstance(e, trio.Cancelled):
            return e
    return group  # only cancellation: let trio see it as it was
