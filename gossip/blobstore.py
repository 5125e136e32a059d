"""Content-addressed blob store on local disk: manifests, atomic puts, resumable downloads.

A blob is cut into fixed-size chunks (1 MiB). Its manifest lists the size, the chunk size and
the sha256 of every chunk; the blob id is the sha256 (hex) of the manifest's canonical
encoding. Knowing only the id, a peer can check a manifest, then every chunk as it arrives.

Layout under root: complete blobs in `blobs/<id[:2]>/<id>`, downloads in progress in
`partial/<id>`, puts being written in `tmp/`, and `index.sqlite` (WAL, synchronous=FULL),
which is the truth about which blobs are complete and which chunks of a partial are on disk.
A file is only ever made visible by rename after fsync, so a crash leaves either the old
state or the new one.

Every method is synchronous and may hash or write hundreds of MB: from trio, call them
through `trio.to_thread.run_sync` (BlobExchange does). One store may be used from several
threads at once; two processes must not share a root.

A download's partial file is sparse: its size comes from a manifest that already hashed to
the id the caller asked for, and the caller's size cap is checked before it is created, so
a peer's claim never reserves disk. A new download that could not fit in the free space is
refused up front.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sqlite3
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gossip.envelope import packb, unpackb
from gossip.errors import GossipError, InvalidMessage

CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 8 << 20  # a chunk travels as one frame; bounds what a peer can make us buffer
MAX_MANIFEST_BYTES = 8 << 20  # ~250k chunks: 256 GiB at 1 MiB chunks
MANIFEST_VERSION = 1
_DIGEST_SIZE = 32
_BLOB_ID = re.compile(r"[0-9a-f]{64}")
MANIFEST_CACHE = 64  # decoded manifests of complete blobs kept in memory

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    manifest BLOB NOT NULL,
    complete INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partial_chunks (
    id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (id, idx)
) WITHOUT ROWID;
"""


class BlobError(GossipError):
    """A blob operation failed: bad id, bad manifest, blob missing, no peer could serve it."""


class BlobNotFound(BlobError):
    """The blob is not (completely) in this store."""


class DiskFull(BlobError):
    """Not enough free disk space for a new download."""

    def __init__(self, blob_id: str, need: int, free: int) -> None:
        super().__init__(f"blob {blob_id} needs {need} bytes but only {free} are free on disk")
        self.need, self.free = need, free


def check_blob_id(blob_id: object) -> str:
    """The id itself if it is 64 lowercase hex characters; BlobError otherwise (ids become paths)."""
    if not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id):
        raise BlobError(f"invalid blob id {blob_id!r}: expected 64 lowercase hex characters")
    return blob_id


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a blob is made of; its canonical encoding hashes to the blob id."""

    size: int
    chunk_size: int
    chunks: tuple[bytes, ...]  # sha256 digest of each chunk, in order

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)

    def chunk_len(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def encode(self) -> bytes:
        return packb([MANIFEST_VERSION, self.size, self.chunk_size, b"".join(self.chunks)])

    @property
    def blob_id(self) -> str:
        return hashlib.sha256(self.encode()).hexdigest()

    @classmethod
    def decode(cls, data: bytes, blob_id: str | None = None) -> Manifest:
        """Parse untrusted manifest bytes; with blob_id, also check they hash to it. Raises BlobError."""
        if blob_id is not None and hashlib.sha256(data).hexdigest() != check_blob_id(blob_id):
            raise BlobError(f"manifest does not hash to blob id {blob_id}")
        try:
            raw = unpackb(data, max_bytes=MAX_MANIFEST_BYTES)
        except InvalidMessage as e:
            raise BlobError(f"malformed manifest: {e}") from e
        if not isinstance(raw, list) or len(raw) != 4:
            raise BlobError("malformed manifest: expected [version, size, chunk_size, digests]")
        version, size, chunk_size, digests = raw
        if version != MANIFEST_VERSION or isinstance(version, bool):
            raise BlobError(f"manifest version {version!r} not supported (we speak {MANIFEST_VERSION})")
        if not _is_uint(size) or size >= 2**63:
            raise BlobError(f"manifest size must be a non-negative integer, got {size!r}")
        if not _is_uint(chunk_size) or not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise BlobError(f"manifest chunk size must be 1..{MAX_CHUNK_SIZE}, got {chunk_size!r}")
        count = -(-size // chunk_size)
        if not isinstance(digests, bytes) or len(digests) != count * _DIGEST_SIZE:
            raise BlobError(f"manifest of {size} bytes in {chunk_size}-byte chunks needs {count} digests")
        chunks = tuple(digests[i : i + _DIGEST_SIZE] for i in range(0, len(digests), _DIGEST_SIZE))
        manifest = cls(size, chunk_size, chunks)
        if manifest.encode() != data:  # one blob, one id: no alternative encodings
            raise BlobError("manifest is not in canonical form")
        return manifest


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class BlobStore:
    """Blobs on disk under root, indexed in root/"index.sqlite"."""

    def __init__(self, root: Path, *, chunk_size: int = CHUNK_SIZE) -> None:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
        self.root = Path(root)
        self.chunk_size = chunk_size
        for sub in ("blobs", "partial", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for leftover in (self.root / "tmp").iterdir():  # puts cut short by a crash
            leftover.unlink(missing_ok=True)
        self._lock = threading.Lock()  # one connection shared by threads, one user at a time
        # Served blobs are asked for their manifest on every request; decoding a big one is not free.
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()
        self._db = sqlite3.connect(self.root / "index.sqlite", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- complete blobs ---------------------------------------------------------------------

    def put_bytes(self, data: bytes) -> str:
        """Store data; returns its blob id. Atomic and idempotent."""
        view = memoryview(data)
        pieces = (view[i : i + self.chunk_size] for i in range(0, len(data), self.chunk_size))
        return self._put(pieces)

    def put_file(self, path: Path) -> str:
        """Copy the file at path into the store; returns its blob id. Atomic and idempotent."""
        with open(path, "rb", buffering=0) as src:
            return self._put(_read_pieces(src, self.chunk_size))

    def has(self, blob_id: str) -> bool:
        check_blob_id(blob_id)
        with self._lock:
            row = self._db.execute("SELECT complete FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        return bool(row and row[0]) and self._final_path(blob_id).is_file()

    def path(self, blob_id: str) -> Path:
        """Where the complete blob lives (read-only for callers). Raises BlobNotFound."""
        if not self.has(blob_id):
            raise BlobNotFound(f"blob {blob_id} is not in the store")
        return self._final_path(blob_id)

    def read(self, blob_id: str) -> bytes:
        return self.path(blob_id).read_bytes()

    def manifest(self, blob_id: str) -> Manifest:
        """Manifest of a complete blob. Raises BlobNotFound."""
        if not self.has(blob_id):
            raise BlobNotFound(f"blob {blob_id} is not in the store")
        with self._lock:
            cached = self._manifests.get(blob_id)
            if cached is None:
                (data,) = self._db.execute("SELECT manifest FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        if cached is not None:
            return cached
        manifest = Manifest.decode(data, blob_id)
        with self._lock:
            self._manifests[blob_id] = manifest
            while len(self._manifests) > MANIFEST_CACHE:
                self._manifests.popitem(last=False)
        return manifest

    def _put(self, pieces: Iterable[bytes | bytearray | memoryview]) -> str:
        tmp = self.root / "tmp" / uuid.uuid4().hex
        digests: list[bytes] = []
        size = 0
        try:
            with open(tmp, "wb", buffering=0) as out:
                for piece in pieces:
                    digests.append(hashlib.sha256(piece).digest())
                    size += len(piece)
                    _write_all(out.fileno(), piece)
                os.fsync(out.fileno())
            manifest = Manifest(size, self.chunk_size, tuple(digests))
            blob_id = manifest.blob_id
            if self.has(blob_id):
                return blob_id
            self._publish(tmp, manifest)
            return blob_id
        finally:
            tmp.unlink(missing_ok=True)

    def _publish(self, src: Path, manifest: Manifest) -> Path:
        """Rename a fsynced file into place, then mark the blob complete in the index."""
        blob_id = manifest.blob_id
        final = self._final_path(blob_id)
        final.parent.mkdir(exist_ok=True)
        os.replace(src, final)
        _fsync_dir(final.parent)
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO blobs (id, size, manifest, complete) VALUES (?, ?, ?, 1)",
                (blob_id, manifest.size, manifest.encode()),
            )
            self._db.execute("DELETE FROM partial_chunks WHERE id = ?", (blob_id,))
        return final

    def _final_path(self, blob_id: str) -> Path:
        return self.root / "blobs" / blob_id[:2] / blob_id

    # ---- downloads in progress --------------------------------------------------------------

    def partial_manifest(self, blob_id: str) -> Manifest | None:
        """Manifest of an unfinished download of blob_id, if one was started."""
        check_blob_id(blob_id)
        with self._lock:
            row = self._db.execute(
                "SELECT manifest FROM blobs WHERE id = ? AND complete = 0", (blob_id,)
            ).fetchone()
        return Manifest.decode(row[0], blob_id) if row else None

    def open_partial(self, manifest: Manifest) -> PartialBlob:
        """Start, or resume, a download of the blob that manifest describes. Close it when done."""
        blob_id = manifest.blob_id
        part_path = self.root / "partial" / blob_id
        with self._lock:
            row = self._db.execute("SELECT complete FROM blobs WHERE id = ?", (blob_id,)).fetchone()
            resumable = row is not None and row[0] == 0 and _has_size(part_path, manifest.size)
            if resumable:
                rows = self._db.execute("SELECT idx FROM partial_chunks WHERE id = ?", (blob_id,))
                done = {i for (i,) in rows}
            else:  # new, or the partial file is gone: whatever the index says is stale
                done = set()
                free = _free_bytes(self.root / "partial") + _bytes_held(part_path)
                if manifest.size > free:
                    raise DiskFull(blob_id, manifest.size, free)
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.execute(
                        "INSERT OR REPLACE INTO blobs (id, size, manifest, complete) VALUES (?, ?, ?, 0)",
                        (blob_id, manifest.size, manifest.encode()),
                    )
                    self._db.execute("DELETE FROM partial_chunks WHERE id = ?", (blob_id,))
        fd = os.open(part_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, manifest.size)
        except BaseException:
            os.close(fd)
            raise
        return PartialBlob(self, manifest, part_path, fd, done)

    def _record_chunks(self, blob_id: str, indices: list[int]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            rows = [(blob_id, i) for i in indices]
            self._db.executemany("INSERT OR IGNORE INTO partial_chunks (id, idx) VALUES (?, ?)", rows)


class PartialBlob:
    """A download in progress: each verified chunk is written in place in the partial file.

    write_chunk may run in one thread while flush runs in another. A chunk counts as done
    for a later resume only once flush has synced it to disk and recorded it in the index.
    """

    def __init__(self, store: BlobStore, manifest: Manifest, path: Path, fd: int, done: set[int]) -> None:
        self.store, self.manifest, self.path = store, manifest, path
        self.blob_id = manifest.blob_id
        self._fd = fd
        self._done = done
        self._unsynced: list[int] = []
        self._lock = threading.Lock()
        self.done_bytes = sum(manifest.chunk_len(i) for i in done)

    @property
    def complete(self) -> bool:
        return len(self._done) == self.manifest.chunk_count

    def missing(self) -> list[int]:
        return [i for i in range(self.manifest.chunk_count) if i not in self._done]

    def has_chunk(self, index: int) -> bool:
        return index in self._done

    def write_chunk(self, index: int, data: bytes | bytearray | memoryview) -> bool:
        """Verify a chunk against the manifest and write it in place; False (nothing written) if wrong."""
        m = self.manifest
        if not 0 <= index < m.chunk_count or len(data) != m.chunk_len(index):
            return False
        if hashlib.sha256(data).digest() != m.chunks[index]:  # one call: the GIL is released once
            return False
        _pwrite_all(self._fd, data, index * m.chunk_size)
        with self._lock:
            if index not in self._done:
                self._done.add(index)
                self._unsynced.append(index)
                self.done_bytes += m.chunk_len(index)
        return True

    def flush(self) -> None:
        """Sync the chunks written so far and record them, so a restart does not fetch them again."""
        with self._lock:
            batch, self._unsynced = self._unsynced, []
        if not batch:
            return
        try:
            os.fdatasync(self._fd)
            self.store._record_chunks(self.blob_id, batch)
        except BaseException:
            with self._lock:  # try again on the next flush
                self._unsynced.extend(batch)
            raise

    def finish(self) -> Path:
        """Sync, rename into place and mark complete; returns the blob's final path."""
        if not self.complete:
            raise BlobError(f"blob {self.blob_id} has {len(self.missing())} chunks missing")
        os.fsync(self._fd)
        return self.store._publish(self.path, self.manifest)

    def close(self) -> None:
        """Record what is on disk and release the file; idempotent."""
        if self._fd < 0:
            return
        try:
            if self.path.exists():  # after finish() the data is already published
                self.flush()
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> PartialBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_pieces(src: io.RawIOBase, size: int) -> Iterator[bytearray]:
    """The file in size-byte pieces (the last one may be shorter), read without extra copies."""
    while True:
        buf = bytearray(size)
        filled = 0
        with memoryview(buf) as view:
            while filled < size:  # a raw read may return less than asked for
                n = src.readinto(view[filled:])
                if not n:
                    break
                filled += n
        if not filled:
            return
        del buf[filled:]
        yield buf
        if filled < size:
            return


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    with memoryview(data) as view:
        while view:
            view = view[os.write(fd, view) :]


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)


def _free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def _bytes_held(path: Path) -> int:
    """Blocks a stale partial file really holds (it is sparse): they are freed when it is reused."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
