"""Job specs built from API requests, checked against the model they name.

A submit request carries the spec's parameters; the daemon fills in what it computes itself
(the model hash, the inputs hash of an inference job, the hash of a dataset file) and builds
the spec through `compute.jobs.job_from_wire`, so every rule of the spec types applies.

- inference: {"batch_size", "mode"?, "precision"?, "tolerance"?} and the inputs file
  (safetensors holding exactly "x"). The inputs are the job's private input.
- training: {"dataset"?: a dataset reference, "optimizer", "steps", "batch_size", "seed"?,
  "checkpoint_every"?, "loss"?, "mode"?, "precision"?, "tolerance"?} and optionally a dataset
  file (safetensors x and y), which then becomes the private input and the spec names it by
  hash. A synthetic dataset reference needs no input: every solver regenerates it.

Blocking (torch): call in a worker thread. Errors are one BadRequest line listing the problems.
"""

from __future__ import annotations

from typing import Any

from compute.architectures import check_inputs
from compute.datasets import BlobDataset, Dataset, decode_inputs, encode_inputs, inputs_hash, resolve_dataset
from compute.errors import ComputeError
from compute.jobs import VERSION, JobSpec, job_from_wire
from compute.models import Model
from peer.market.errors import BadRequest

INFERENCE_FIELDS = {"batch_size", "mode", "precision", "tolerance"}
TRAINING_FIELDS = {
    "dataset",
    "optimizer",
    "steps",
    "batch_size",
    "seed",
    "checkpoint_every",
    "loss",
    "mode",
    "precision",
    "tolerance",
}


def _problems(e: ComputeError) -> str:
    return "; ".join(e.problems) if getattr(e, "problems", None) else str(e)


def _check_fields(kind: str, params: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadRequest(f"malformed {kind} spec: unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def build_spec(
    model: Model, kind: str, params: dict[str, Any], private: bytes | None
) -> tuple[JobSpec, bytes | None]:
    """(spec, private input bytes or None) for a job on `model`. Raises BadRequest."""
    try:
        if kind == "inference":
            return _inference(model, params, private)
        if kind == "training":
            return _training(model, params, private)
    except ComputeError as e:
        raise BadRequest(f"malformed {kind} spec: {_problems(e)}", code="malformed_spec") from None
    raise BadRequest(f"job kind must be 'inference' or 'training', got {kind!r}", code="malformed_spec")


def _inference(model: Model, params: dict[str, Any], inputs: bytes | None) -> tuple[JobSpec, bytes]:
    _check_fields("inference", params, INFERENCE_FIELDS)
    if inputs is None:
        raise BadRequest("an inference job needs an inputs file (safetensors holding tensor 'x')")
    x = decode_inputs(inputs)
    check_inputs(model.spec, x)
    wire = {"mode": "strict", "precision": "fp32", **params}
    wire |= {"v": VERSION, "kind": "inference", "model_hash": model.hash, "inputs_hash": inputs_hash(x)}
    return job_from_wire(wire), encode_inputs(x)


def _training(model: Model, params: dict[str, Any], dataset: bytes | None) -> tuple[JobSpec, bytes | None]:
    _check_fields("training", params, TRAINING_FIELDS)
    steps = params.get("steps")
    wire: dict[str, Any] = {
        "seed": 0,
        "loss": "cross_entropy",
        "mode": "strict",
        "precision": "fp32",
        "checkpoint_every": max(1, steps // 10) if isinstance(steps, int) and steps > 0 else 1,
        **params,
    }
    if dataset is not None:
        if "dataset" in params:
            raise BadRequest("give either a dataset file or a dataset reference, not both")
        data = Dataset.from_bytes(dataset)
        wire["dataset"] = BlobDataset(data.hash).to_wire()
        private: bytes | None = data.to_bytes()
    elif "dataset" not in params:
        raise BadRequest("a training job needs a dataset: a file (safetensors x and y) or a reference")
    else:
        private = None
    wire |= {"v": VERSION, "kind": "training", "model_hash": model.hash}
    spec = job_from_wire(wire)
    data = resolve_dataset(spec.dataset, private)  # type: ignore[union-attr]  # training spec
    check_inputs(model.spec, data.x[:1], what="dataset x")
    if len(data) < spec.batch_size:
        raise BadRequest(f"the dataset has {len(data)} items, fewer than one batch of {spec.batch_size}")
    return spec, private
