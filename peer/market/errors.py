"""Errors of the market agents: one line each, with the HTTP status and code the API answers with."""

from __future__ import annotations


class MarketError(Exception):
    """A market request that cannot be done (bad input, unknown thing, wrong state)."""

    status = 400
    code = "market_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class NotFound(MarketError):
    status = 404
    code = "not_found"


class BadRequest(MarketError):
    code = "bad_request"


class TxFailed(MarketError):
    """A market tx was refused or committed as failed; `code` is the ledger's error code."""

    status = 409


class ResultMismatch(MarketError):
    """A result blob that does not match what the solver committed on the ledger."""

    status = 502
    code = "result_mismatch"


class Unavailable(MarketError):
    """Something the request needs cannot be had right now (no peer serves it, market starting)."""

    status = 503
    code = "unavailable"
