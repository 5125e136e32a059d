"""The solver's side of a dispute: reveal and bisect with Merkle proofs from its own trace.

When a verifier disputes a job this peer solved (ledger/disputes.py), only the solver can
move in the "reveal" and "bisect" phases, and a silent solver loses at the phase's deadline
(params.dispute_step_blocks). The defender follows the chain; on every committed state it
finds the active disputes where this peer is the solver and the solver must move, and posts
the move once per (dispute, phase, interval):

- reveal: dispute_bisect with mid = the claim index (or the last leaf when the claim lies
  beyond the trace), proving that leaf of the committed trace;
- bisect: dispute_bisect with mid = (lo + hi) // 2, proving that leaf;
- bisect over steps (a training game down to one checkpoint interval, `Dispute.stepwise`):
  dispute_bisect with mid = step = (lo_step + hi_step) // 2, the hash of this solver's full
  training state at that step and no proof. The state is computed by resuming from the
  nearest state kept at or below that step (a checkpoint, or a step state of this game) and
  running the job's spec up to it on the market's Executor; it is kept as a blob and indexed
  (`CheckpointStore.keep_state`) so the challenger and the committee can fetch it.

The leaves come from the solver's checkpoint index (checkpoints.py: every training
checkpoint, or the batch hashes of an inference run), which is kept until the dispute ends.
`next_move` is the pure part (dispute + leaves + step states -> tx body), shared with the
benchmark.

Error handling: a refused move (a race with the deadline, a phase that moved on) is logged;
one that timed out is retried on the next height. A dispute over a job whose leaves this
peer no longer has (or whose spec, model or input it cannot load to compute a step state) is
logged at ERROR (it will be lost by timeout).

Restarts: the spec, model and private input of a disputed training job come first from what
the solver keeps on disk (its journal record of the job, solver.py, naming the spec, model and
sealed input blobs, which stay in its blob store), so a solver restarted mid-dispute moves at
once even if the job is never announced again; a job without a usable record waits (up to
MATERIAL_TIMEOUT_S) for its announcement in the book.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio

from compute.errors import ComputeError
from compute.executor import run_training_segment
from compute.jobs import TrainingSpec
from compute.models import Model
from compute.train_state import state_hash
from gossip.blobs import BlobError
from ledger.disputes import disputes_by
from ledger.records_disputes import Dispute
from ledger.state import State
from peer.market import wire
from peer.market.challenger import on_executor
from peer.market.errors import MarketError, TxFailed, Unavailable
from peer.market.inputs import open_input

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

SOLVER_PHASES = ("reveal", "bisect")
MATERIAL_TIMEOUT_S = 60.0

Leaf = tuple[int, str, list[bytes], int]  # (step, hash, proof, leaf count)
JobMaterial = tuple[TrainingSpec, Model, bytes | None]  # (spec, model, opened private input)


def move_index(d: Dispute, n_leaves: int) -> int:
    """The leaf the solver must prove next in dispute `d` (in a solver phase over leaves)."""
    if d.phase == "reveal":
        return n_leaves - 1 if d.claim_index >= n_leaves else d.claim_index
    assert d.phase == "bisect" and not d.stepwise, (d.phase, d.stepwise)
    return (d.lo + d.hi) // 2


def move_step(d: Dispute) -> int | None:
    """The training step whose state hash the solver must name next, or None over leaves."""
    return (d.lo_step + d.hi_step) // 2 if d.stepwise and d.phase == "bisect" else None


def next_move(
    dispute_id: str, d: Dispute, leaf: Any, step_hash: Callable[[int], str | None] | None = None
) -> dict[str, Any]:
    """The dispute_bisect body for the solver's move, given `leaf(index) -> Leaf | None` and, over
    steps, `step_hash(step) -> the hash of the solver's state at step | None`.

    Raises LookupError when the solver does not have the leaf or state it must post.
    """
    step = move_step(d)
    if step is not None:
        digest = step_hash(step) if step_hash is not None else None
        if digest is None:
            raise LookupError(f"no state of job {d.job_id} at step {step}")
        return {
            "dispute_id": dispute_id,
            "mid": step,
            "step": step,
            "hash": digest,
            "n_leaves": d.n_leaves,
            "proof": [],
        }
    first = leaf(0)
    if first is None:
        raise LookupError(f"no trace leaves kept for job {d.job_id}")
    index = move_index(d, first[3])
    found = leaf(index)
    if found is None:
        raise LookupError(f"leaf {index} of job {d.job_id} is not kept")
    step, digest, proof, n = found
    return {
        "dispute_id": dispute_id,
        "mid": index,
        "step": step,
        "hash": digest,
        "n_leaves": n,
        "proof": proof,
    }


@dataclass(frozen=True)
class Move:
    """A move this defender posted (for the API and tests)."""

    dispute_id: str
    phase: str
    mid: int  # the leaf proven, or the step named over steps
    height: int
    error: str = ""
    stepwise: bool = False


class Defender:
    """Answers the disputes over jobs this peer solved (see the module docstring)."""

    def __init__(self, market: MarketService) -> None:
        self.market = market
        self.moves: list[Move] = []  # newest last, written by `run`'s tasks only
        self._posted: set[tuple[str, str, int]] = set()  # (dispute, phase, round) moved on
        self._material: dict[str, JobMaterial] = {}

    def _due(self, state: State) -> list[tuple[str, Dispute]]:
        me = self.market.ledger.address
        due = []
        for dispute_id in disputes_by(state, party=me, active=True):
            d = state.disputes[dispute_id]
            if d.solver == me and d.phase in SOLVER_PHASES and _key(dispute_id, d) not in self._posted:
                due.append((dispute_id, d))
        return due

    async def run(self) -> None:
        height = 0
        async with trio.open_nursery() as nursery:
            while True:
                state = await self.market.watch.wait_above(height)
                height = state.height
                for dispute_id, d in self._due(state):
                    self._posted.add(_key(dispute_id, d))
                    nursery.start_soon(self._move, dispute_id, d, height)
                self._forget_material(state)

    def _forget_material(self, state: State) -> None:
        for job_id in [
            j for j in self._material if state.jobs.get(j) is None or state.jobs[j].status != "disputed"
        ]:
            self._material.pop(job_id)

    async def _move(self, dispute_id: str, d: Dispute, height: int) -> None:
        store = self.market.checkpoints
        try:
            step = move_step(d)
            digest = await self.state_at(d.job_id, step) if step is not None else None
            body = await self.market.in_thread(
                next_move, dispute_id, d, lambda i: store.leaf(d.job_id, i), lambda _: digest
            )
        except (LookupError, MarketError, ComputeError, BlobError, OSError) as e:
            log.error("cannot defend a dispute", dispute=dispute_id[:16], job=d.job_id[:16], error=str(e))
            self.moves.append(Move(dispute_id, d.phase, -1, height, str(e), d.stepwise))
            return
        try:
            await self.market.ledger.send("dispute_bisect", body)
        except Unavailable as e:  # not committed in time: try again on the next height
            self._posted.discard(_key(dispute_id, d))
            log.warning("dispute move not committed yet", dispute=dispute_id[:16], error=str(e))
            return
        except TxFailed as e:
            log.warning("dispute move refused", dispute=dispute_id[:16], phase=d.phase, error=str(e))
            self.moves.append(Move(dispute_id, d.phase, body["mid"], height, str(e), d.stepwise))
            return
        log.info(
            "dispute move posted", dispute=dispute_id[:16], phase=d.phase, mid=body["mid"], steps=d.stepwise
        )
        self.moves.append(Move(dispute_id, d.phase, body["mid"], height, stepwise=d.stepwise))

    async def state_at(self, job_id: str, step: int) -> str:
        """The hash of this solver's training state of `job_id` at `step`: kept already, or
        computed from the nearest kept state below it with the job's spec, then kept (a blob
        indexed in the checkpoint store) so it can be served. Raises LookupError, MarketError,
        ComputeError, BlobError, OSError."""
        market, store = self.market, self.market.checkpoints
        below = [s for s in store.states(job_id) if s[0] <= step]
        if not below:
            raise LookupError(f"no state of job {job_id} kept at or below step {step}")
        start, digest, blob = below[-1]
        if start == step:
            return digest
        spec, model, private = await self._job_material(job_id)
        state = await market.read_blob(blob)
        end = await on_executor(market, run_training_segment, spec, model, private, state, start, step)
        digest = await market.in_thread(state_hash, end)
        blob = await market.put_blob(end)
        await market.in_thread(store.keep_state, job_id, step, digest, blob)
        log.info("dispute step state computed", job=job_id[:16], start=start, step=step, hash=digest[:16])
        return digest

    async def _job_material(self, job_id: str) -> JobMaterial:
        """The spec, model and private input of a training job this peer solved: from the solver's
        journal and blob store (what a restarted peer still has), else from the job's announcement
        once the book holds it. Raises LookupError, MarketError, ComputeError, BlobError, OSError."""
        if job_id in self._material:
            return self._material[job_id]
        job = self.market.ledger.job(job_id)
        if job is None:
            raise LookupError(f"job {job_id} is not on the ledger")
        material = await self._journaled_material(job)
        if material is None:
            material = await self._announced_material(job)
        self._material[job_id] = material
        return material

    async def _journaled_material(self, job: dict[str, Any]) -> JobMaterial | None:
        """The material named by the solver's journal record of the job, or None when the record
        does not name all of it (no record, a malformed one, or no sealed input blob)."""
        journaled = await self.market.solver.journaled(job["job_id"])
        if journaled is None:
            return None
        note, entry = journaled
        input_blob = entry.get("input_blob")
        if note.private_input and not isinstance(input_blob, str):
            return None
        return await self._load_material(job, note, input_blob if note.private_input else None)

    async def _announced_material(self, job: dict[str, Any]) -> JobMaterial:
        """The material named by the job's announcement and sealed input note in the book, waiting
        up to MATERIAL_TIMEOUT_S for them (a peer that lost its journal record)."""
        market, job_id = self.market, job["job_id"]
        key = (job_id, job["submitter"])
        with trio.move_on_after(MATERIAL_TIMEOUT_S):
            note = await market.book.wait_for(lambda: market.book.jobs.get(key))
            input_blob = None
            if note.private_input:
                input_blob = (await market.book.wait_for(lambda: market.book.inputs.get(key))).blob
            return await self._load_material(job, note, input_blob)
        raise LookupError(
            f"the spec, model or input of job {job_id} was not at hand within {MATERIAL_TIMEOUT_S:.0f}s"
        )

    async def _load_material(
        self, job: dict[str, Any], note: wire.JobNote, input_blob: str | None
    ) -> JobMaterial:
        """Spec, model and opened input from their blobs: ours when kept, else fetched (the
        submitter first)."""
        market, job_id = self.market, job["job_id"]
        spec = await market.load_spec(note.spec_blob, job)
        if not isinstance(spec, TrainingSpec):
            raise LookupError(f"job {job_id} is not a training job")
        model = await market.load_model(note.model_hash, note.model_blob, [job["submitter"]])
        private = None
        if input_blob is not None:
            private = await open_input(market, job_id, job["submitter"], input_blob, spec)
        return spec, model, private


def _key(dispute_id: str, d: Dispute) -> tuple[str, str, int]:
    """One solver move per (dispute, phase, round): over steps lo and hi stay, the round moves."""
    return dispute_id, d.phase, d.rounds
