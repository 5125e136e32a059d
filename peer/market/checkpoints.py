"""Checkpoint states of a solver's training jobs: kept as blobs, served to verifiers and referees.

A training trace commits to the hash of the full training state at every checkpoint; a
verifier re-executing segment [s, e) needs the state at s, and a dispute bisects over the
same states. So the solver keeps every checkpoint state of its training jobs as a blob in its
blob store, with a per-job index ([step, state hash, blob id] per leaf, and the trace root)
written as JSON under `<data>/market/checkpoints/`, until the job is settled and its dispute,
if any, is over (`prune`; the blobs themselves stay in the store, which has no deletion yet).

Protocol `/hivemesh/market/checkpoint/1` (request/response, msgpack):
    request  {"job_id": hex, "index": int}
    response {"index", "step", "state_hash", "blob", "proof": [32-byte siblings], "n_leaves"}
The state travels as a blob (it may be far larger than one response); `fetch_checkpoint`
fetches it from the job's solver, checks the Merkle proof of (step, state hash) against the
job's trace_root on the ledger and the state's hash against the proven one.

Error handling: a malformed request or an unknown job/index is refused (RemoteError on the
client); on the client every failure is a `CheckpointError` (MarketError), `BadCheckpoint`
when the solver served something that does not match its own commitment.
"""

from __future__ import annotations

import json
import threading
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
from ledger.state import State
from peer.market.errors import MarketError

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

PROTOCOL = "/hivemesh/market/checkpoint/1"
MAX_REQUEST = 1024
MAX_RESPONSE = 64 * 1024
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


class CheckpointStore:
    """Per-job index of checkpoint states kept in the blob store (thread-safe: the recorder runs
    in the compute worker thread)."""

    def __init__(self, blobs: BlobStore, index_dir: Path) -> None:
        self.blobs = blobs
        self.index_dir = Path(index_dir)
        self._lock = threading.Lock()
        self._pending: dict[str, dict[int, str]] = {}  # job id -> step -> blob, while the run goes on
        self._index: dict[str, dict[str, Any]] = {}  # job id -> {"root", "leaves": [[step, hash, blob]]}
        self._load()

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

    def recorder(self, job_id: str) -> OnCheckpoint:
        """An `on_checkpoint` callback that keeps each state of `job_id` as a blob."""
        with self._lock:
            self._pending[job_id] = {}

        def record(step: int, state: bytes) -> None:
            blob = self.blobs.put_bytes(state)
            with self._lock:
                self._pending.setdefault(job_id, {})[step] = blob

        return record

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

    def drop(self, job_id: str) -> None:
        """Forget a job's index (blocking: disk)."""
        with self._lock:
            self._index.pop(job_id, None)
            self._pending.pop(job_id, None)
        (self.index_dir / f"{job_id}.json").unlink(missing_ok=True)

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


def _parse_request(body: Any) -> tuple[str, int]:
    if not isinstance(body, dict) or set(body) != {"job_id", "index"}:
        raise Refused("a checkpoint request is {job_id, index}")
    job_id, index = body["job_id"], body["index"]
    if not canonical.is_hash(job_id) or not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise Refused("job_id must be a hex hash and index a non-negative int")
    return job_id, index


def make_handler(service: MarketService) -> Any:
    """The protocol handler: serve checkpoints of jobs this peer solved and still keeps."""

    async def handle(peer: str, body: Any) -> dict[str, Any]:
        job_id, index = _parse_request(body)
        job = service.ledger.job(job_id)
        if job is None or job["solver"] != service.ledger.address:
            raise Refused(f"this peer is not the solver of job {job_id}")
        entry = service.checkpoints.entry(job_id)
        if entry is None or entry["root"] != job["trace_root"]:
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


def prune(service: MarketService, state: State) -> list[str]:
    """Job ids whose checkpoints may go: settled, and no dispute over them is still running."""
    done = []
    for job_id in service.checkpoints.jobs():
        job = state.jobs.get(job_id)
        dispute = state.disputes.get(dispute_id_for(job_id))
        if job is not None and job.status in KEEP_STATUSES:
            continue
        if dispute is not None and dispute.active:
            continue
        done.append(job_id)
    return done
