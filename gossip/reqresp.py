"""Request/response over transport streams: one stream per request, msgpack bodies.

Wire: the client opens a stream for the protocol, writes one length-prefixed frame holding
the msgpack request and half-closes; the server answers with one frame holding
{"ok": body} or {"err": "message"} and closes. Every read, write and handler call runs
under a deadline, because a frozen peer never produces an error by itself.

Error handling: the server never lets a remote crash it. An oversized request, malformed
msgpack or a peer that opens a stream and stays silent gets the stream closed and
`on_misbehaviour(peer, reason)` called; the client raises DialError (unreachable),
ProtocolNotSupported, StreamBroken (reset, closed or timed out), RemoteError (the handler
answered with an error), MessageTooLarge (response over max_response) or InvalidMessage
(the server sent garbage, which is also reported as misbehaviour).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from gossip.envelope import packb, unpackb
from gossip.errors import GossipError, InvalidMessage, MessageTooLarge, StreamBroken
from gossip.framing import read_frame, write_frame
from gossip.transport import ByteStream, PeerId, Transport

log = structlog.get_logger(__name__)

Handler = Callable[[PeerId, Any], Awaitable[Any]]
_CLOSE_TIMEOUT = 2.0


class RemoteError(GossipError):
    """The remote handler answered with an error."""

    def __init__(self, peer: PeerId, protocol: str, message: str) -> None:
        super().__init__(f"{peer} answered {protocol} with an error: {message}")
        self.peer, self.protocol, self.remote_message = peer, protocol, message


@dataclass(frozen=True, slots=True)
class _Registered:
    handler: Handler
    max_request: int


class RequestResponse:
    """Client and server of request/response protocols on one transport.

    Args:
        transport: where streams are opened and served.
        on_misbehaviour: called with (peer, reason) when a peer sends garbage, oversized
            frames or nothing at all; the node turns this into a score penalty.
        timeout: server-side deadline (seconds) for each of: reading the request, running
            the handler, writing the response.
    """

    def __init__(
        self,
        transport: Transport,
        on_misbehaviour: Callable[[PeerId, str], None] | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.transport = transport
        self.on_misbehaviour = on_misbehaviour
        self.timeout = timeout
        self._handlers: dict[str, _Registered] = {}

    def _misbehaved(self, peer: PeerId, reason: str) -> None:
        log.info("request/response misbehaviour", peer=peer, reason=reason)
        if self.on_misbehaviour is not None:
            self.on_misbehaviour(peer, reason)

    # -- server ----------------------------------------------------------------------------

    def set_handler(self, protocol: str, handler: Handler, *, max_request: int = 1 << 20) -> None:
        """Serve protocol: handler(peer, request_body) returns the response body.

        A handler signals a refusal by raising GossipError; its message goes back to the
        client as RemoteError. Any other exception is logged and answered "internal error".
        """
        self._handlers[protocol] = _Registered(handler, max_request)

        async def serve_stream(stream: ByteStream) -> None:
            await self._serve(protocol, stream)

        self.transport.set_stream_handler(protocol, serve_stream)

    async def _serve(self, protocol: str, stream: ByteStream) -> None:
        peer = stream.remote_peer
        registered = self._handlers[protocol]
        try:
            reply = await self._answer(protocol, peer, stream, registered)
            if reply is not None:
                await write_frame(stream, reply, timeout=self.timeout)
        except StreamBroken:
            pass  # the client went away; nothing to answer
        finally:
            await _close_quietly(stream)

    async def _answer(
        self, protocol: str, peer: PeerId, stream: ByteStream, registered: _Registered
    ) -> bytes | None:
        """The response frame to send, or None when the stream is beyond answering."""
        with trio.move_on_after(self.timeout) as read_scope:
            try:
                raw = await read_frame(stream, registered.max_request, timeout=math.inf)
            except MessageTooLarge as e:
                self._misbehaved(peer, f"oversized {protocol} request: {e}")
                return _error(f"request too large: {e}")
        if read_scope.cancelled_caught:
            self._misbehaved(peer, f"sent no {protocol} request within {self.timeout}s")
            return None
        try:
            body = unpackb(raw, max_bytes=registered.max_request)
        except InvalidMessage as e:
            self._misbehaved(peer, f"malformed {protocol} request: {e}")
            return _error(f"malformed request: {e}")
        with trio.move_on_after(self.timeout) as handler_scope:
            try:
                result = await registered.handler(peer, body)
            except GossipError as e:
                return _error(str(e))
            except Exception as e:
                # A handler tripping over hostile input must not take the peer down.
                log.error("request handler failed", protocol=protocol, peer=peer, exc_info=e)
                return _error(f"internal error handling {protocol}")
        if handler_scope.cancelled_caught:
            return _error(f"{protocol} handler timed out after {self.timeout}s")
        try:
            return packb({"ok": result})
        except (TypeError, ValueError, OverflowError) as e:
            log.error("response not serialisable", protocol=protocol, exc_info=e)
            return _error(f"internal error encoding the {protocol} response")

    # -- client ----------------------------------------------------------------------------

    async def request(
        self, peer: PeerId, protocol: str, body: Any, *, timeout: float = 10.0, max_response: int = 16 << 20
    ) -> Any:
        """Send body to peer's protocol handler and return its response body.

        The whole exchange (dial, write, wait, read) finishes within timeout seconds.
        Raises DialError, ProtocolNotSupported, StreamBroken, RemoteError, MessageTooLarge,
        InvalidMessage (see the module docstring).
        """
        payload = packb(body)
        deadline = trio.current_time() + timeout

        def remaining() -> float:
            left = deadline - trio.current_time()
            if left <= 0:
                raise StreamBroken(f"{protocol} request to {peer} timed out after {timeout}s")
            return left

        stream = await self.transport.open_stream(peer, protocol, timeout=timeout)
        try:
            try:
                await write_frame(stream, payload, timeout=remaining())
                await stream.send_eof()
                raw = await read_frame(stream, max_response, timeout=remaining())
            except StreamBroken as e:
                raise StreamBroken(f"{protocol} request to {peer} failed: {e}") from e
        finally:
            await _close_quietly(stream)
        try:
            reply = unpackb(raw, max_bytes=max_response)
        except InvalidMessage as e:
            self._misbehaved(peer, f"malformed {protocol} response: {e}")
            raise InvalidMessage(f"malformed {protocol} response from {peer}: {e}") from e
        if isinstance(reply, dict) and len(reply) == 1:
            if "ok" in reply:
                return reply["ok"]
            if isinstance(reply.get("err"), str):
                raise RemoteError(peer, protocol, reply["err"])
        self._misbehaved(peer, f"{protocol} response is not {{ok: ...}} or {{err: str}}")
        raise InvalidMessage(f"{protocol} response from {peer} is not {{ok: ...}} or {{err: str}}")


def _error(message: str) -> bytes:
    return packb({"err": message})


async def _close_quietly(stream: ByteStream) -> None:
    # Shielded so a cancelled caller still releases the stream, bounded so a frozen peer cannot hold us.
    with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
        try:
            await stream.aclose()
        except (GossipError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
