"""The verifier agent: spot-check committed results, report, and dispute the wrong ones.

Runs when the peer's config says `verifier = true` and its account holds the "verifier" role
(`hivemesh tx register verifier`). On every committed state it looks for jobs whose sample
seed is drawn (ledger/audits.py) that it may report on: "committed", not solved or submitted
by this peer, not reported by it yet, canary not revealed. For each one (a task per job):

1. gather the material (peer/market/challenger.py: spec, model, private input from the
   submitter, the solver's result bundle checked against its commitment);
2. re-run the units `sampled_leaves` picks with `ledger.randomness.sample_indices`: the job's
   seed, the label "<job id>/<this verifier's address>" (so two verifiers check independent
   samples and together catch more than one), and the rate the ledger fixed (or `min_rate_bps`
   when higher: the sample then grows to a superset, because the draw is a prefix of one
   shuffle). Inference unit i: batch i (leaf i). Training unit s: the segment from checkpoint s
   to s + 1 (checked at leaf s + 1), started from the solver's proven state at s; when the
   solver does not serve that state: in strict mode from the spec's initial state (bitwise
   anyway), in tolerant mode the check is tried again later (re-running a whole prefix
   accumulates drift that would accuse an honest solver);
3. post verify_report {"ok" | "bad"} with the seed it used;
4. on "bad": open a dispute (challenger.py) claiming the first bad leaf with the hash it
   recomputed there, and hand the voter first-hand evidence against the solver.

`behaviour = "lazy"` is a test behaviour (peer/market/behaviours.py): it reports "ok" at once
without running anything, which canaries and disputes must catch.

Error handling: a job whose material or checks fail (no input, unreachable solver, compute
error) gets no report (a wrong "ok" would cost the bond); it is logged and not retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio

from compute.errors import ComputeError
from compute.jobs import InferenceSpec
from compute.verify import check_batches
from gossip.blobs import BlobError
from ledger.params import BPS
from ledger.randomness import sample_indices
from ledger.state import State
from peer.market.challenger import (
    GATHER_TIMEOUT_S,
    Challenger,
    Material,
    check_segment_from,
    gather,
    on_executor,
)
from peer.market.checkpoints import CheckpointError
from peer.market.errors import MarketError, TxFailed

if TYPE_CHECKING:
    from peer.market.service import MarketService
    from peer.market.voter import Voter

log = structlog.get_logger(__name__)

MAX_CONCURRENT_CHECKS = 4
MAX_RECORDS = 1000
# A check that could not run (solver or submitter unreachable for a moment, a blob not yet
# served) is tried again while the job is still in its challenge window and not yet reported.
RETRY_FIRST_S, RETRY_MAX_S, RETRY_ATTEMPTS = 1.0, 8.0, 6


@dataclass
class Check:
    """One spot check of this verifier (the API shows them)."""

    job_id: str
    phase: str = "checking"  # -> "reported", "disputed" or "failed"
    verdict: str = ""
    items: tuple[int, ...] = ()
    bad_index: int = -1
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "phase": self.phase,
            "verdict": self.verdict,
            "items": list(self.items),
            "bad_index": self.bad_index,
            "error": self.error,
        }


def sampled_leaves(
    seed: bytes, job_id: str, verifier: str, training: bool, n_leaves: int, rate_bps: int
) -> list[int]:
    """The leaf indices a verifier checks: batches for inference, segment ends for training."""
    label = f"{job_id}/{verifier}"
    if not training:
        return sample_indices(seed, label, n_leaves, rate_bps)
    return [s + 1 for s in sample_indices(seed, label, max(0, n_leaves - 1), rate_bps)]


def segments_for(items: list[int]) -> list[tuple[int, int]]:
    """The (lo, hi) training segments that re-check sampled checkpoints `items`, in order."""
    return sorted({(max(i, 1) - 1, max(i, 1)) for i in items})


def effective_rate(ledger_rate_bps: int, min_rate_bps: int) -> int:
    return min(BPS, max(ledger_rate_bps, min_rate_bps))


class Verifier:
    """The verifier actor of one peer (see the module docstring)."""

    def __init__(
        self,
        market: MarketService,
        challenger: Challenger,
        *,
        enabled: bool,
        behaviour: str = "honest",
        voter: Voter | None = None,
        min_rate_bps: int = 0,
        gather_timeout: float = GATHER_TIMEOUT_S,
    ) -> None:
        self.market, self.challenger, self.voter = market, challenger, voter
        self.gather_timeout = gather_timeout  # how long one attempt waits for a job's material
        self.enabled, self.behaviour, self.min_rate_bps = enabled, behaviour, min_rate_bps
        self.checks: dict[str, Check] = {}  # job id -> check; written by the job's task
        self._limit = trio.CapacityLimiter(MAX_CONCURRENT_CHECKS)
        self._warned = False

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "behaviour": self.behaviour,
            "registered": self.market.ledger.has_role("verifier"),
            "checks": [c.to_json() for c in self.checks.values()],
        }

    async def run(self) -> None:
        if not self.enabled:
            return  # (a cheating test behaviour is logged by the service at start-up)
        await self.market.watch.each_state(self._scan)

    def _scan(self, state: State, nursery: trio.Nursery) -> None:
        me = self.market.ledger.address
        acct = state.accounts.get(me)
        if acct is None or not acct.has_role("verifier"):
            if not self._warned:
                log.info("not verifying: this account is not a verifier (hivemesh tx register verifier)")
                self._warned = True
            return
        for job_id, audit in sorted(state.audits.items()):
            job = state.jobs.get(job_id)
            if job is None or job.status != "committed" or not audit.sample_seed or audit.canary_expected:
                continue
            if job_id in self.checks or me in (job.solver, job.submitter) or (job_id, me) in state.reports:
                continue
            if len(self.checks) >= MAX_RECORDS:  # forget the oldest finished check
                done = next((j for j, c in self.checks.items() if c.phase != "checking"), None)
                if done is None:
                    return
                del self.checks[done]
            self.checks[job_id] = Check(job_id)
            nursery.start_soon(self._check, job_id, audit.sample_seed, audit.sample_rate_bps)

    async def _check(self, job_id: str, seed: bytes, rate_bps: int) -> None:
        check = self.checks[job_id]
        try:
            if self.behaviour == "lazy":
                await self._report(job_id, "ok", seed)  # test behaviour: no re-execution at all
                check.phase, check.verdict = "reported", "ok"
                return
            for attempt in range(RETRY_ATTEMPTS):
                try:
                    async with self._limit:
                        await self._honest_check(check, seed, rate_bps, last=attempt + 1 == RETRY_ATTEMPTS)
                    return
                except (MarketError, ComputeError, BlobError, OSError) as e:
                    retry = check.phase == "checking" and attempt + 1 < RETRY_ATTEMPTS
                    check.error = str(e)
                    log.warning("spot check failed to run", job=job_id[:16], error=str(e), retry=retry)
                    if not retry:
                        raise
                await trio.sleep(min(RETRY_MAX_S, RETRY_FIRST_S * 2**attempt))
                if not self._still_open(job_id):
                    check.phase = "failed"
                    return
        except (MarketError, ComputeError, BlobError, OSError) as e:
            if check.phase == "checking":
                check.phase, check.error = "failed", str(e)

    def _still_open(self, job_id: str) -> bool:
        """Whether a report on `job_id` can still be taken from us."""
        state = self.market.ledger.state
        job = state.jobs.get(job_id)
        me = self.market.ledger.address
        return job is not None and job.status == "committed" and (job_id, me) not in state.reports

    async def _honest_check(self, check: Check, seed: bytes, rate_bps: int, *, last: bool) -> None:
        """Re-run the sampled items and report; on "bad", dispute. Only the `last` attempt
        accuses a solver that withholds a tolerant state (a transient miss is retried)."""
        market = self.market
        job = market.ledger.job(check.job_id)
        if job is None:
            raise MarketError(f"job {check.job_id} vanished from the ledger")
        m = await gather(market, job, self.gather_timeout)
        rate = effective_rate(rate_bps, self.min_rate_bps)
        training = not isinstance(m.spec, InferenceSpec)
        check.items = tuple(
            sampled_leaves(seed, check.job_id, market.identity.peer_id, training, len(m.leaves), rate)
        )
        bad = await first_bad(market, m, list(check.items), need_states=not last)
        check.verdict = "ok" if bad is None else "bad"
        await self._report(check.job_id, check.verdict, seed)
        check.phase = "reported"
        log.info("spot check reported", job=check.job_id[:16], verdict=check.verdict, items=len(check.items))
        if bad is None:
            return
        check.bad_index = bad[0]
        if self.voter is not None:
            self.voter.evidence(job["solver"], "solver", "failed_spot_check", check.job_id, f"leaf {bad[0]}")
        try:
            await self.challenger.open(m, *bad)
        except TxFailed as e:  # another verifier's dispute came first, or the window closed
            log.info("dispute not opened", job=check.job_id[:16], error=str(e))
            return
        check.phase = "disputed"

    async def _report(self, job_id: str, verdict: str, seed: bytes) -> None:
        body = {"job_id": job_id, "verdict": verdict, "sample_seed_used": seed}
        await self.market.ledger.send("verify_report", body)


async def first_bad(
    market: MarketService, m: Material, items: list[int], *, need_states: bool = True
) -> tuple[int, str] | None:
    """(leaf index, recomputed hash) of the first sampled item that fails, or None when all pass.

    A tolerant training check needs the solver's states: one it does not serve (yet: its ledger
    may lag ours by a block) raises CheckpointError, unless not `need_states`, when a
    withheld end state counts as a failed item (the dispute makes the solver show it)."""
    leaves = m.leaves
    if not items:
        return None
    if isinstance(m.spec, InferenceSpec):
        hashes = [h for _, h in leaves]
        checks = await on_executor(
            market, check_batches, m.spec, m.model, m.private, m.result.output, hashes, items
        )
        bad = [c for c in checks if not c.ok]
        return (bad[0].index, bad[0].recomputed_hash) if bad else None
    if len(leaves) < 2:
        return None  # a trace of only the initial state: nothing was trained to check
    for lo, hi in segments_for(items):
        try:
            seg = await check_segment_from(market, m, lo, hi, leaves[hi][1], need_claimed=need_states)
        except CheckpointError as e:
            if m.spec.mode != "strict":
                # Re-running a tolerant job's whole prefix accumulates drift that is no one's fault:
                # no accusation without the solver's own state (the check is retried).
                raise
            # Strict: the solver does not serve its state; re-run from the start (bitwise anyway).
            log.info("re-running from the initial state", job=m.job_id[:16], index=hi, error=str(e))
            seg = await check_segment_from(market, m, 0, hi, leaves[hi][1])
        if not seg.ok:
            return hi, seg.recomputed_hash
    return None
