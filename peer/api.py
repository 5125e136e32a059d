"""The daemon's local HTTP API: a tiny ASGI app served by hypercorn on trio.

Endpoints (JSON unless noted; errors are `{"error": "..."}` with a 4xx code):
  GET  /health                          liveness: {"status": "ok", "peer_id": ...}
  GET  /status                          peer id, version, listen addrs, connected peers, bootstrap
  GET  /peers                           connected peers with their gossip scores
  GET  /metrics                         Prometheus text of this peer's registry
  POST /gossip/publish                  {"topic": "tasks", "body": <json>, "kind"?: str} -> {"msg_id": hex}
  GET  /gossip/received?topic=&since=N  envelopes received on a topic after index N
Ledger endpoints (POST /tx, /query/..., GET /ledger/status) come from `peer.ledger_api` and
market endpoints (/market/...) from `peer.market.api`, added as extra routes; a route ending
in "/" matches every path under it (the handler reads the rest). Errors are
`{"error": "...", "code": "..."}` where a ledger or market error code applies.
It listens on loopback by default and has no authentication; it reads the peer through the
small `PeerView` interface, so it never touches the peer's state directly.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol
from urllib.parse import parse_qs

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from gossip.errors import GossipError, MessageTooLarge
from peer.config import format_host_port, parse_host_port
from peer.errors import PeerError
from peer.logs import get_logger
from peer.metrics import METRICS_CONTENT_TYPE

MAX_REQUEST_BYTES = 1024 * 1024
MAX_RECEIVED_LIMIT = 1000
MAX_KIND_CHARS = 64
DEFAULT_KIND = "message"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class PeerView(Protocol):
    """What the API may ask of the running peer."""

    peer_id: str

    def status(self) -> dict[str, Any]: ...

    def peers(self) -> list[dict[str, Any]]: ...

    def metrics_text(self) -> bytes: ...

    def topic_names(self) -> list[str]: ...

    async def publish(self, topic: str, kind: str, body: Any) -> dict[str, Any]: ...

    def received(self, topic: str, since: int, limit: int) -> list[dict[str, Any]]: ...


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def int_param(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.param(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise HttpError(400, f"query parameter {name!r} must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise HttpError(400, f"query parameter {name!r} must be between {low} and {high}, got {value}")
        return value

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HttpError(400, f"request body is not valid JSON: {e}") from None


Response = tuple[int, bytes, str]
Handler = Callable[[Request], Awaitable[Response]]


def json_response(payload: Any, status: int = 200) -> Response:
    return status, json.dumps(payload, default=str).encode(), "application/json"


class ApiApp:
    """ASGI application over a `PeerView`."""

    def __init__(
        self,
        view: PeerView,
        logger: structlog.stdlib.BoundLogger | None = None,
        extra_routes: Mapping[str, Mapping[str, Handler]] | None = None,
    ) -> None:
        self.view = view
        self.log = logger or get_logger("hivemesh.api")
        self.routes: dict[str, Mapping[str, Handler]] = {
            "/health": {"GET": self.health},
            "/status": {"GET": self.status},
            "/peers": {"GET": self.peers},
            "/metrics": {"GET": self.metrics},
            "/gossip/publish": {"POST": self.publish},
            "/gossip/received": {"GET": self.received},
        }
        self.routes.update(extra_routes or {})
        # "/query/block/" style routes, longest first so the most specific one wins.
        self.prefixes = sorted((r for r in self.routes if r.endswith("/")), key=len, reverse=True)

    def _route(self, path: str) -> Mapping[str, Handler] | None:
        exact = self.routes.get(path.rstrip("/") or "/")
        if exact is not None:
            return exact
        under = (p for p in self.prefixes if path.startswith(p) and len(path) > len(p))
        return next((self.routes[p] for p in under), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        extra_headers: list[tuple[bytes, bytes]] = []
        try:
            methods = self._route(scope["path"])
            if methods is None:
                raise HttpError(404, f"no such endpoint: {scope['path']}")
            handler = methods.get(scope["method"])
            if handler is None:
                extra_headers.append((b"allow", ", ".join(methods).encode()))
                raise HttpError(
                    405, f"{scope['method']} not allowed on {scope['path']} (use {', '.join(methods)})"
                )
            body = await _read_body(receive)
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            status, payload, content_type = await handler(
                Request(scope["method"], scope["path"], query, body)
            )
        except HttpError as e:
            error = {"error": e.message} if e.code is None else {"error": e.message, "code": e.code}
            status, payload, content_type = json_response(error, e.status)
        except Exception:
            self.log.exception("api request failed", path=scope.get("path"), method=scope.get("method"))
            status, payload, content_type = json_response(
                {"error": "internal error; see the daemon log"}, 500
            )
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers + extra_headers})
        await send({"type": "http.response.body", "body": payload})

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok", "peer_id": self.view.peer_id})

    async def status(self, request: Request) -> Response:
        return json_response(self.view.status())

    async def peers(self, request: Request) -> Response:
        return json_response(self.view.peers())

    async def metrics(self, request: Request) -> Response:
        return 200, self.view.metrics_text(), METRICS_CONTENT_TYPE

    def _topic(self, topic: Any) -> str:
        names = self.view.topic_names()
        if not isinstance(topic, str) or topic not in names:
            raise HttpError(400, f"unknown topic {topic!r}; known topics: {', '.join(names)}")
        return topic

    async def publish(self, request: Request) -> Response:
        req = request.json()
        if not isinstance(req, dict):
            raise HttpError(400, 'request body must be a JSON object: {"topic": ..., "body": ...}')
        unknown = set(req) - {"topic", "body", "kind"}
        if unknown:
            raise HttpError(400, f"unknown field(s) {sorted(unknown)}; allowed: topic, body, kind")
        topic = self._topic(req.get("topic"))
        if "body" not in req:
            raise HttpError(400, "missing field 'body' (any JSON value)")
        kind = req.get("kind", DEFAULT_KIND)
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_CHARS:
            raise HttpError(400, f"'kind' must be a string of 1..{MAX_KIND_CHARS} characters")
        try:
            result = await self.view.publish(topic, kind, req["body"])
        except MessageTooLarge as e:
            raise HttpError(413, str(e)) from None
        except (TypeError, ValueError, OverflowError) as e:
            raise HttpError(400, f"body cannot be encoded: {e}") from None
        except GossipError as e:
            raise HttpError(503, f"publish failed: {e}") from None
        return json_response(result)

    async def received(self, request: Request) -> Response:
        topic = self._topic(request.param("topic"))
        since = request.int_param("since", 0, 0, 2**63)
        limit = request.int_param("limit", MAX_RECEIVED_LIMIT, 1, MAX_RECEIVED_LIMIT)
        return json_response(self.view.received(topic, since, limit))


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise HttpError(413, f"request body over {MAX_REQUEST_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def serve_api(
    app: ApiApp, listen: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve `app` on HOST:PORT (port 0 picks one); `nursery.start` returns the bound HOST:PORT.

    Raises OSError when the address cannot be bound (in use, not local).
    """
    host, port = parse_host_port(listen)
    _check_bindable(host, port)
    config = HypercornConfig()
    config.bind = [format_host_port(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    config.include_server_header = False

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, app, config))
        task_status.started(binds[0].removeprefix("http://"))


def _check_bindable(host: str, port: int) -> None:
    """Fail with the address in the message (hypercorn's own error does not name it)."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as e:
        raise PeerError(
            f"cannot serve the API on {format_host_port(host, port)}: {e.strerror or e}"
        ) from None
    finally:
        probe.close()
