"""The referee: a validator drawn into a dispute committee re-executes the single unit and votes.

When a dispute reaches phase "referee" (ledger/disputes.py) with this peer on its committee
and no vote from it yet, the referee gathers the job's material (peer/market/challenger.py:
spec, model, the submitter's private input, which inputs.py serves to committee members, and
the solver's result bundle) and re-executes the one unit left:
- a training game bisected over steps (`Dispute.stepwise`): exactly one training step, from
  the state at lo_step whose hash the game agreed on (lo_hash, fetched from the solver or the
  challenger and checked against it; the spec's initial state at step 0) to hi_step, compared
  with the solver's hi_hash (strict) or its state at hi_step within the spec's tolerance;
- a training game whose last checkpoint interval is one step: that step, from the solver's
  proven checkpoint state at lo (the spec's initial state when lo == 0), the same way;
- an inference game: batch hi, compared with the solver's batch hash.
It posts dispute_verdict {honest: "solver"} when the solver's value is what one execution
gives, "challenger" otherwise.

A solver that does not serve the state it must serve (or its result bundle) before
VOTE_MARGIN_BLOCKS before the deadline is judged by what it failed to show: "challenger"
(keeping the data of a disputed job available is the solver's duty,
peer/market/checkpoints.py); the agreed lower state may come from the challenger instead. A
missing private input is the submitter's fault, not either party's: then the referee does
not vote.

Error handling: failures are logged and retried on the next committed state until the vote
is in or the deadline passes; one dispute never stops the actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
import trio

from compute.errors import ComputeError
from gossip.blobs import BlobError
from ledger.disputes import disputes_by
from ledger.records_disputes import Dispute
from ledger.state import State
from peer.market.challenger import Material, check_steps, check_unit, gather
from peer.market.checkpoints import BadCheckpoint, CheckpointError
from peer.market.errors import MarketError, ResultMismatch
from peer.market.inputs import InputUnavailable

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

VOTE_MARGIN_BLOCKS = 3  # vote "challenger" for missing solver data this close to the deadline
GATHER_TIMEOUT_S = 60.0


def verdict_of(ok: bool) -> str:
    """The dispute_verdict value for a re-execution that did (not) give the solver's value."""
    return "solver" if ok else "challenger"


class Referee:
    """The referee actor of one validator peer (see the module docstring)."""

    def __init__(self, market: MarketService) -> None:
        self.market = market
        self.votes: dict[str, str] = {}  # dispute id -> the verdict we posted
        self._busy: set[str] = set()
        self._material: dict[str, Material] = {}

    def status(self) -> dict[str, Any]:
        return {"votes": dict(self.votes), "refereeing": sorted(self._busy)}

    async def run(self) -> None:
        await self.market.watch.each_state(self._scan)

    def _scan(self, state: State, nursery: trio.Nursery) -> None:
        me = self.market.ledger.address
        for dispute_id in disputes_by(state, party=me, active=True):
            d = state.disputes[dispute_id]
            if d.phase != "referee" or me not in dict(d.committee) or me in dict(d.votes):
                continue
            if dispute_id in self._busy or dispute_id in self.votes:
                continue
            self._busy.add(dispute_id)
            nursery.start_soon(self._referee, dispute_id, d)
        for job_id in [
            j for j in self._material if state.jobs.get(j) is None or state.jobs[j].status != "disputed"
        ]:
            self._material.pop(job_id)

    async def _referee(self, dispute_id: str, d: Dispute) -> None:
        try:
            verdict = await self._judge(d)
            if verdict is None:
                return
            await self.market.ledger.send("dispute_verdict", {"dispute_id": dispute_id, "honest": verdict})
            self.votes[dispute_id] = verdict
            log.info(
                "dispute verdict posted",
                dispute=dispute_id[:16],
                unit=d.hi,
                step=d.hi_step,
                steps=d.hi_step - d.lo_step,
                honest=verdict,
            )
        except (MarketError, ComputeError, BlobError, OSError) as e:
            log.warning("cannot referee a dispute", dispute=dispute_id[:16], error=str(e))
        finally:
            self._busy.discard(dispute_id)

    async def _judge(self, d: Dispute) -> str | None:
        """The verdict on the last unit (step hi_step, or batch hi), or None to try again later."""
        market = self.market
        late = market.ledger.height >= d.due_height - VOTE_MARGIN_BLOCKS
        try:
            m = self._material.get(d.job_id)
            if m is None:
                job = market.ledger.job(d.job_id)
                assert job is not None
                m = await gather(market, job, timeout=GATHER_TIMEOUT_S)
                self._material[d.job_id] = m
            if d.stepwise:
                holders = [d.solver, d.challenger]
                check, _ = await check_steps(market, m, d.lo_step, d.lo_hash, d.hi_step, d.hi_hash, holders)
                ok = check.ok
            else:
                ok, _ = await check_unit(market, m, d.lo, d.hi, d.hi_hash)
        except InputUnavailable as e:
            log.info("no input to referee with: not voting yet", job=d.job_id[:16], error=str(e))
            return None
        except (BadCheckpoint, ResultMismatch) as e:
            log.info(
                "the solver served data that contradicts its commitment", job=d.job_id[:16], error=str(e)
            )
            return "challenger"
        except (CheckpointError, MarketError) as e:
            if late:
                log.info("the solver's data is still missing: ruling for the challenger", job=d.job_id[:16])
                return "challenger"
            log.info("referee data not available yet", job=d.job_id[:16], error=str(e))
            return None
        return verdict_of(ok)
