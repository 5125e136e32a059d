"""Adapts py-libp2p streams to our ByteStream protocol and maps libp2p errors to ours.

libp2p raises a wide zoo of exceptions (StreamEOF, StreamReset, StreamFailure,
SwarmException, MultiselectClientError, raw OSErrors from below) and a frozen peer makes
read and write block forever. Everything that touches an INetStream goes through here: every
operation has a deadline, EOF becomes b"", and anything else becomes StreamBroken, DialError
or ProtocolNotSupported. Stream handlers are wrapped so an exception in one never reaches
libp2p's own tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.host.exceptions import StreamFailure
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import MultiselectClientError, ProtocolNotSupportedError

from gossip.errors import DialError, GossipError, ProtocolNotSupported, StreamBroken
from gossip.transport import PeerId, StreamHandler

log = logging.getLogger(__name__)

# No single read or write may block longer than this: a frozen peer never errors by itself.
DEFAULT_STREAM_IO_TIMEOUT = 60.0
# A graceful close that takes longer than this is turned into a reset.
CLOSE_TIMEOUT = 2.0

Libp2pHandler = Callable[[INetStream], Awaitable[None]]


def parse_peer_id(peer: PeerId) -> ID:
    """Raises DialError for anything that is not a base58 peer id."""
    try:
        return ID.from_base58(peer)
    except Exception as e:  # base58 / multihash raise assorted ValueErrors
        raise DialError(f"not a peer id: {peer!r}") from e


class Libp2pStream:
    """A ByteStream over one libp2p INetStream (Yamux), with a deadline on every operation."""

    def __init__(self, stream: INetStream, io_timeout: float = DEFAULT_STREAM_IO_TIMEOUT) -> None:
        self._stream = stream
        self._io_timeout = io_timeout
        self._closed = False
        self.remote_peer: PeerId = stream.muxed_conn.peer_id.to_base58()

    async def send_all(self, data: bytes) -> None:
        if self._closed:
            raise StreamBroken(f"stream to {self.remote_peer} is closed")
        if not data:
            return
        try:
            with trio.fail_after(self._io_timeout):
                await self._stream.write(data)
        except trio.TooSlowError as e:
            raise StreamBroken(f"write to {self.remote_peer} timed out after {self._io_timeout}s") from e
        except Exception as e:  # only the libp2p call is inside: StreamError, OSError, muxer errors
            raise StreamBroken(f"write to {self.remote_peer} failed: {_describe(e)}") from e

    async def receive_some(self, max_bytes: int) -> bytes:
        """Up to max_bytes; b"" at end of stream (a killed peer also looks like EOF)."""
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        if self._closed:
            raise StreamBroken(f"stream to {self.remote_peer} is closed")
        try:
            with trio.fail_after(self._io_timeout):
                return await self._stream.read(max_bytes)
        except StreamEOF:
            return b""
        except trio.TooSlowError as e:
            raise StreamBroken(f"read from {self.remote_peer} timed out after {self._io_timeout}s") from e
        except Exception as e:
            raise StreamBroken(f"read from {self.remote_peer} failed: {_describe(e)}") from e

    async def send_eof(self) -> None:
        """Half close: the remote reads EOF, we can still read its reply."""
        try:
            with trio.fail_after(self._io_timeout):
                await self._stream.close_write()
        except trio.TooSlowError as e:
            raise StreamBroken(f"closing the write side to {self.remote_peer} timed out") from e
        except Exception as e:
            raise StreamBroken(f"closing the write side to {self.remote_peer} failed: {_describe(e)}") from e

    async def aclose(self) -> None:
        """Graceful close, falling back to a reset; idempotent, never raises but Cancelled."""
        if self._closed:
            return
        self._closed = True
        # Shielded but bounded: a cancelled owner must still release the stream.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await self._stream.close()
                    return
                except Exception as e:
                    log.debug("close of stream to %s failed, resetting: %s", self.remote_peer, _describe(e))
            await self._reset_now()

    async def reset(self) -> None:
        """Abort both directions at once (the remote sees StreamBroken)."""
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._reset_now()

    async def _reset_now(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await self._stream.reset()
            except Exception as e:
                log.debug("reset of stream to %s failed: %s", self.remote_peer, _describe(e))


def wrap_handler(protocol: str, handler: StreamHandler, io_timeout: float) -> Libp2pHandler:
    """The libp2p-side handler: our ByteStream in, nothing out; errors logged, stream reset."""

    async def run(net_stream: INetStream) -> None:
        try:
            stream = Libp2pStream(net_stream, io_timeout)
        except Exception as e:  # a stream whose connection vanished before we looked at it
            log.debug("inbound %s stream unusable: %s", protocol, _describe(e))
            return
        finished = False
        try:
            await handler(stream)
            finished = True
        except GossipError as e:  # expected network trouble: bad frames, resets, timeouts
            log.info("%s handler for %s ended: %s", protocol, stream.remote_peer, e)
        except Exception:
            log.exception("%s handler for %s crashed", protocol, stream.remote_peer)
        finally:
            if finished:
                await stream.aclose()
            else:
                await stream.reset()

    return run


async def open_libp2p_stream(
    host: IHost, peer: PeerId, protocol: str, timeout: float, io_timeout: float
) -> Libp2pStream:
    """Open and negotiate a stream. Raises DialError / ProtocolNotSupported, never hangs past timeout."""
    peer_id = parse_peer_id(peer)
    try:
        with trio.fail_after(timeout):
            net_stream = await host.new_stream(peer_id, [TProtocol(protocol)])
    except trio.TooSlowError as e:
        raise DialError(f"opening {protocol} to {peer} timed out after {timeout}s") from e
    except StreamFailure as e:
        if _protocol_rejected(e):
            raise ProtocolNotSupported(f"peer {peer} does not support {protocol}") from e
        raise DialError(f"cannot open {protocol} to {peer}: {_describe(e)}") from e
    except Exception as e:  # SwarmException (not connected, dial failed), OSError, muxer errors
        raise DialError(f"cannot open {protocol} to {peer}: {_describe(e)}") from e
    try:
        return Libp2pStream(net_stream, io_timeout)
    except Exception as e:
        raise DialError(f"stream to {peer} closed during set-up: {_describe(e)}") from e


def _protocol_rejected(error: BaseException) -> bool:
    """True when multistream-select got an explicit "na" for every protocol we offered."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ProtocolNotSupportedError):
            return True
        # The final error after all protocols were refused is a plain MultiselectClientError.
        if isinstance(seen, MultiselectClientError) and str(seen).startswith("protocols not supported"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
