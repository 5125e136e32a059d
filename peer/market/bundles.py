"""Blob formats of the market (models and results) and the check of a result against the ledger.

Both are canonical msgpack maps (compute.canonical: sorted keys), so the same content always
gives the same bytes and therefore the same blob id on every peer.

- Model bundle: {"v": 1, "spec": normalized architecture spec, "weights": safetensors bytes}.
  Opening it checks the spec, the weights and the content address (`Model.create`).
- Result bundle: {"v": 1, "job_id", "kind", "output": safetensors bytes, "trace"}. The output
  is {"y": outputs} for inference and the trained weights for training. "trace" is the
  checkpoint trace ({"checkpoints", "root"}) of a training run, or {"batch_hashes", "root"}
  for inference (the Merkle root over the per-batch output hashes).

What a solver commits (`commitment`): output_hash = the canonical tensor hash of the output
(`tensors_hash`, what a local run of the same spec gives), trace_root = the trace's root,
result_size = the bundle's length. `check_result` recomputes all three from the bytes it was
served and refuses anything that differs from the ledger's commitment.

Every function here is blocking (hashing, torch decoding): call it in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compute import canonical
from compute.determinism import tensors_hash
from compute.errors import ComputeError
from compute.executor import InferenceResult, batch_root
from compute.jobs import InferenceSpec, JobSpec
from compute.models import Model, decode_weights
from compute.trace import CheckpointTrace
from gossip.envelope import unpackb
from gossip.errors import GossipError
from peer.market.errors import MarketError, ResultMismatch

VERSION = 1
MAX_BUNDLE_BYTES = 8 << 30


class BundleError(MarketError):
    """A model or result blob that does not decode or is not what it should be."""

    code = "bad_blob"
    status = 502


def _unpack(data: bytes, what: str, keys: set[str]) -> dict[str, Any]:
    try:
        raw = unpackb(bytes(data), max_bytes=MAX_BUNDLE_BYTES)
    except GossipError as e:
        raise BundleError(f"{what} blob is not msgpack: {e}") from None
    if not isinstance(raw, dict) or set(raw) != keys or raw.get("v") != VERSION:
        raise BundleError(f"{what} blob must be a version {VERSION} map with exactly {sorted(keys)}")
    return raw


def model_bundle(model: Model) -> bytes:
    return canonical.encode({"v": VERSION, "spec": model.spec, "weights": model.weights})


def open_model_bundle(data: bytes, model_hash: str) -> Model:
    """The model in a bundle, checked against its content address. Raises BundleError."""
    raw = _unpack(data, "model", {"v", "spec", "weights"})
    if not isinstance(raw["spec"], dict) or not isinstance(raw["weights"], bytes):
        raise BundleError("model blob must hold a spec map and weights bytes")
    try:
        return Model.create(raw["spec"], raw["weights"], expected_hash=model_hash)
    except ComputeError as e:
        raise BundleError(f"model blob for {model_hash} is not that model: {e}") from None


def output_hash(output: bytes) -> str:
    """The canonical tensor hash of a result's output (what a local run of the spec gives)."""
    return tensors_hash(decode_weights(output, what="result output"))


@dataclass(frozen=True)
class Result:
    """A decoded result bundle and what it commits to."""

    job_id: str
    kind: str
    output: bytes
    trace: dict[str, Any]
    output_hash: str
    trace_root: str
    size: int

    def commitment(self) -> dict[str, Any]:
        """The job_commit body fields (without job_id)."""
        return {"output_hash": self.output_hash, "trace_root": self.trace_root, "result_size": self.size}


def _bundle(job_id: str, kind: str, output: bytes, trace: dict[str, Any]) -> bytes:
    return canonical.encode({"v": VERSION, "job_id": job_id, "kind": kind, "output": output, "trace": trace})


def inference_bundle(job_id: str, result: InferenceResult) -> tuple[bytes, Result]:
    """The bundle of a full inference run and its commitment."""
    assert result.root is not None, "a job's result is a full run"
    trace = {"batch_hashes": list(result.batch_hashes), "root": result.root}
    data = _bundle(job_id, "inference", result.outputs, trace)
    return data, Result(
        job_id, "inference", result.outputs, trace, result.outputs_hash, result.root, len(data)
    )


def training_bundle(job_id: str, weights: bytes, trace: CheckpointTrace) -> tuple[bytes, Result]:
    """The bundle of a training run (final weights and checkpoint trace) and its commitment."""
    wire = trace.to_wire()
    data = _bundle(job_id, "training", weights, wire)
    return data, Result(job_id, "training", weights, wire, output_hash(weights), trace.root, len(data))


def _trace_root(kind: str, trace: Any, spec: JobSpec | None, output: bytes) -> str:
    try:
        if kind == "training":
            return CheckpointTrace.from_wire(trace).root
        if not isinstance(trace, dict) or set(trace) != {"batch_hashes", "root"}:
            raise BundleError("an inference trace must hold exactly batch_hashes and root")
        hashes = trace["batch_hashes"]
        if not isinstance(hashes, list) or not all(canonical.is_hash(h) for h in hashes):
            raise BundleError("batch_hashes must be a list of hashes")
        if isinstance(spec, InferenceSpec):
            y = decode_weights(output, what="result output").get("y")
            if y is None:
                raise BundleError("an inference output must hold tensor 'y'")
            b = spec.batch_size
            recomputed = [tensors_hash({"y": y[i : i + b]}) for i in range(0, y.shape[0], b)]
            if recomputed != hashes:
                raise ResultMismatch("the batch hashes do not match the outputs")
        return batch_root(hashes)
    except ComputeError as e:
        raise BundleError(f"bad trace in the result: {e}") from None


def check_result(data: bytes, job: dict[str, Any], spec: JobSpec | None = None) -> Result:
    """Decode a result blob and check it against the ledger's job record (its commitment).

    Raises BundleError for a blob that does not decode, ResultMismatch for one whose output
    hash, trace root or size is not what the solver committed.
    """
    raw = _unpack(data, "result", {"v", "job_id", "kind", "output", "trace"})
    if raw["job_id"] != job["job_id"] or raw["kind"] != job["kind"] or not isinstance(raw["output"], bytes):
        raise ResultMismatch(f"the result blob is not for job {job['job_id']} ({job['kind']})")
    try:
        digest = output_hash(raw["output"])
    except ComputeError as e:
        raise BundleError(f"the result output is not safetensors: {e}") from None
    root = _trace_root(raw["kind"], raw["trace"], spec, raw["output"])
    result = Result(raw["job_id"], raw["kind"], raw["output"], raw["trace"], digest, root, len(data))
    committed = {k: job.get(k) for k in ("output_hash", "trace_root", "result_size")}
    if result.commitment() != committed:
        diff = [k for k, v in result.commitment().items() if committed[k] != v]
        raise ResultMismatch(f"the result blob of job {job['job_id']} differs from the commitment in {diff}")
    return result
