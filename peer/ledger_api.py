"""Ledger endpoints of the local API: submit txs, wait for commit, query committed state.

  POST /tx        {"type", "body", "fee"?, "wait"?: true, "timeout"?: s}  signed by the node key
                  -> {"tx_hash", "nonce", "fee", "committed", "height", "index", "ok", "code", "message"}
  POST /tx/raw    {"tx": hex, "wait"?: false, "timeout"?}   an externally signed tx
                  or {"txs": [hex, ...]} (no wait) -> {"results": [{"tx_hash"} | {"error", "code"}]}
  GET  /ledger/status                  height, last block hash, app hash, chain id, mempool size
  GET  /query/account/<addr>           balance, nonce, roles, stake, delegations, unbonding
  GET  /query/balance/<addr>
  GET  /query/block/<height|latest>    header, hash, tx hashes
  GET  /query/validators
  GET  /query/tx/<hash>                height, index and receipt of a committed tx

Errors are `{"error": message, "code": code}`: ledger rejections carry the ledger's error code
(400, 404 for unknown things, 409 duplicate, 503 mempool full), malformed requests 400, a
commit that does not arrive in time 504 (with "tx_hash"), a peer without a genesis 503.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ledger.errors import LedgerError
from peer.api import Handler, HttpError, Request, Response, json_response
from peer.ledger_service import DEFAULT_WAIT_S, CommitTimeout, LedgerService, QueryError

MAX_WAIT_S = 600.0
MAX_BATCH = 5_000
_NOT_FOUND = frozenset({"unknown_account", "unknown_validator", "unknown_delegation", "unknown_proposal"})
_STATUS = {"duplicate_tx": 409, "mempool_full": 503}


def ledger_status_code(error: LedgerError) -> int:
    return 404 if error.code in _NOT_FOUND else _STATUS.get(error.code, 400)


def _guard(call: Callable[[Request], Awaitable[Response]]) -> Handler:
    """Turn the ledger's and the service's errors into JSON error responses."""

    async def handler(request: Request) -> Response:
        try:
            return await call(request)
        except LedgerError as e:
            raise HttpError(ledger_status_code(e), str(e), e.code) from None
        except QueryError as e:
            raise HttpError(e.status, e.message, e.code) from None
        except CommitTimeout as e:
            payload = {"error": str(e), "code": "commit_timeout", "tx_hash": e.tx_hash}
            return 504, json.dumps(payload).encode(), "application/json"

    return handler


def _object(request: Request, allowed: set[str]) -> dict[str, Any]:
    req = request.json()
    if not isinstance(req, dict):
        raise HttpError(400, "request body must be a JSON object")
    unknown = set(req) - allowed
    if unknown:
        raise HttpError(400, f"unknown field(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return req


def _flag(req: dict[str, Any], name: str, default: bool) -> bool:
    value = req.get(name, default)
    if not isinstance(value, bool):
        raise HttpError(400, f"{name!r} must be true or false")
    return value


def _timeout(req: dict[str, Any]) -> float:
    value = req.get("timeout", DEFAULT_WAIT_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_WAIT_S:
        raise HttpError(400, f"'timeout' must be a number of seconds in (0, {MAX_WAIT_S:g}]")
    return float(value)


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise HttpError(400, f"{what} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise HttpError(400, f"{what} is not valid hex", "invalid_tx") from None


def _tail(request: Request, prefix: str) -> str:
    return request.path[len(prefix) :].strip("/")


class LedgerRoutes:
    """The ledger's routes over a `LedgerService`; every one answers 503 when the peer has no ledger."""

    def __init__(self, service: LedgerService | None) -> None:
        self.service = service

    def routes(self) -> Mapping[str, Mapping[str, Handler]]:
        return {
            "/tx": {"POST": _guard(self.tx)},
            "/tx/raw": {"POST": _guard(self.tx_raw)},
            "/ledger/status": {"GET": _guard(self.status)},
            "/query/validators": {"GET": _guard(self.validators)},
            "/query/account/": {"GET": _guard(self.account)},
            "/query/balance/": {"GET": _guard(self.balance)},
            "/query/block/": {"GET": _guard(self.block)},
            "/query/tx/": {"GET": _guard(self.tx_query)},
        }

    @property
    def _ledger(self) -> LedgerService:
        if self.service is None:
            raise HttpError(
                503,
                "this peer runs no ledger: its home has no genesis.json (see `hivemesh init --genesis`)",
                "no_ledger",
            )
        return self.service

    async def tx(self, request: Request) -> Response:
        ledger = self._ledger
        req = _object(request, {"type", "body", "fee", "wait", "timeout"})
        tx_type, body, fee = req.get("type"), req.get("body"), req.get("fee")
        if not isinstance(tx_type, str):
            raise HttpError(400, "missing field 'type' (e.g. \"transfer\")")
        if not isinstance(body, dict):
            raise HttpError(400, 'missing field \'body\' (a JSON object, e.g. {"to": ..., "amount": ...})')
        if fee is not None and (isinstance(fee, bool) or not isinstance(fee, int) or fee < 0):
            raise HttpError(400, "'fee' must be a non-negative integer")
        result = await ledger.submit_own(
            tx_type, body, fee, wait=_flag(req, "wait", True), timeout=_timeout(req)
        )
        return json_response(result)

    async def tx_raw(self, request: Request) -> Response:
        ledger = self._ledger
        req = _object(request, {"tx", "txs", "wait", "timeout"})
        if "txs" in req:
            txs = req["txs"]
            if "tx" in req or "wait" in req or not isinstance(txs, list) or not 0 < len(txs) <= MAX_BATCH:
                raise HttpError(
                    400, f"'txs' must be a list of 1..{MAX_BATCH} hex txs, without 'tx' or 'wait'"
                )
            data = [_hex(t, f"txs[{i}]") for i, t in enumerate(txs)]
            return json_response({"results": await ledger.submit_many(data)})
        data_one = _hex(req.get("tx"), "'tx'")
        result = await ledger.submit_raw(data_one, wait=_flag(req, "wait", False), timeout=_timeout(req))
        return json_response(result)

    async def status(self, request: Request) -> Response:
        return json_response(self._ledger.status())

    async def validators(self, request: Request) -> Response:
        return json_response(self._ledger.validators())

    async def account(self, request: Request) -> Response:
        return json_response(self._ledger.account(_tail(request, "/query/account/")))

    async def balance(self, request: Request) -> Response:
        return json_response(self._ledger.balance(_tail(request, "/query/balance/")))

    async def block(self, request: Request) -> Response:
        ledger = self._ledger
        raw = _tail(request, "/query/block/")
        if raw == "latest":
            return json_response(ledger.block(None))
        if not raw.isdigit():
            raise HttpError(400, f"block height must be a number or 'latest', got {raw!r}", "invalid_height")
        return json_response(ledger.block(int(raw)))

    async def tx_query(self, request: Request) -> Response:
        return json_response(self._ledger.tx(_tail(request, "/query/tx/")))
