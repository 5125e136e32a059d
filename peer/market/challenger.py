"""The challenger: open a dispute over a wrong result and answer each bisection round by re-executing.

Also home of what every re-executing agent (verifier, challenger, referee) shares:
- `Material`: what re-running part of a job needs: the ledger record, spec, model, private
  input (fetched from the submitter, peer/market/inputs.py) and the solver's result bundle
  (announced by the solver, checked against its commitment). `gather` collects it.
- `check_segment_from` / `check_unit`: re-execute one training segment from a proven
  checkpoint state (fetched from the solver, peer/market/checkpoints.py; the spec's initial
  state at leaf 0) or one inference batch, on the compute Executor.
- `check_steps`: the same over the steps of a step-level game: re-execute from the state the
  game agreed on at lo_step (its hash is on the ledger; fetched from the solver or the
  challenger, or kept here) up to a step, and judge the solver's posted hash there.

Leaves are those of the job's trace (ledger/disputes.py): checkpoint i of a training run
(step, state hash), batch i of an inference run. A training claim names index >= 1.

The game (ledger/disputes.py): `open` posts dispute_open with the claim (the first bad leaf
and the hash this peer recomputed there) and a bond of dispute_min_bond. The solver then
reveals and bisects; in every "respond" phase the challenger re-executes from the agreed lower
leaf up to the solver's midpoint and answers agree (the midpoint's hash is what it gets) or
disagree. Once the game bisects over steps (one checkpoint interval left) it re-executes from
the agreed state at lo_step up to the solver's mid_step the same way (strict: bitwise by hash;
tolerant: against the solver's state there, fetched, within the spec's tolerance). A state it
agrees with is kept (a blob indexed with `CheckpointStore.keep_state`) and served, so the
committee can fetch the agreed lower state from either party. The actor (`run`) scans every
committed state for the disputes where this peer is the challenger and must respond, so a
restarted peer picks up its games again.

Error handling: a round that cannot be answered (no checkpoint served, compute error) is
logged and retried on the next state until the deadline; the ledger rules a silent
challenger the loser, so an unanswerable round costs the bond, never the peer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio

from compute.errors import ComputeError
from compute.executor import Progress
from compute.jobs import InferenceSpec, JobSpec, TrainingSpec
from compute.models import Model
from compute.verify import SegmentCheck, check_batches, check_segment
from gossip.blobs import BlobError
from ledger.disputes import dispute_id_for, disputes_by
from ledger.records_disputes import Dispute
from ledger.state import State
from peer.market.bundles import Result, check_result
from peer.market.checkpoints import CheckpointError, fetch_checkpoint, fetch_state
from peer.market.errors import MarketError, Unavailable
from peer.market.inputs import fetch_input

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

GATHER_TIMEOUT_S = 120.0
MAX_MATERIAL = 64  # jobs whose material is cached


@dataclass(frozen=True)
class Material:
    """Everything needed to re-run part of one job (see the module docstring)."""

    job: dict[str, Any]
    spec: JobSpec
    model: Model
    private: bytes | None
    result: Result

    @property
    def job_id(self) -> str:
        return str(self.job["job_id"])

    @property
    def leaves(self) -> list[tuple[int, str]]:
        """(step, hash) of every leaf of the committed trace (batch index for inference)."""
        trace = self.result.trace
        if self.result.kind == "training":
            return [(int(s), str(h)) for s, h in trace["checkpoints"]]
        return [(i, str(h)) for i, h in enumerate(trace["batch_hashes"])]


async def gather(market: MarketService, job: dict[str, Any], timeout: float = GATHER_TIMEOUT_S) -> Material:
    """Collect a committed job's material. Raises MarketError (Unavailable when it takes too long)."""
    job_id, submitter, solver = job["job_id"], job["submitter"], job["solver"]
    book = market.book
    with trio.move_on_after(timeout) as scope:
        note = await book.wait_for(lambda: book.jobs.get((job_id, submitter)))
        spec = await market.load_spec(note.spec_blob, job)
        model = await market.load_model(note.model_hash, note.model_blob, [submitter])
        private = await fetch_input(market, job)
        announced = await book.wait_for(lambda: book.results.get((job_id, solver)))
        try:
            data = await market.fetch_blob(announced.blob, [solver], max_size=job["result_size"] or None)
        except BlobError as e:
            raise Unavailable(f"cannot fetch the result of job {job_id}: {e}") from None
        result = await market.in_thread(check_result, data, job, spec)
    if scope.cancelled_caught:
        raise Unavailable(f"the material of job {job_id} was not all available within {timeout:.0f}s")
    return Material(job, spec, model, private, result)


async def on_executor(market: MarketService, fn: Any, *args: Any) -> Any:
    """Run a blocking compute check on the market's Executor (one device job at a time)."""

    def job(cancel: threading.Event, post: Progress) -> Any:
        return fn(*args, cancel=cancel)

    return await market.executor.run(job)


async def state_at(market: MarketService, m: Material, index: int) -> bytes | None:
    """The proven state of checkpoint `index` (None at leaf 0: the spec's initial state)."""
    if index == 0:
        return None
    return (await fetch_checkpoint(market, m.job, index)).state


async def check_segment_from(
    market: MarketService, m: Material, lo: int, hi: int, claimed_hash: str, *, need_claimed: bool = False
) -> SegmentCheck:
    """Re-execute the training steps from leaf `lo` to leaf `hi` and judge `claimed_hash` at `hi`.

    In tolerant mode the solver's state at `hi` is fetched so the check can compare tensors;
    without it a result that is not bitwise ours is judged wrong, unless `need_claimed`.
    Raises CheckpointError when the solver does not serve the state at `lo` (or, with
    `need_claimed`, at `hi` of a tolerant job).
    """
    assert isinstance(m.spec, TrainingSpec)
    leaves = m.leaves
    start = await state_at(market, m, lo)
    claimed_state = None
    if m.spec.mode == "tolerant":
        try:
            claimed_state = (await fetch_checkpoint(market, m.job, hi)).state
        except CheckpointError as e:
            if need_claimed:
                raise
            log.info("no claimed state for a tolerant check", job=m.job_id[:16], index=hi, error=str(e))
    return await _run_check(market, m, start, leaves[lo][0], leaves[hi][0], claimed_hash, claimed_state)


async def _run_check(
    market: MarketService,
    m: Material,
    start: bytes | None,
    lo_step: int,
    hi_step: int,
    claimed_hash: str,
    claimed_state: bytes | None,
) -> SegmentCheck:
    """Re-run steps lo_step..hi_step from `start` on the Executor and judge the solver's claim."""
    args = (m.spec, m.model, m.private, start, lo_step, hi_step, claimed_hash, claimed_state)
    return await on_executor(market, check_segment, *args)


async def check_steps(
    market: MarketService,
    m: Material,
    lo_step: int,
    lo_hash: str,
    hi_step: int,
    claimed_hash: str,
    holders: list[str],
) -> tuple[SegmentCheck, bytes | None]:
    """Re-execute training steps lo_step..hi_step from the state whose hash the game agreed on at
    lo_step (`lo_hash`; "" at step 0: the spec's initial state) and judge `claimed_hash` at
    hi_step. Returns the check and the solver's state at hi_step when it was fetched (tolerant).

    Raises CheckpointError when no holder serves the state at lo_step, BadCheckpoint when the
    solver serves one that is not the state it posted.
    """
    assert isinstance(m.spec, TrainingSpec)
    if not 0 <= lo_step < hi_step <= m.spec.steps:
        why = f"steps ({lo_step}, {hi_step}] are not inside the spec's {m.spec.steps} steps"
        return SegmentCheck(lo_step, hi_step, claimed_hash, "", False, why), None
    start = None if not lo_hash else await fetch_state(market, m.job, lo_step, lo_hash, holders)
    claimed_state = None
    if m.spec.mode == "tolerant":
        try:
            claimed_state = await fetch_state(market, m.job, hi_step, claimed_hash, [m.job["solver"]])
        except CheckpointError as e:
            log.info("no claimed state for a tolerant check", job=m.job_id[:16], step=hi_step, error=str(e))
    check = await _run_check(market, m, start, lo_step, hi_step, claimed_hash, claimed_state)
    return check, claimed_state


async def check_unit(
    market: MarketService, m: Material, lo: int, hi: int, claimed_hash: str
) -> tuple[bool, str]:
    """(ok, recomputed hash) for unit `hi` of the job run from leaf `lo` (inference: batch `hi`)."""
    if isinstance(m.spec, InferenceSpec):
        hashes = [h for _, h in m.leaves]
        if hashes[hi] != claimed_hash:  # the bundle and the claim are proven against the same root
            raise MarketError(f"batch {hi} of job {m.job_id}: the claim is not the served batch hash")
        checks = await on_executor(
            market, check_batches, m.spec, m.model, m.private, m.result.output, hashes, [hi]
        )
        return checks[0].ok, checks[0].recomputed_hash
    check = await check_segment_from(market, m, lo, hi, claimed_hash)
    return check.ok, check.recomputed_hash


class Challenger:
    """The challenger actor of one verifier peer (see the module docstring)."""

    def __init__(self, market: MarketService) -> None:
        self.market = market
        self.material: dict[str, Material] = {}  # job id -> material (filled by the verifier)
        self.answered: dict[str, int] = {}  # dispute id -> rounds answered (the round we are at)
        self._busy: set[str] = set()
        self.opened: list[str] = []

    def keep(self, m: Material) -> None:
        self.material[m.job_id] = m
        while len(self.material) > MAX_MATERIAL:
            self.material.pop(next(iter(self.material)))

    async def open(self, m: Material, index: int, recomputed_hash: str) -> str:
        """Open the dispute over `m`'s job claiming leaf `index` is wrong. Returns the dispute id.

        Raises TxFailed when the ledger refuses (window over, already disputed, bond too low).
        """
        self.keep(m)
        bond = self.market.ledger.state.params.dispute_min_bond
        claim = {"index": index, "hash": recomputed_hash}
        await self.market.ledger.send("dispute_open", {"job_id": m.job_id, "bond": bond, "claim": claim})
        dispute_id = dispute_id_for(m.job_id)
        self.opened.append(dispute_id)
        log.info("dispute opened", job=m.job_id[:16], index=index, claim=recomputed_hash[:16])
        return dispute_id

    async def run(self) -> None:
        await self.market.watch.each_state(self._scan)

    def _scan(self, state: State, nursery: trio.Nursery) -> None:
        me = self.market.ledger.address
        for dispute_id in disputes_by(state, party=me, active=True):
            d = state.disputes[dispute_id]
            if d.challenger != me or d.phase != "respond" or dispute_id in self._busy:
                continue
            if self.answered.get(dispute_id, -1) >= d.rounds:
                continue  # our answer to this round is in flight or committed
            self._busy.add(dispute_id)
            nursery.start_soon(self._respond, dispute_id, d)

    async def _respond(self, dispute_id: str, d: Dispute) -> None:
        try:
            m = self.material.get(d.job_id)
            if m is None:
                job = self.market.ledger.job(d.job_id)
                assert job is not None
                m = await gather(self.market, job)
                self.keep(m)
            claimed: bytes | None = None
            if d.stepwise:
                holders = [d.solver, d.challenger]
                check, claimed = await check_steps(
                    self.market, m, d.lo_step, d.lo_hash, d.mid_step, d.mid_hash, holders
                )
            else:
                check = await check_segment_from(self.market, m, d.lo, d.mid, d.mid_hash)
            if check.ok:
                await self._keep_agreed(d, check, claimed)
            body = {"dispute_id": dispute_id, "agree": check.ok}
            await self.market.ledger.send("dispute_respond", body)
            self.answered[dispute_id] = d.rounds
            log.info(
                "dispute round answered",
                dispute=dispute_id[:16],
                lo_step=d.lo_step,
                mid_step=d.mid_step,
                steps=d.stepwise,
                agree=check.ok,
            )
        except (MarketError, ComputeError, BlobError, OSError) as e:
            log.warning("cannot answer a dispute round", dispute=dispute_id[:16], error=str(e))
        finally:
            self._busy.discard(dispute_id)

    async def _keep_agreed(self, d: Dispute, check: SegmentCheck, claimed: bytes | None) -> None:
        """Keep the state at mid_step that we agree with (its bytes hash to mid_hash), so the
        committee can fetch the agreed lower state from us too."""
        state = check.end_state if check.recomputed_hash == d.mid_hash else claimed
        if not state:
            return  # tolerant, agreeing with a state we did not fetch: nothing of ours to serve
        market = self.market
        blob = await market.put_blob(state)
        await market.in_thread(market.checkpoints.keep_state, d.job_id, d.mid_step, d.mid_hash, blob)

    def status(self) -> dict[str, Any]:
        return {"opened": list(self.opened), "answering": sorted(self._busy)}
