"""Cheaper byte paths through py-libp2p 0.8.1's Noise, Yamux and TCP layers; the wire format is unchanged.

A bulk stream in the library is CPU-bound in Python, not in crypto (ChaCha20-Poly1305 runs at
~3 GB/s): every 64 KiB Yamux frame crossed a dozen trio yields (each lock acquisition, each
socket call), about five copies, and two Noise messages (a 65,536-byte frame is over the
65,519-byte Noise plaintext limit, so a 17-byte message followed each one). The patches here:

* Noise: a connection's received bytes are read in large pieces and every complete Noise
  message in them is decrypted at once, so most reads by Yamux are served from memory without
  a system call or a yield; a write is encrypted in 65,519-byte messages into one buffer and
  goes to the socket in one call.
* Yamux: a stream write sends as many frames as its window allows in one connection write,
  each frame exactly one Noise message long; frame reads skip the library's buffer copies.
* Locks: an uncontended Yamux or TCP lock is taken without yielding to the scheduler (trio
  yields on every acquisition); contended ones still queue fairly. NetStream's state lock keeps
  its yield: pubsub handles each RPC in a task of its own, and that yield per read is what
  keeps those tasks (and so gossip delivery) in arrival order.

Frame size limits, window accounting and timeouts are the library's own: only how bytes are
moved changes. `apply()` is idempotent and must run before any connection is made. Set
HIVEMESH_NO_FASTIO=1 to measure against the library's own paths.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import libp2p.security.noise.patterns as _noise_patterns
import libp2p.stream_muxer.yamux.yamux as _yamux
import trio
from cryptography.exceptions import InvalidTag
from libp2p.io.exceptions import IncompleteReadError
from libp2p.io.trio import TrioTCPStream
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.exceptions import MuxedStreamError
from noise.constants import MAX_NONCE
from noise.exceptions import NoiseInvalidMessage, NoiseMaxNonceError

NOISE_LENGTH = struct.Struct(">H")
NOISE_TAG_SIZE = 16  # Poly1305 tag after every Noise message's ciphertext
# Bytes asked of the socket at once when no complete Noise message is buffered: a few messages.
RECV_BYTES = 256 * 1024
# Most stream bytes one Yamux write puts on the connection at once (window permitting); other
# streams' frames wait at most this long behind it.
WRITE_BATCH_BYTES = 512 * 1024
# Yamux payload per DATA frame: header plus payload fill exactly one Noise message.
FRAME_PAYLOAD = MAX_PLAINTEXT_LENGTH - _yamux.HEADER_SIZE
WINDOW_WAIT_TIMEOUT = 5.0  # as the library: a peer that returns no window credit resets the write
WINDOW_POLL_INTERVAL = 0.001


def apply() -> None:
    """Install every patch in this module (once); HIVEMESH_NO_FASTIO=1 leaves the library as it is."""
    if getattr(_yamux, "_hivemesh_fastio", False) or os.environ.get("HIVEMESH_NO_FASTIO") == "1":
        return
    _noise_patterns.NoiseTransportReadWriter = FastNoiseReadWriter  # type: ignore[misc]
    _noise_patterns.SecureSession = FastSecureSession  # type: ignore[misc]
    _yamux.read_exactly = read_exactly  # type: ignore[assignment]
    _yamux.YamuxStream.write = write_stream  # type: ignore[method-assign]
    _yamux.Yamux._write_frame = write_frame  # type: ignore[method-assign]
    _swap_locks_after_init(_yamux.Yamux, ("streams_lock", "_write_lock"))
    _swap_locks_after_init(_yamux.YamuxStream, ("window_lock", "close_lock"))
    _swap_locks_after_init(TrioTCPStream, ("read_lock", "write_lock"))
    _yamux._hivemesh_fastio = True  # type: ignore[attr-defined]


# ---- locks --------------------------------------------------------------------------------------


class QuickLock:
    """trio.Lock whose uncontended acquire does not yield.

    trio.Lock.acquire always passes through the scheduler, and the library takes several locks
    per frame. Waiters still queue in order: acquire_nowait refuses while anyone is parked.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def acquire(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    def acquire_nowait(self) -> None:
        self._lock.acquire_nowait()

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def statistics(self) -> trio.LockStatistics:
        return self._lock.statistics()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


def _swap_locks_after_init(cls: type, names: tuple[str, ...]) -> None:
    """After cls.__init__, replace the trio.Lock attributes `names` with QuickLocks."""
    original = cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        for name in names:
            setattr(self, name, QuickLock())

    cls.__init__ = init  # type: ignore[misc]


# ---- Noise --------------------------------------------------------------------------------------


class FastNoiseReadWriter(NoiseTransportReadWriter):
    """Noise transport messages, read in bulk and written in one socket call per write.

    Replaces one socket read for each length prefix and body, and two encrypts and two socket
    writes for a 64 KiB frame. Messages stay at most 65,535 bytes on the wire (the 2-byte length
    prefix cannot say more), nonces advance exactly as the library's own cipher state.
    """

    def __init__(self, conn: Any, noise_state: Any) -> None:
        super().__init__(conn, noise_state)
        self._raw = bytearray()  # received bytes not yet decrypted: length prefixes and ciphertexts

    # ---- writing

    async def write_msg(self, msg: bytes, prefix_encoded: bool = False) -> None:
        if prefix_encoded or not self._cryptography_cipher(encrypting=True):
            await super().write_msg(bytes(msg), prefix_encoded)
            return
        await self.read_writer.read_write_closer.write(self.seal(msg))

    def seal(self, msg: bytes | bytearray | memoryview) -> bytearray:
        """msg as consecutive length-prefixed Noise messages, in one buffer."""
        state = self.noise_state.noise_protocol.cipher_state_encrypt
        with memoryview(msg) as plain:
            total = len(plain)
            count = max(1, -(-total // MAX_PLAINTEXT_LENGTH))
            out = bytearray(total + count * (NOISE_LENGTH.size + NOISE_TAG_SIZE))
            with memoryview(out) as sealed:
                at = 0
                for start in range(0, max(total, 1), MAX_PLAINTEXT_LENGTH):
                    piece = plain[start : start + MAX_PLAINTEXT_LENGTH]
                    size = len(piece) + NOISE_TAG_SIZE
                    NOISE_LENGTH.pack_into(out, at, size)
                    at += NOISE_LENGTH.size
                    nonce = _next_nonce(state)
                    state.cipher.cipher.encrypt_into(nonce, piece, None, sealed[at : at + size])
                    at += size
        return out

    # ---- reading

    async def read_msg(self, prefix_encoded: bool = False) -> bytes:
        """One decrypted message (the library's interface; SecureSession reads in bulk instead)."""
        if not self._cryptography_cipher(encrypting=False):
            return await super().read_msg(prefix_encoded)
        plain = bytearray()
        while not self.open_buffered(plain, limit=1):
            await self.receive_more()
        data = bytes(plain)
        return data[len(self.prefix) :] if prefix_encoded else data

    async def read_plaintext(self, plain: bytearray) -> None:
        """Append the plaintext of every complete message received, waiting for at least one."""
        while not self.open_buffered(plain):
            await self.receive_more()

    def open_buffered(self, plain: bytearray, limit: int | None = None) -> int:
        """Decrypt complete buffered messages (up to limit) onto plain; returns how many."""
        raw, at, opened = self._raw, 0, 0
        state = self.noise_state.noise_protocol.cipher_state_decrypt
        with memoryview(raw) as view:
            while len(raw) - at >= NOISE_LENGTH.size and (limit is None or opened < limit):
                (size,) = NOISE_LENGTH.unpack_from(raw, at)
                end = at + NOISE_LENGTH.size + size
                if end > len(raw):
                    break
                plain += _open(state, view[at + NOISE_LENGTH.size : end])
                at, opened = end, opened + 1
        if at:
            del raw[:at]
        return opened

    async def receive_more(self) -> None:
        """Read what the socket has (up to RECV_BYTES). Raises IncompleteReadError at its end."""
        data = await self.read_writer.read_write_closer.read(RECV_BYTES)
        if not data:
            pending = len(self._raw)
            raise IncompleteReadError(
                f"Connection closed during read operation: {pending} bytes of a Noise message received",
                expected_bytes=NOISE_LENGTH.size,
                received_bytes=pending,
            )
        self._raw += data

    def _cryptography_cipher(self, *, encrypting: bool) -> bool:
        """Whether this connection's cipher is one the fast path drives (always, with noiseprotocol)."""
        protocol = self.noise_state.noise_protocol
        state = protocol.cipher_state_encrypt if encrypting else protocol.cipher_state_decrypt
        return state.has_key() and hasattr(state.cipher.cipher, "encrypt_into")


def _next_nonce(state: Any) -> bytes:
    """The cipher state's nonce, advanced as noiseprotocol's own encrypt/decrypt do."""
    if state.n == MAX_NONCE:
        raise NoiseMaxNonceError("Nonce has depleted!")
    nonce = state.cipher.format_nonce(state.n)
    state.n += 1
    return nonce


def _open(state: Any, ciphertext: memoryview) -> bytes:
    if state.n == MAX_NONCE:
        raise NoiseMaxNonceError("Nonce has depleted!")
    try:
        plain = state.cipher.cipher.decrypt(state.cipher.format_nonce(state.n), ciphertext, None)
    except InvalidTag as e:  # as noiseprotocol: the nonce is not used up by a forged message
        raise NoiseInvalidMessage("Failed authentication of message") from e
    state.n += 1
    return plain


class FastSecureSession(SecureSession):
    """SecureSession that serves reads from all the plaintext decrypted so far.

    The library decrypts one message per read and copies it through a BytesIO and a bytearray;
    a 12-byte Yamux header read could cost a socket read. Same results: exactly n bytes (fewer
    only if the connection ends mid-way), or everything buffered for n=None.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._plain = bytearray()

    async def read(self, n: int | None = None) -> bytes:
        conn = self.conn
        if not isinstance(conn, FastNoiseReadWriter) or not conn._cryptography_cipher(encrypting=False):
            return await super().read(n)
        if n == 0:
            return b""
        plain = self._plain
        while not plain or (n is not None and len(plain) < n):
            try:
                await conn.read_plaintext(plain)
            except IncompleteReadError:
                if not plain:
                    raise
                break  # the connection ended: what arrived before goes out first
        if n is None or n >= len(plain):
            data = bytes(plain)
            plain.clear()
            return data
        with memoryview(plain) as view:
            data = bytes(view[:n])
        del plain[:n]  # cheap: bytearray drops from the front without moving the rest
        return data

    async def write(self, data: bytes) -> None:
        await self.conn.write_msg(data)


# ---- Yamux --------------------------------------------------------------------------------------


async def read_exactly(reader: Any, n: int, retry_count: int = 100) -> bytes:
    """libp2p.io.utils.read_exactly without its two copies when the first read has it all."""
    data = await reader.read(n)
    if len(data) == n:
        return data
    buffer = bytearray(data)
    for _ in range(retry_count):
        if len(buffer) >= n:
            return bytes(buffer)
        buffer += await reader.read(n - len(buffer))
    if len(buffer) >= n:
        return bytes(buffer)
    raise IncompleteReadError(
        f"Connection closed during read operation: expected {n} bytes but received {len(buffer)} bytes",
        expected_bytes=n,
        received_bytes=len(buffer),
    )


async def write_frame(self: _yamux.Yamux, data: bytes | bytearray) -> None:
    """Yamux._write_frame without the per-frame header decoding for a debug log and extra yield."""
    if isinstance(data, bytearray) and not isinstance(
        getattr(self.secured_conn, "conn", None), FastNoiseReadWriter
    ):
        data = bytes(data)  # the library's Noise writer (and maybe others) accepts only bytes
    async with self._write_lock:
        await self.secured_conn.write(data)


async def write_stream(self: _yamux.YamuxStream, data: bytes | bytearray | memoryview) -> None:
    """YamuxStream.write that sends what the window allows (up to WRITE_BATCH_BYTES) per connection write.

    The library sends one frame per write: two lock round trips, a copy and a Noise message each.
    Errors are the library's: MuxedStreamError when closed or when no window credit comes back
    within WINDOW_WAIT_TIMEOUT.
    """
    if self.send_closed:
        raise MuxedStreamError("Stream is closed for sending")
    with memoryview(data) as view:
        total, sent = len(view), 0
        while sent < total:
            frames, size = None, 0
            async with self.rw_lock.write_lock():
                if self.send_closed:
                    raise MuxedStreamError("Stream is closed for sending")
                async with self.window_lock:
                    if self.closed:
                        raise MuxedStreamError("Stream is closed")
                    size = min(self.send_window, total - sent, WRITE_BATCH_BYTES)
                    if size > 0:
                        self.send_window -= size
                        frames = data_frames(self.stream_id, view[sent : sent + size])
            if frames is None:
                self._zero_window_waits += 1
                await _wait_for_window(self)
                continue
            await self.conn._write_frame(frames)
            sent += size


def data_frames(stream_id: int, payload: memoryview) -> bytearray:
    """payload as Yamux DATA frames of at most FRAME_PAYLOAD bytes each, in one buffer."""
    header = struct.Struct(_yamux.YAMUX_HEADER_FORMAT)
    out = bytearray()
    for start in range(0, len(payload), FRAME_PAYLOAD):
        piece = payload[start : start + FRAME_PAYLOAD]
        out += header.pack(0, _yamux.TYPE_DATA, 0, stream_id, len(piece))
        out += piece
    return out


async def _wait_for_window(stream: _yamux.YamuxStream) -> None:
    """Until the peer returns window credit or the stream closes; MuxedStreamError after the timeout."""
    with trio.move_on_after(WINDOW_WAIT_TIMEOUT) as scope:
        while not (stream.send_window > 0 or stream.closed):
            await trio.sleep(WINDOW_POLL_INTERVAL)
    if scope.cancelled_caught:
        raise MuxedStreamError(f"Timed out waiting for window update after {WINDOW_WAIT_TIMEOUT:g} seconds.")
