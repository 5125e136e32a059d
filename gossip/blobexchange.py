"""Fetch blobs from peers into a BlobStore, and serve ours (gossip.blobserver) to them.

The wire protocol is in gossip.blobwire. A fetch first asks the peers, in order, for the
manifest and checks it against the id; a blob over the size limit (this peer's
`max_blob_size`, or the smaller `max_size` a caller passes when it knows what to expect) is
refused before anything is written, and the peer that offered it is reported. The chunks
then come from up to `parallel` peers at once (gossip.blobfetch), each checked against the
manifest before it is written. A peer that sends anything wrong is reported through
on_misbehaviour and dropped; a refusal, a reset or a stall (no progress within `timeout`)
drops it without a report. Verified chunks stay on disk (gossip.blobstore.PartialBlob), so
a later call, even after a restart, only fetches what is still missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from gossip import blobwire as wire
from gossip.blobfetch import BlobTooLarge, Download, FetchFailed, PeerFailed, Progress, request_manifest
from gossip.blobserver import BlobServer, BlobStats
from gossip.blobstore import BlobError, BlobNotFound, BlobStore, Manifest, PartialBlob, check_blob_id
from gossip.errors import GossipError
from gossip.transport import ByteStream, PeerId, Transport

log = logging.getLogger(__name__)

PROTOCOL = wire.PROTOCOL
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BLOB_SIZE = 2 << 30  # model weights and datasets; bigger ones need a deliberate setting
DEFAULT_PARALLEL = 4  # providers fetched from at once

R = TypeVar("R")

__all__ = ["DEFAULT_MAX_BLOB_SIZE", "PROTOCOL", "BlobExchange", "BlobTooLarge", "FetchFailed", "Progress"]


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
        max_blob_size: int = DEFAULT_MAX_BLOB_SIZE,
        parallel: int = DEFAULT_PARALLEL,
    ) -> None:
        self._transport = transport
        self._store = store
        self._on_misbehaviour = on_misbehaviour
        self._timeout = timeout
        self.max_blob_size = max_blob_size
        self.parallel = parallel
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

    async def fetch(
        self,
        blob_id: str,
        peers: list[PeerId],
        *,
        progress: Progress | None = None,
        max_size: int | None = None,
        parallel: int | None = None,
    ) -> Path:
        """Get the blob into the store and return its path.

        Args:
            blob_id: hex sha256 of the blob's manifest.
            peers: peers that may have it, in order of preference: the manifest comes from the
                first that has it, the chunks from up to `parallel` of them at once.
            progress: called as progress(bytes_done, bytes_total) after every verified chunk.
            max_size: refuse a blob larger than this many bytes (a job's announced result size,
                say); never more than the exchange's max_blob_size.
            parallel: peers to fetch chunks from at once (default: the exchange's `parallel`).

        Returns:
            The path of the complete blob in the store (already there: returned at once).

        Raises:
            BlobTooLarge (a BlobError): the blob is over the limit; nothing was written.
            FetchFailed (a BlobError): no peer could provide the missing chunks; what was
                verified stays on disk and a later call resumes from it.
            BlobError: invalid id, or the local disk failed or is too full (DiskFull).

        Cancelling a fetch also keeps what was verified, for the next call to resume from.
        """
        check_blob_id(blob_id)
        limit = self.max_blob_size if max_size is None else min(max_size, self.max_blob_size)
        lock = self._fetch_locks.setdefault(blob_id, trio.Lock())
        try:
            async with lock:  # one download per blob; a second caller waits and finds it done
                return await self._fetch_locked(blob_id, peers, progress, limit, parallel or self.parallel)
        except OSError as e:
            raise BlobError(f"local disk error while fetching blob {blob_id}: {e}") from e
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._fetch_locks.pop(blob_id, None)

    async def _fetch_locked(
        self, blob_id: str, peers: list[PeerId], progress: Progress | None, limit: int, parallel: int
    ) -> Path:
        try:
            path = await self._in_thread(self._store.path, blob_id)
        except BlobNotFound:
            pass
        else:
            size = path.stat().st_size
            if size > limit:
                raise BlobTooLarge(blob_id, size, limit)
            return path
        reasons: dict[PeerId, str] = {}
        first: tuple[PeerId, ByteStream] | None = None
        part: PartialBlob | None = None
        try:
            manifest = await self._in_thread(self._store.partial_manifest, blob_id)
            if manifest is not None:  # resume a download an earlier call or process started
                if manifest.size > limit:
                    raise BlobTooLarge(blob_id, manifest.size, limit)
            else:
                manifest, first = await self._find_manifest(blob_id, peers, limit, reasons)
            part = await self._in_thread(self._store.open_partial, manifest)
            if not part.complete:  # else every chunk was on disk, only the rename was missing
                download = Download(
                    part,
                    [p for p in peers if p not in reasons],
                    transport=self._transport,
                    timeout=self._timeout,
                    parallel=parallel,
                    in_thread=self._in_thread,
                    report=self._report,
                    stats=self.stats,
                    progress=progress,
                    reasons=reasons,
                )
                handed, first = first, None
                await download.run(handed)
            log.debug("blob %s complete", blob_id)
            return await self._in_thread(part.finish)
        finally:
            with trio.CancelScope(shield=True):  # keep what was verified, even when cancelled
                if first is not None:
                    await wire.close_quietly(first[1])
                if part is not None:
                    await self._in_thread(part.close)

    async def _find_manifest(
        self, blob_id: str, peers: list[PeerId], limit: int, reasons: dict[PeerId, str]
    ) -> tuple[Manifest, tuple[PeerId, ByteStream]]:
        """The first valid manifest the peers give, and the open stream of the peer that gave it.

        Raises BlobTooLarge (the offering peer is reported: the blob is what it is, so asking
        another peer is pointless) or FetchFailed.
        """
        for peer in dict.fromkeys(peers):
            try:
                stream = await self._transport.open_stream(peer, PROTOCOL, timeout=self._timeout)
            except GossipError as e:  # unreachable, protocol not spoken
                reasons[peer] = str(e) or type(e).__name__
                continue
            try:
                data = await request_manifest(stream, blob_id, self._timeout)
                try:
                    manifest = await self._in_thread(Manifest.decode, data, blob_id)
                except BlobError as e:
                    raise PeerFailed(f"sent a bad manifest: {e}", misbehaved=True) from e
                if manifest.size > limit:
                    self._report(peer, f"offered blob {blob_id} of {manifest.size} bytes (limit {limit})")
                    raise BlobTooLarge(blob_id, manifest.size, limit)
            except PeerFailed as e:
                reasons[peer] = e.reason
                if e.misbehaved:
                    self._report(peer, e.reason)
            except BlobTooLarge:
                await wire.close_quietly(stream)
                raise
            except (GossipError, *wire.STREAM_ERRORS) as e:  # refused, reset, stalled
                reasons[peer] = str(e) or type(e).__name__
            else:
                return manifest, (peer, stream)
            await wire.close_quietly(stream)
        raise FetchFailed(blob_id, reasons)

    def _report(self, peer: PeerId, reason: str) -> None:
        log.info("blob peer %s misbehaved: %s", peer, reason)
        if self._on_misbehaviour is not None:
            self._on_misbehaviour(peer, reason)

    async def _in_thread(self, fn: Callable[..., R], *args: Any) -> R:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io)
