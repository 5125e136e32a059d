"""Checkpoint states of a solver's training jobs: kept as blobs, served to verifiers and referees.

A training trace commits to the hash of the full training state at every checkpoint; a
verifier re-executing segment [s, e) needs the state at s, and a dispute bisects over the
same states. So the solver keeps every checkpoint state of its training jobs as a blob in its
blob store, with a per-job index ([step, state hash, blob id] per leaf, and the trace root)
written as JSON under `<data>/market/checkpoints/`, until the job is settled and its dispute,
if any, is over (`prune`; the blobs themselves stay in the store, which has no deletion yet).

A run in progress persists its list of [step, state blob] as it grows (`running/<job id>.json`,
written atomically at each checkpoint, at most once per FLUSH_INTERVAL_S once the list is
long), so a solver restarted mid-run resumes from its last recorded checkpoint
(`resume_point`, then `compute.executor.resume_training`) instead of step 0. The run's final
index (`seal`) replaces that list.

A dispute that narrows to one checkpoint interval goes on over training steps
(ledger/disputes.py): the solver posts the hash of its state at steps between checkpoints and
the challenger agrees with some of them. Both keep the states behind the hashes they stand by
(`keep_state`: a blob, and [step, hash, blob] in `<index dir>/steps/<job id>.json`), so the
challenger and the committee can fetch them.

Protocol `/hivemesh/market/checkpoint/1` (request/response, msgpack), two requests:
    by leaf  {"job_id": hex, "index": int}
        -> {"index", "step", "state_hash", "blob", "proof": [32-byte siblings], "n_leaves"}
    by step  {"job_id": hex, "step": int}
        -> {"step", "state_hash", "blob"}
The state travels as a blob (it may be far larger than one response). `fetch_checkpoint`
fetches a leaf from the job's solver, checks the Merkle proof of (step, state hash) against the
job's trace_root on the ledger and the state's hash against the proven one. `fetch_state`
fetches the state at a step whose hash the ledger holds (a dispute's lo_hash, hi_hash or
mid_hash) from the solver or the challenger and checks it against that hash. A peer answers a
step request only for a job it solved or challenges, and only at a step whose hash the active
dispute posted (or a checkpoint step of the solver's own trace) and whose state it kept:
nothing is computed on request.

Error handling: a malformed request or an unknown job/index is refused (RemoteError on the
client); on the client every failure is a `CheckpointError` (MarketError), `BadCheckpoint`
when the solver served something that does not match its own commitment.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from compute import canonical
from compute.errors import ComputeError
from compute.executor import OnCheckpoint
from compute.trace import CheckpointTrace, verify_checkpoint
from compute.train_state import state_hash
from gossip.blobs import BlobError, BlobStore
from gossip.errors import GossipError
from ledger.disputes import dispute_id_for
from ledger.merkle import MAX_PROOF_LEN, leaf_hash, proof_of, root_of, tree_levels
from ledger.records_disputes import Dispute
from ledger.state import State
from peer.market.errors import MarketError

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

PROTOCOL = "/hivemesh/market/checkpoint/1"
MAX_REQUEST = 1024
MAX_RESPONSE = 64 * 1024
RUNS_DIR = "running"  # under the index dir: the checkpoint lists of runs in progress
STEPS_DIR = "steps"  # under the index dir: states at dispute steps between checkpoints
MAX_STEP_STATES = 256  # per job: a step-level game posts at most 64 steps
RUN_VERSION = 1
FLUSH_ALWAYS = 64  # a run's first checkpoints are each persisted at once...
FLUSH_INTERVAL_S = 1.0  # ...later ones at most this often (the list is rewritten whole)
REQUEST_TIMEOUT_S = 20.0
KEEP_STATUSES = frozenset({"assigned", "committed", "disputed"})


class CheckpointError(MarketError):
    """A checkpoint state that cannot be had (no solver, refused, unreachable)."""

    status = 503
    code = "checkpoint_unavailable"


class BadCheckpoint(CheckpointError):
    """The solver served a checkpoint that does not match its commitment on the ledger."""

    status = 502
    code = "bad_checkpoint"


class Refused(GossipError):
    """A checkpoint request this peer will not answer (its message goes back to the requester)."""


@dataclass(frozen=True)
class Checkpoint:
    """Checkpoint `index` of a job's trace: its step, state hash and bytes, and the Merkle proof."""

    index: int
    step: int
    state_hash: str
    state: bytes
    proof: tuple[bytes, ...]
    n_leaves: int


@dataclass(frozen=True)
class Resume:
    """Where an interrupted run of a job can go on: its recorded checkpoints and the last state."""

    checkpoints: tuple[tuple[int, str], ...]  # (step, state hash), from step 0
    blobs: tuple[tuple[int, str], ...]  # (step, state blob)
    state: bytes  # the state at the last step

    @property
    def step(self) -> int:
        return self.checkpoints[-1][0]


class CheckpointStore:
    """Per-job index of checkpoint states kept in the blob store (thread-safe: the recorder runs
    in a checkpoint writer thread, writeback.py)."""

    def __init__(self, blobs: BlobStore, index_dir: Path) -> None:
        self.blobs = blobs
        self.index_dir = Path(index_dir)
        self._lock = threading.Lock()
        self._pending: dict[str, dict[int, str]] = {}  # job id -> step -> blob, while the run goes on
        self._index: dict[str, dict[str, Any]] = {}  # job id -> {"root", "leaves": [[step, hash, blob]]}
        self._runs = {p.stem for p in (self.index_dir / RUNS_DIR).glob("*.json")}  # unfinished runs
        self._steps: dict[str, dict[int, tuple[str, str]]] = {}  # job id -> step -> (hash, blob)
        self._load()
        self._load_steps()

    def _load_steps(self) -> None:
        for path in (self.index_dir / STEPS_DIR).glob("*.json"):
            try:
                rows = json.loads(path.read_text())
                kept = {int(step): (str(digest), str(blob)) for step, digest, blob in rows}
            except (OSError, ValueError, TypeError) as e:
                log.warning("unreadable dispute step states, ignored", path=str(path), error=str(e))
                continue
            self._steps[path.stem] = kept

    def keep_state(self, job_id: str, step: int, digest: str, blob: str) -> None:
        """Remember that blob `blob` holds the state of `job_id` at `step`, hashing to `digest`
        (a dispute step state; blocking: disk). Raises OSError."""
        with self._lock:
            kept = self._steps.setdefault(job_id, {})
            kept[step] = (digest, blob)
            while len(kept) > MAX_STEP_STATES:
                kept.pop(min(kept))
            rows = [[s, d, b] for s, (d, b) in sorted(kept.items())]
        path = self.index_dir / STEPS_DIR / f"{job_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(rows))
        tmp.replace(path)

    def states(self, job_id: str) -> list[tuple[int, str, str]]:
        """(step, hash, blob) of every state of `job_id` kept here: the checkpoints of its index
        and the dispute step states, in step order."""
        entry = self.entry(job_id)
        found = {s: (d, b) for s, d, b in (entry["leaves"] if entry else []) if b}
        with self._lock:
            found |= self._steps.get(job_id, {})
        return [(s, d, b) for s, (d, b) in sorted(found.items())]

    def state_blob(self, job_id: str, step: int, digest: str) -> str | None:
        """The blob of a kept state of `job_id` at `step` hashing to `digest`, or None."""
        return next((b for s, d, b in self.states(job_id) if s == step and d == digest), None)

    def _load(self) -> None:
        if not self.index_dir.is_dir():
            return
        for path in self.index_dir.glob("*.json"):
            try:
                entry = json.loads(path.read_text())
                root = root_of(tree_levels([leaf_hash(s, h) for s, h, _ in entry["leaves"]]))
            except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
                log.warning("unreadable checkpoint index, ignored", path=str(path), error=str(e))
                continue
            if root == entry.get("root"):
                self._index[path.stem] = entry

    def recorder(self, job_id: str, resume: Resume | None = None) -> OnCheckpoint:
        """An `on_checkpoint` callback that keeps each state of `job_id` as a blob and persists the
        run's list of them (blocking: disk).

        Args:
            resume: the interrupted run this one goes on with (its checkpoints are kept); None
                starts afresh and forgets any earlier list.
        """
        kept = dict(resume.blobs) if resume is not None else {}
        with self._lock:
            self._pending[job_id] = kept
            self._runs.add(job_id)
        if resume is None:
            self._run_path(job_id).unlink(missing_ok=True)
        last_flush = 0.0

        def record(step: int, state: bytes) -> None:
            nonlocal last_flush
            blob = self.blobs.put_bytes(state)
            with self._lock:
                pending = self._pending.setdefault(job_id, {})
                pending[step] = blob
                listed = sorted(pending.items())
            now = time.monotonic()
            if len(listed) <= FLUSH_ALWAYS or now - last_flush >= FLUSH_INTERVAL_S:
                last_flush = now
                self._write_run(job_id, listed)

        return record

    def _run_path(self, job_id: str) -> Path:
        return self.index_dir / RUNS_DIR / f"{job_id}.json"

    def _write_run(self, job_id: str, listed: list[tuple[int, str]]) -> None:
        """Persist a run's checkpoint list atomically; a failure only costs a restart some steps."""
        path = self._run_path(job_id)
        data = json.dumps({"version": RUN_VERSION, "checkpoints": [list(c) for c in listed]}).encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot persist the checkpoint list of a run", job=job_id[:16], error=str(e))

    def recorded(self, job_id: str) -> list[tuple[int, str]]:
        """(step, state blob) of the checkpoints an unfinished run of `job_id` persisted, in step
        order; [] when there is none or it is unreadable (logged). Blocking: disk."""
        path = self._run_path(job_id)
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.warning("unreadable checkpoint list of a run, ignored", path=str(path), error=str(e))
            return []
        current = isinstance(raw, dict) and raw.get("version") == RUN_VERSION
        listed = raw.get("checkpoints") if current else None
        well_formed = isinstance(listed, list) and all(
            isinstance(c, list)
            and len(c) == 2
            and isinstance(c[0], int)
            and not isinstance(c[0], bool)
            and isinstance(c[1], str)
            for c in listed
        )
        if not well_formed:
            log.warning("malformed checkpoint list of a run, ignored", path=str(path))
            return []
        assert isinstance(listed, list)
        steps = [c[0] for c in listed]
        if steps != sorted(set(steps)):
            log.warning("checkpoint list of a run out of order, ignored", path=str(path))
            return []
        return [(step, blob) for step, blob in listed]

    def resume_point(self, job_id: str) -> Resume | None:
        """The last checkpoint an interrupted run of `job_id` recorded, with every one before it
        (the longest prefix whose states are all in the blob store and decode); None when there
        is none to resume from. Blocking: disk, and hashing every recorded state."""
        checkpoints: list[tuple[int, str]] = []
        blobs: list[tuple[int, str]] = []
        state = b""
        for step, blob in self.recorded(job_id):
            try:
                data = self.blobs.read(blob)
                digest = state_hash(data)
            except (BlobError, ComputeError, OSError, ValueError) as e:
                log.warning(
                    "recorded checkpoint unusable, resuming before it",
                    job=job_id[:16],
                    step=step,
                    error=str(e),
                )
                break
            checkpoints.append((step, digest))
            blobs.append((step, blob))
            state = data
        if not checkpoints:
            return None
        return Resume(tuple(checkpoints), tuple(blobs), state)

    def seal(self, job_id: str, trace: CheckpointTrace) -> None:
        """Index the recorded states of `job_id` by the leaves of its final trace (blocking: disk).

        Raises MarketError when a checkpoint of the trace was never recorded.
        """
        with self._lock:
            recorded = self._pending.pop(job_id, {})
        missing = [s for s, _ in trace.checkpoints if s not in recorded]
        if missing:
            raise MarketError(f"job {job_id}: no state recorded for checkpoint steps {missing[:5]}")
        self.put_index(job_id, trace.root, [[s, h, recorded[s]] for s, h in trace.checkpoints])
        self._forget_run(job_id)  # the index holds it all now

    def seal_batches(self, job_id: str, batch_hashes: Sequence[str], root: str) -> None:
        """Index the leaves of an inference trace (no states: the dispute defence needs only the
        leaves). Blocking: disk."""
        self.put_index(job_id, root, [[i, h, ""] for i, h in enumerate(batch_hashes)])

    def put_index(self, job_id: str, root: str, leaves: list[list[Any]]) -> None:
        """Write a job's index: its trace root and [step, hash, state blob or ""] per leaf (blocking)."""
        entry = {"root": root, "leaves": leaves}
        self.index_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.index_dir / f"{job_id}.json.tmp"
        tmp.write_text(json.dumps(entry))
        tmp.replace(self.index_dir / f"{job_id}.json")
        with self._lock:
            self._index[job_id] = entry

    def leaf(self, job_id: str, index: int) -> tuple[int, str, list[bytes], int] | None:
        """(step, hash, Merkle proof, leaf count) of leaf `index` of `job_id`'s trace, or None."""
        entry = self.entry(job_id)
        if entry is None or not 0 <= index < len(entry["leaves"]):
            return None
        leaves = entry["leaves"]
        levels = tree_levels([leaf_hash(s, h) for s, h, _ in leaves])
        step, digest, _ = leaves[index]
        return step, digest, proof_of(levels, index), len(leaves)

    def entry(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._index.get(job_id)

    def jobs(self) -> list[str]:
        with self._lock:
            return sorted(self._index)

    def step_jobs(self) -> list[str]:
        """Jobs with dispute step states kept here (solved or challenged by this peer)."""
        with self._lock:
            return sorted(self._steps)

    def running(self) -> list[str]:
        """Jobs with the persisted checkpoint list of an unfinished run."""
        with self._lock:
            return sorted(self._runs)

    def drop(self, job_id: str) -> None:
        """Forget a job's index and any unfinished run's list (blocking: disk)."""
        with self._lock:
            self._index.pop(job_id, None)
            self._pending.pop(job_id, None)
            self._steps.pop(job_id, None)
        (self.index_dir / f"{job_id}.json").unlink(missing_ok=True)
        (self.index_dir / STEPS_DIR / f"{job_id}.json").unlink(missing_ok=True)
        self._forget_run(job_id)

    def _forget_run(self, job_id: str) -> None:
        with self._lock:
            self._runs.discard(job_id)
        self._run_path(job_id).unlink(missing_ok=True)

    def answer(self, job_id: str, index: int) -> dict[str, Any]:
        """The response body for checkpoint `index` of `job_id`. Raises Refused."""
        entry = self.entry(job_id)
        if entry is None:
            raise Refused(f"no checkpoints of job {job_id} here")
        leaves = entry["leaves"]
        if not 0 <= index < len(leaves):
            raise Refused(f"job {job_id} has {len(leaves)} checkpoints, no index {index}")
        step, digest, blob = leaves[index]
        if not blob:
            raise Refused(f"job {job_id} keeps no states (it is not a training job)")
        proof = proof_of(tree_levels([leaf_hash(s, h) for s, h, _ in leaves]), index)
        return {
            "index": index,
            "step": step,
            "state_hash": digest,
            "blob": blob,
            "proof": proof,
            "n_leaves": len(leaves),
        }


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def _parse_request(body: Any) -> tuple[str, str, int]:
    """(job id, "index" or "step", its value)."""
    if not isinstance(body, dict) or set(body) not in ({"job_id", "index"}, {"job_id", "step"}):
        raise Refused("a checkpoint request is {job_id, index} or {job_id, step}")
    what = "index" if "index" in body else "step"
    job_id, value = body["job_id"], body[what]
    if not canonical.is_hash(job_id) or not _is_uint(value):
        raise Refused(f"job_id must be a hex hash and {what} a non-negative int")
    return job_id, what, value


def posted_steps(d: Dispute | None) -> dict[int, str]:
    """step -> state hash of the states an active training dispute has posted (lo, hi, mid)."""
    if d is None or not d.active or d.kind != "training":
        return {}
    posted = [(d.lo_step, d.lo_hash), (d.hi_step, d.hi_hash), (d.mid_step, d.mid_hash)]
    return {step: digest for step, digest in posted if digest}


def _answer_step(service: MarketService, job: dict[str, Any], step: int) -> dict[str, Any]:
    """The response to a step request (in-memory lookups). Raises Refused."""
    job_id, me = job["job_id"], service.ledger.address
    d = service.ledger.state.disputes.get(dispute_id_for(job_id))
    party = me == job["solver"] or (d is not None and d.active and me == d.challenger)
    if not party:
        raise Refused(f"this peer neither solved nor challenges job {job_id}")
    digest = posted_steps(d).get(step)
    entry = service.checkpoints.entry(job_id) if me == job["solver"] else None
    if digest is None and entry is not None and entry["root"] == job["trace_root"]:
        digest = next((h for s, h, _ in entry["leaves"] if s == step), None)
    if digest is None:
        raise Refused(f"step {step} of job {job_id} is neither a checkpoint nor a posted dispute step")
    blob = service.checkpoints.state_blob(job_id, step, digest)
    if blob is None:
        raise Refused(f"no state of job {job_id} at step {step} with the posted hash here")
    return {"step": step, "state_hash": digest, "blob": blob}


def make_handler(service: MarketService) -> Any:
    """The protocol handler: serve checkpoints of jobs this peer solved and still keeps, and the
    states at the steps of their disputes (also for jobs this peer challenges)."""

    async def handle(peer: str, body: Any) -> dict[str, Any]:
        job_id, what, index = _parse_request(body)
        job = service.ledger.job(job_id)
        if what == "step":
            if job is None or job.get("kind") != "training":
                raise Refused(f"job {job_id} is not a training job on the ledger")
            return _answer_step(service, job, index)  # in-memory lookups only
        if job is None or job["solver"] != service.ledger.address:
            raise Refused(f"this peer is not the solver of job {job_id}")
        entry = service.checkpoints.entry(job_id)
        committed = job["trace_root"]  # "" while our own commit is not applied here yet: the
        # asker saw it committed and proves what we send against the root on its ledger
        if entry is None or (committed and entry["root"] != committed):
            raise Refused(f"no checkpoints of job {job_id} matching its committed trace here")
        return await service.in_thread(service.checkpoints.answer, job_id, index)

    return handle


def _parse_response(
    reply: Any, job: dict[str, Any], index: int
) -> tuple[int, str, str, tuple[bytes, ...], int]:
    fields = {"index", "step", "state_hash", "blob", "proof", "n_leaves"}
    if not isinstance(reply, dict) or set(reply) != fields:
        raise BadCheckpoint(f"the checkpoint answer for job {job['job_id']} is not {sorted(fields)}")
    proof = reply["proof"]
    well_formed = (
        reply["index"] == index
        and isinstance(reply["step"], int)
        and canonical.is_hash(reply["state_hash"])
        and isinstance(reply["blob"], str)
        and isinstance(reply["n_leaves"], int)
        and isinstance(proof, list)
        and len(proof) <= MAX_PROOF_LEN
        and all(isinstance(p, bytes) and len(p) == 32 for p in proof)
    )
    if not well_formed:
        raise BadCheckpoint(f"malformed checkpoint answer for job {job['job_id']} index {index}")
    return reply["step"], reply["state_hash"], reply["blob"], tuple(proof), reply["n_leaves"]


async def fetch_checkpoint(service: MarketService, job: dict[str, Any], index: int) -> Checkpoint:
    """Checkpoint `index` of a training job, fetched from its solver and checked against the ledger.

    Args:
        job: the ledger's job record (`MarketLedger.job`): its solver serves, its trace_root proves.

    Raises:
        CheckpointError: no solver or trace yet, the solver refused or is unreachable.
        BadCheckpoint: a proof that does not verify against trace_root, or a state whose hash is
            not the proven one.
    """
    job_id, solver, root = job["job_id"], job.get("solver"), job.get("trace_root")
    if job.get("kind") != "training" or not solver or not root:
        raise CheckpointError(f"job {job_id} has no committed training trace")
    if solver != service.identity.peer_id:
        await service.ensure_connected(solver)
    try:
        if solver == service.identity.peer_id:
            reply = await make_handler(service)(solver, {"job_id": job_id, "index": index})
        else:
            reply = await service.gossip.rpc.request(
                solver,
                PROTOCOL,
                {"job_id": job_id, "index": index},
                timeout=REQUEST_TIMEOUT_S,
                max_response=MAX_RESPONSE,
            )
    except GossipError as e:
        raise CheckpointError(f"cannot get checkpoint {index} of job {job_id} from {solver}: {e}") from None
    step, digest, blob, proof, n_leaves = _parse_response(reply, job, index)
    if not verify_checkpoint(root, step, digest, index, n_leaves, proof):
        raise BadCheckpoint(
            f"checkpoint {index} of job {job_id} from {solver} does not verify against trace root {root[:16]}"
        )
    try:
        state = await service.fetch_blob(blob, [solver])
    except BlobError as e:
        raise CheckpointError(f"cannot fetch the state of checkpoint {index} of job {job_id}: {e}") from None
    try:
        actual = await service.in_thread(state_hash, state)
    except ComputeError as e:
        raise BadCheckpoint(f"checkpoint {index} of job {job_id} is not a training state: {e}") from None
    if actual != digest:
        raise BadCheckpoint(
            f"the state served for checkpoint {index} of job {job_id} hashes to {actual[:16]}, "
            f"not the committed {digest[:16]}"
        )
    return Checkpoint(index, step, digest, state, proof, n_leaves)


async def _state_from(service: MarketService, holder: str, job_id: str, step: int, digest: str) -> bytes:
    """The state at `step` served by `holder`. Raises CheckpointError, BadCheckpoint."""
    request = {"job_id": job_id, "step": step}
    try:
        if holder == service.identity.peer_id:
            reply = await make_handler(service)(holder, request)
        else:
            await service.ensure_connected(holder)
            reply = await service.gossip.rpc.request(
                holder, PROTOCOL, request, timeout=REQUEST_TIMEOUT_S, max_response=MAX_RESPONSE
            )
    except GossipError as e:
        raise CheckpointError(
            f"cannot get the state of job {job_id} at step {step} from {holder}: {e}"
        ) from None
    fields = {"step", "state_hash", "blob"}
    if not isinstance(reply, dict) or set(reply) != fields or not isinstance(reply["blob"], str):
        raise BadCheckpoint(f"malformed state answer for job {job_id} step {step} from {holder}")
    if reply["step"] != step or reply["state_hash"] != digest:
        raise BadCheckpoint(f"{holder} names another state of job {job_id} at step {step} than the ledger")
    try:
        state = await service.fetch_blob(reply["blob"], [holder])
    except BlobError as e:
        raise CheckpointError(f"cannot fetch the state of job {job_id} at step {step}: {e}") from None
    await _check_state(service, state, digest, f"the state of job {job_id} at step {step} from {holder}")
    return state


async def _check_state(service: MarketService, state: bytes, digest: str, what: str) -> None:
    try:
        actual = await service.in_thread(state_hash, state)
    except ComputeError as e:
        raise BadCheckpoint(f"{what} is not a training state: {e}") from None
    if actual != digest:
        raise BadCheckpoint(f"{what} hashes to {actual[:16]}, not the posted {digest[:16]}")


async def fetch_state(
    service: MarketService, job: dict[str, Any], step: int, digest: str, holders: Sequence[str]
) -> bytes:
    """The full training state of `job` at `step` whose hash the ledger holds as `digest`: kept
    here, or from the first of `holders` (the solver, the challenger) that serves it.

    Raises:
        BadCheckpoint: the job's solver served a state that is not the one it posted (data
            from any other holder that does not match is only skipped: it is no evidence
            against the solver).
        CheckpointError: no holder served it.
    """
    job_id = job["job_id"]
    blob = service.checkpoints.state_blob(job_id, step, digest)
    if blob is not None:
        try:
            state = await service.read_blob(blob)
            await _check_state(service, state, digest, f"the kept state of job {job_id} at step {step}")
            return state
        except (BlobError, OSError, CheckpointError) as e:
            log.warning("a kept dispute state is unusable", job=job_id[:16], step=step, error=str(e))
    errors = []
    for holder in dict.fromkeys(holders):
        try:
            return await _state_from(service, holder, job_id, step, digest)
        except BadCheckpoint:
            if holder == job.get("solver"):
                raise
            errors.append(f"{holder}: served a state that is not the posted one")
        except CheckpointError as e:
            errors.append(str(e))
    raise CheckpointError(f"no holder served the state of job {job_id} at step {step}: {'; '.join(errors)}")


def prune(service: MarketService, state: State) -> list[str]:
    """Job ids whose checkpoints may go: settled, and no dispute over them is still running; and
    the unfinished runs of jobs that are no longer ours to finish (e.g. the deadline passed)."""
    done = []
    for job_id in sorted({*service.checkpoints.jobs(), *service.checkpoints.step_jobs()}):
        job = state.jobs.get(job_id)
        dispute = state.disputes.get(dispute_id_for(job_id))
        if job is not None and job.status in KEEP_STATUSES:
            continue
        if dispute is not None and dispute.active:
            continue
        done.append(job_id)
    for job_id in service.checkpoints.running():
        job = state.jobs.get(job_id)
        if job is not None and job.status not in KEEP_STATUSES and job_id not in done:
            done.append(job_id)
    return done
