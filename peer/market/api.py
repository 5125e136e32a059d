"""Market endpoints of the local API (added to the daemon's routes like the ledger's).

  GET  /market/status                  readiness, solver policy, what this peer serves
  GET  /market/models                  every registered model (and whether this peer serves it)
  POST /market/models                  {"spec": {...}, "weights_path": "/abs/file.safetensors",
                                        "royalty_bps": N} -> register and serve a model
  GET  /market/jobs?status=&mine=1     jobs on the ledger, oldest first
  POST /market/jobs                    {"model_hash", "kind", "bounty", "spec": {...},
                                        "inputs_path" | "dataset_path", "bid_window_blocks",
                                        "deadline_blocks", "challenge_window_blocks",
                                        "requirements"} -> post a job (see submitter.py)
  GET  /market/jobs/<id>               the job: ledger record, phase, progress, local records
  GET  /market/jobs/<id>/result        the result's output (safetensors bytes), checked
  GET  /market/supply                  where every token is (one committed state)
  GET  /market/verification            this peer's spot checks, disputes, votes and canaries
  GET  /market/trust/<job id>          the job's audit (canary, sample seed, reports) and dispute
  GET  /market/reputation/<address>    reputation per role (the default where never rated)
  GET  /market/repvotes/<vote id>      a reputation vote: phase, commits, reveals, tally

Files are named by path because the API is local: the daemon reads them itself (a weights
file can be far over the API's request limit). Errors are {"error", "code"} with the
market's status (400 bad request, 404 unknown, 409 wrong state, 502 bad result, 503 not
ready or unavailable). This module imports nothing heavy (no torch): the service behind it
is loaded by MarketHost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ledger import audits, disputes
from ledger.disputes import dispute_id_for
from ledger.errors import LedgerError
from ledger.payout import reputation_of
from ledger.repvote import repvote
from ledger.tx import ROLES
from peer.api import Handler, HttpError, Request, Response, json_response
from peer.ledger_api import ledger_status_code
from peer.market.chain import supply
from peer.market.errors import MarketError
from peer.market.host import MarketHost

if TYPE_CHECKING:
    from peer.market.service import MarketService

JOBS = "/market/jobs/"
TRUST = "/market/trust/"
REPUTATION = "/market/reputation/"
REPVOTES = "/market/repvotes/"


def _guard(call: Callable[[Request], Awaitable[Response]]) -> Handler:
    async def handler(request: Request) -> Response:
        try:
            return await call(request)
        except MarketError as e:
            raise HttpError(e.status, e.message, e.code) from None
        except LedgerError as e:
            raise HttpError(ledger_status_code(e), str(e), e.code) from None

    return handler


class MarketRoutes:
    """The market's routes; every one answers 503 while the market is not running here."""

    def __init__(self, host: MarketHost | None) -> None:
        self.host = host

    def routes(self) -> Mapping[str, Mapping[str, Handler]]:
        return {
            "/market/status": {"GET": _guard(self.status)},
            "/market/models": {"GET": _guard(self.models), "POST": _guard(self.register)},
            "/market/jobs": {"GET": _guard(self.jobs), "POST": _guard(self.submit)},
            JOBS: {"GET": _guard(self.job)},
            "/market/supply": {"GET": _guard(self.supply)},
            "/market/verification": {"GET": _guard(self.verification)},
            TRUST: {"GET": _guard(self.trust)},
            REPUTATION: {"GET": _guard(self.reputation)},
            REPVOTES: {"GET": _guard(self.repvote)},
        }

    @property
    def _market(self) -> MarketService:
        if self.host is None:
            raise HttpError(
                503, "this peer runs no ledger, so no market: its home has no genesis.json", "no_ledger"
            )
        if self.host.service is None:
            raise HttpError(503, "the market is starting; try again in a moment", "market_starting")
        return self.host.service

    def _body(self, request: Request) -> dict[str, Any]:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "request body must be a JSON object")
        return body

    async def status(self, request: Request) -> Response:
        if self.host is None:
            return json_response({"ready": False, "reason": "no ledger"})
        return json_response(self.host.status())

    async def models(self, request: Request) -> Response:
        return json_response(self._market.list_models())

    async def register(self, request: Request) -> Response:
        market, body = self._market, self._body(request)
        unknown = sorted(set(body) - {"spec", "weights_path", "royalty_bps"})
        if unknown:
            raise HttpError(400, f"unknown field(s) {unknown}; allowed: spec, weights_path, royalty_bps")
        path, royalty = body.get("weights_path"), body.get("royalty_bps", 0)
        if not isinstance(path, str):
            raise HttpError(400, "'weights_path' must be the path of a safetensors file")
        if isinstance(royalty, bool) or not isinstance(royalty, int) or not 0 <= royalty <= 10_000:
            raise HttpError(400, "'royalty_bps' must be an integer in [0, 10000]")
        return json_response(await market.register_model(body.get("spec"), path, royalty))

    async def jobs(self, request: Request) -> Response:
        mine = request.param("mine") in ("1", "true", "yes")
        return json_response(self._market.submitter.list(request.param("status") or None, mine))

    async def submit(self, request: Request) -> Response:
        market = self._market
        return json_response(await market.submitter.submit(self._body(request)))

    async def job(self, request: Request) -> Response:
        market = self._market
        tail = request.path[len(JOBS) :].strip("/")
        job_id, _, what = tail.partition("/")
        if what == "result":
            output = await market.submitter.result_output(job_id)
            return 200, output, "application/octet-stream"
        if what:
            raise HttpError(404, f"no such endpoint: {request.path}")
        return json_response(market.submitter.view(job_id))

    async def supply(self, request: Request) -> Response:
        return json_response(supply(self._market.ledger.state))

    async def trust(self, request: Request) -> Response:
        state = self._market.ledger.state
        job_id = request.path[len(TRUST) :].strip("/")
        if job_id not in state.jobs:
            raise HttpError(404, f"no job {job_id} on this chain", "unknown_job")
        dispute_id = dispute_id_for(job_id)
        return json_response(
            {
                "height": state.height,
                "audit": audits.audit(state, job_id) if job_id in state.audits else None,
                "dispute": disputes.dispute(state, dispute_id) if dispute_id in state.disputes else None,
            }
        )

    async def reputation(self, request: Request) -> Response:
        state = self._market.ledger.state
        address = request.path[len(REPUTATION) :].strip("/")
        if address not in state.accounts and address not in state.validators:
            raise HttpError(404, f"no account {address} on this chain", "unknown_account")
        roles = {role: reputation_of(state, address, role) for role in ROLES}
        return json_response({"address": address, "height": state.height, "reputation": roles})

    async def repvote(self, request: Request) -> Response:
        state = self._market.ledger.state
        vote_id = request.path[len(REPVOTES) :].strip("/")
        if vote_id not in state.repvotes:
            raise HttpError(404, f"no reputation vote {vote_id} on this chain", "unknown_vote")
        return json_response(repvote(state, vote_id))

    async def verification(self, request: Request) -> Response:
        market = self._market
        return json_response(
            {
                "verifier": market.verifier.status(),
                "challenger": market.challenger.status(),
                "referee": market.referee.status(),
                "canaries": market.canaries.status(),
                "voter": market.voter.status(),
            }
        )
