"""Length-prefixed frames over a ByteStream, with a size limit and a deadline on every read.

A frame is a 4-byte big-endian length followed by that many bytes. A frozen peer would
otherwise hang a read forever, so every read and write runs under a deadline.
"""

from __future__ import annotations

import struct

import trio

from gossip.errors import MessageTooLarge, StreamBroken
from gossip.transport import ByteStream

DEFAULT_MAX_FRAME = 4 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0
_HEADER = struct.Struct(">I")


async def read_exactly(stream: ByteStream, n: int, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    buf = bytearray()
    try:
        with trio.fail_after(timeout):
            while len(buf) < n:
                chunk = await stream.receive_some(n - len(buf))
                if not chunk:
                    raise StreamBroken(f"stream ended after {len(buf)} of {n} bytes")
                buf += chunk
    except trio.TooSlowError as e:
        raise StreamBroken(f"read timed out after {timeout}s ({len(buf)} of {n} bytes)") from e
    return bytes(buf)


async def write_frame(stream: ByteStream, payload: bytes, timeout: float = DEFAULT_TIMEOUT) -> None:
    try:
        with trio.fail_after(timeout):
            await stream.send_all(_HEADER.pack(len(payload)) + payload)
    except trio.TooSlowError as e:
        raise StreamBroken(f"write timed out after {timeout}s") from e


async def read_frame(
    stream: ByteStream, max_size: int = DEFAULT_MAX_FRAME, timeout: float = DEFAULT_TIMEOUT
) -> bytes:
    """One frame. Raises MessageTooLarge before reading an oversized body, StreamBroken on EOF/timeout."""
    (size,) = _HEADER.unpack(await read_exactly(stream, _HEADER.size, timeout))
    if size > max_size:
        raise MessageTooLarge(size, max_size)
    return await read_exactly(stream, size, timeout) if size else b""
