"""HTTP client of a running peer's local API, used by the CLI's read commands.

The API address comes from `--api HOST:PORT` or from the home's run.json. Every failure
becomes a `PeerError` with one line saying what to do: no run.json, nothing listening,
a stale run.json left by a killed daemon, a 4xx/5xx from the daemon.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from peer.config import format_host_port, parse_host_port
from peer.errors import ApiError, ConfigError, DaemonNotRunning
from peer.home import Home, read_run_info
from peer.procs import pid_alive

DEFAULT_TIMEOUT = 10.0


def api_url(home: Home, api: str | None = None) -> str:
    """Base URL of the daemon's API: --api wins, else the home's run.json."""
    if api:
        try:
            host, port = parse_host_port(api)
        except ValueError as e:
            raise ConfigError(f"--api: {e}") from None
        return f"http://{format_host_port(host, port)}"
    info = read_run_info(home)
    if info is None:
        raise DaemonNotRunning(
            f"no hivemesh daemon is running for home {home.root} (no run.json); "
            f"start one with `hivemesh run`, or pass --api HOST:PORT"
        )
    if not pid_alive(info.pid):
        raise DaemonNotRunning(
            f"the daemon for home {home.root} (pid {info.pid}) is not running any more (stale run.json); "
            f"start it with `hivemesh run`"
        )
    return info.api_url


class ApiClient:
    """Synchronous JSON client of one daemon."""

    def __init__(self, base_url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise DaemonNotRunning(
                f"no hivemesh daemon answers at {self.base_url}; start one with `hivemesh run`"
            ) from None
        except httpx.TimeoutException:
            raise DaemonNotRunning(f"the daemon at {self.base_url} did not answer in time") from None
        except httpx.RemoteProtocolError as e:
            raise DaemonNotRunning(f"the daemon at {self.base_url} closed the connection: {e}") from None
        except httpx.HTTPError as e:
            raise DaemonNotRunning(f"cannot talk to the daemon at {self.base_url}: {e}") from None
        if response.status_code >= 400:
            code = None
            try:
                payload = response.json()
                message = str(payload.get("error", response.text))
                code = payload.get("code") if isinstance(payload.get("code"), str) else None
            except (ValueError, AttributeError):
                message = response.text.strip() or response.reason_phrase
            raise ApiError(response.status_code, message, code)
        return response

    def get_json(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post_json(self, path: str, payload: Any) -> Any:
        return self.request("POST", path, json=payload).json()

    def health(self) -> dict[str, Any]:
        return dict(self.get_json("/health"))

    def status(self) -> dict[str, Any]:
        return dict(self.get_json("/status"))

    def peers(self) -> list[dict[str, Any]]:
        return list(self.get_json("/peers"))

    def metrics(self) -> str:
        return self.request("GET", "/metrics").text

    def publish(self, topic: str, body: Any, kind: str | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"topic": topic, "body": body}
        if kind is not None:
            payload["kind"] = kind
        return dict(self.post_json("/gossip/publish", payload))

    def received(self, topic: str, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        return list(self.get_json("/gossip/received", topic=topic, since=since, limit=limit))

    # ---- ledger ------------------------------------------------------------------------------

    def submit(
        self,
        tx_type: str,
        body: dict[str, Any],
        *,
        fee: int | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Have the daemon sign `tx_type` with its key and submit it (POST /tx)."""
        payload: dict[str, Any] = {"type": tx_type, "body": body, "wait": wait}
        if fee is not None:
            payload["fee"] = fee
        if timeout is not None:
            payload["timeout"] = timeout
        return dict(self.post_json("/tx", payload))

    def submit_raw(self, tx: bytes, *, wait: bool = False) -> dict[str, Any]:
        return dict(self.post_json("/tx/raw", {"tx": tx.hex(), "wait": wait}))

    def ledger_status(self) -> dict[str, Any]:
        return dict(self.get_json("/ledger/status"))

    def query(self, what: str, arg: str | int | None = None) -> Any:
        """GET /query/<what>[/<arg>]: account, balance, block, validators, tx."""
        path = f"/query/{what}" if arg is None else f"/query/{what}/{quote(str(arg), safe='')}"
        return self.get_json(path)
