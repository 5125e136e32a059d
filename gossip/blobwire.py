"""Wire format of the "/hivemesh/blob/1" stream protocol, and deadline-bound stream I/O for it.

Every frame is `u32 big-endian length of the rest | u8 tag | body`: tag 1 is a msgpack
control message, tag 2 the raw bytes of one chunk. On one stream the client sends one
request at a time and reads its whole answer before the next:

    {"op": "manifest", "id": <hex>}                       -> {"ok": True, "manifest": <bytes>}
    {"op": "chunks", "id": <hex>, "start": i, "end": j}   -> chunk frames i .. j-1, in order
    any request                                           -> {"ok": False, "code": ..., "msg": ...}

An error may also stand in place of any chunk frame (the server lost its file mid-way).
Codes: "not_found", "unavailable" and "busy" (too many uploads at once; the stream stays
usable), "bad_request" and "too_large" (the server closes the stream after answering and
reports the sender).

Every read and write here runs under a deadline: a frozen peer never errors by itself.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Any

import trio

from gossip.blobstore import MAX_MANIFEST_BYTES, BlobError, check_blob_id
from gossip.envelope import packb
from gossip.errors import InvalidMessage, StreamBroken
from gossip.transport import ByteStream

log = logging.getLogger(__name__)

PROTOCOL = "/hivemesh/blob/1"
TAG_CONTROL = 1
TAG_CHUNK = 2
HEADER = struct.Struct(">IB")
MAX_REQUEST_BYTES = 4096
MAX_ANSWER_BYTES = MAX_MANIFEST_BYTES + 4096
MAX_CHUNKS_PER_REQUEST = 1024
CLOSE_TIMEOUT = 2.0
# What a stream raises when the peer resets, vanishes or stalls.
STREAM_ERRORS = (StreamBroken, trio.BrokenResourceError, trio.ClosedResourceError)


class BadRequest(Exception):
    """A request the server refuses as malformed; code goes back to the client in the error frame."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


# ---- frames -----------------------------------------------------------------------------------


def control_frame(message: dict[str, Any]) -> bytes:
    body = packb(message)
    return HEADER.pack(len(body) + 1, TAG_CONTROL) + body


def error_frame(code: str, msg: str) -> bytes:
    return control_frame({"ok": False, "code": code, "msg": msg})


def chunk_frame(size: int) -> bytearray:
    """A chunk frame with its header set and room for size bytes after it (filled in place)."""
    frame = bytearray(HEADER.size + size)
    HEADER.pack_into(frame, 0, size + 1, TAG_CHUNK)
    return frame


def check_request(request: object) -> dict[str, Any]:
    """The decoded request itself if well-formed. Raises BadRequest."""
    if not isinstance(request, dict):
        raise BadRequest("bad_request", "request must be a map")
    op = request.get("op")
    try:
        check_blob_id(request.get("id"))
    except BlobError as e:
        raise BadRequest("bad_request", str(e)) from e
    if op == "manifest" and set(request) == {"op", "id"}:
        return request
    if op == "chunks" and set(request) == {"op", "id", "start", "end"}:
        start, end = request["start"], request["end"]
        if not (_is_uint(start) and _is_uint(end) and start < end):
            raise BadRequest(
                "bad_request", f"chunk range must be integers 0 <= start < end, got {start!r}..{end!r}"
            )
        if end - start > MAX_CHUNKS_PER_REQUEST:
            raise BadRequest("too_large", f"at most {MAX_CHUNKS_PER_REQUEST} chunks per request")
        return request
    raise BadRequest("bad_request", f"unknown request {sorted(request)!r} (op {op!r})")


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ---- stream I/O with deadlines ----------------------------------------------------------------


async def read_header(stream: ByteStream, timeout: float, *, eof_ok: bool = False) -> tuple[int, int] | None:
    """(tag, body size) of the next frame; None at a clean end of stream if eof_ok.

    Raises StreamBroken (EOF mid-frame, stall, reset) or InvalidMessage (an empty frame).
    """
    header = await receive(stream, HEADER.size, timeout, eof_ok=eof_ok)
    if header is None:
        return None
    length, tag = HEADER.unpack(header)
    if length < 1:
        raise InvalidMessage("empty frame: no room for its tag")
    return tag, length - 1


async def receive_exactly(stream: ByteStream, n: int, timeout: float) -> bytearray:
    """Exactly n bytes within timeout, in one buffer. Raises StreamBroken on EOF or stall."""
    buf = await receive(stream, n, timeout, eof_ok=False)
    assert buf is not None
    return buf


async def receive(
    stream: ByteStream, n: int, timeout: float, *, eof_ok: bool, into: bytearray | None = None
) -> bytearray | None:
    """As receive_exactly, but None if eof_ok and the stream ends before the first byte.

    With into (at least n bytes long), the bytes land at its start instead of in a new buffer.
    """
    buf = bytearray(n) if into is None else into
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


async def send(stream: ByteStream, data: bytes | bytearray | memoryview, timeout: float) -> None:
    """Write all of data within timeout (a buffer goes as is: no copy of a 1 MiB chunk)."""
    try:
        with trio.fail_after(timeout):
            await stream.send_all(data)
    except trio.TooSlowError as e:
        raise StreamBroken(f"write to {stream.remote_peer} stalled for {timeout}s") from e


async def close_quietly(stream: ByteStream) -> None:
    """Close, bounded in time and shielded: a cancelled owner must still release the stream."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await stream.aclose()
        except STREAM_ERRORS as e:
            log.debug("closing blob stream to %s: %s", stream.remote_peer, e)


def pread_into(fd: int, buf: bytearray, at: int, offset: int, size: int) -> int:
    """Fill buf[at:at+size] from the file at offset; returns the bytes read (short only at end of file)."""
    with memoryview(buf) as view:
        filled = 0
        while filled < size:
            n = os.preadv(fd, [view[at + filled : at + size]], offset + filled)
            if n == 0:
                break
            filled += n
    return filled
