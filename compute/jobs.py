"""Job specs: validated, canonical, hashed descriptions of inference and training work.

A spec is a frozen dataclass; `to_wire()` gives its canonical map (every field present,
reals as rational strings), `encode()` its canonical msgpack bytes and `hash` the sha256 of
those bytes, which is what a JobPost commits to. `decode_job` parses untrusted bytes back,
rejecting anything malformed with a JobSpecError that lists every problem.

- InferenceSpec: model hash, inputs hash (canonical tensor hash of the inputs {"x": ...}),
  batch size, mode (strict | tolerant), tolerance (tolerant only), precision.
- TrainingSpec: model hash, dataset reference (a blob hash or a synthetic generator),
  optimizer (sgd | adam, hyperparameters as rationals), steps, batch size, seed,
  checkpoint_every, loss (cross_entropy | mse), mode, tolerance, precision.

Strict mode requires fp32; tolerant mode may run in bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from compute import canonical
from compute.datasets import DatasetRef, dataset_ref_from_wire
from compute.errors import DatasetError, JobSpecError
from compute.tolerance import MODES, Tolerance, default_tolerance
from gossip.envelope import unpackb

VERSION = 1
MAX_SPEC_BYTES = 64 * 1024
MAX_STEPS = 10_000_000
MAX_BATCH = 1 << 16
PRECISIONS = ("fp32", "bf16")
LOSSES = ("cross_entropy", "mse")
_OPTIMIZER_FIELDS = {
    "sgd": {"name", "lr", "momentum", "weight_decay"},
    "adam": {"name", "lr", "betas", "eps", "weight_decay"},
}


def _int_problem(name: str, value: Any, lo: int, hi: int) -> list[str]:
    if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
        return []
    return [f"{name!r} must be an int in [{lo}, {hi}], got {value!r}"]


def _rational(problems: list[str], name: str, value: Any, lo: Fraction, hi: Fraction) -> Fraction:
    try:
        r = canonical.parse_rational(value)
    except ValueError as e:
        problems.append(f"{name!r}: {e}")
        return lo
    if not lo <= r <= hi:
        problems.append(f"{name!r} must be in [{lo}, {hi}], got {r}")
    return r


@dataclass(frozen=True)
class OptimizerSpec:
    """sgd (momentum, weight_decay) or adam (betas, eps, weight_decay); reals as exact rationals."""

    name: str
    lr: Fraction
    momentum: Fraction = Fraction(0)
    weight_decay: Fraction = Fraction(0)
    betas: tuple[Fraction, Fraction] = (Fraction(9, 10), Fraction(999, 1000))
    eps: Fraction = Fraction(1, 10**8)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.name, str) or self.name not in _OPTIMIZER_FIELDS:
            problems.append(f"optimizer must be one of {sorted(_OPTIMIZER_FIELDS)}, got {self.name!r}")
        one = Fraction(1)
        set_ = object.__setattr__
        set_(self, "lr", _rational(problems, "lr", self.lr, Fraction(0), Fraction(10)))
        set_(self, "momentum", _rational(problems, "momentum", self.momentum, Fraction(0), one))
        set_(self, "weight_decay", _rational(problems, "weight_decay", self.weight_decay, Fraction(0), one))
        set_(self, "eps", _rational(problems, "eps", self.eps, Fraction(0), one))
        if not isinstance(self.betas, tuple | list) or len(self.betas) != 2:
            problems.append(f"'betas' must be two rationals, got {self.betas!r}")
        else:
            set_(self, "betas", tuple(_rational(problems, "betas", b, Fraction(0), one) for b in self.betas))
        if self.name == "sgd" and (self.betas != OptimizerSpec.betas or self.eps != OptimizerSpec.eps):
            problems.append("'betas' and 'eps' apply to adam only")
        if self.name == "adam" and self.momentum:
            problems.append("'momentum' applies to sgd only")
        if problems:
            raise JobSpecError(problems)

    @classmethod
    def sgd(cls, lr: str | Fraction | int, momentum: str | Fraction | int = 0) -> OptimizerSpec:
        return cls("sgd", lr, momentum)  # type: ignore[arg-type]  # coerced in __post_init__

    @classmethod
    def adam(cls, lr: str | Fraction | int) -> OptimizerSpec:
        return cls("adam", lr)  # type: ignore[arg-type]

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "name": self.name,
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "betas": list(self.betas),
            "eps": self.eps,
        }
        return canonical.canonical({k: v for k, v in wire.items() if k in _OPTIMIZER_FIELDS[self.name]})

    @classmethod
    def from_wire(cls, obj: Any) -> OptimizerSpec:
        name = obj.get("name") if isinstance(obj, Mapping) else None
        if not isinstance(name, str) or name not in _OPTIMIZER_FIELDS:
            raise JobSpecError(
                f"optimizer must be a map naming one of {sorted(_OPTIMIZER_FIELDS)}, got {obj!r}"
            )
        problems = [
            f"unknown {name} optimizer field {k!r}" for k in sorted(set(obj) - _OPTIMIZER_FIELDS[name])
        ]
        if "lr" not in obj:
            problems.append(f"{name} optimizer needs 'lr'")
        if problems:
            raise JobSpecError(problems)
        betas = obj.get("betas", cls.betas)
        return cls(
            name,
            obj["lr"],
            obj.get("momentum", 0),
            obj.get("weight_decay", 0),
            tuple(betas) if isinstance(betas, list | tuple) else betas,
            obj.get("eps", cls.eps),
        )


def _check_common(spec: Any, problems: list[str]) -> None:
    if not canonical.is_hash(spec.model_hash):
        problems.append(f"'model_hash' must be 64 lowercase hex chars, got {spec.model_hash!r}")
    problems += _int_problem("batch_size", spec.batch_size, 1, MAX_BATCH)
    if spec.mode not in MODES:
        problems.append(f"'mode' must be one of {MODES}, got {spec.mode!r}")
    if spec.precision not in PRECISIONS:
        problems.append(f"'precision' must be one of {PRECISIONS}, got {spec.precision!r}")
    if spec.mode == "strict" and spec.precision != "fp32":
        problems.append("strict mode requires precision 'fp32'")
    if spec.mode == "strict" and spec.tolerance is not None:
        problems.append("strict mode takes no tolerance")
    if spec.mode == "tolerant" and spec.tolerance is None and spec.precision in PRECISIONS:
        object.__setattr__(spec, "tolerance", default_tolerance(spec.precision))
    if spec.tolerance is not None and not isinstance(spec.tolerance, Tolerance):
        problems.append(f"'tolerance' must be a Tolerance, got {spec.tolerance!r}")


class _Spec:
    """Canonical encoding shared by both spec types."""

    kind = ""

    def to_wire(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self) -> bytes:
        return canonical.encode(self.to_wire())

    @property
    def hash(self) -> str:
        return canonical.sha256_hex(self.encode())


@dataclass(frozen=True)
class InferenceSpec(_Spec):
    """Run a model over a batch of inputs. `inputs_hash` is `tensors_hash({"x": inputs})`."""

    model_hash: str
    inputs_hash: str
    batch_size: int
    mode: str = "strict"
    tolerance: Tolerance | None = None
    precision: str = "fp32"
    kind = "inference"

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_common(self, problems)
        if not canonical.is_hash(self.inputs_hash):
            problems.append(f"'inputs_hash' must be 64 lowercase hex chars, got {self.inputs_hash!r}")
        if problems:
            raise JobSpecError(problems)

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "v": VERSION,
            "kind": self.kind,
            "model_hash": self.model_hash,
            "inputs_hash": self.inputs_hash,
            "batch_size": self.batch_size,
            "mode": self.mode,
            "precision": self.precision,
        }
        if self.tolerance is not None:
            wire["tolerance"] = self.tolerance.to_wire()
        return canonical.canonical(wire)


@dataclass(frozen=True)
class TrainingSpec(_Spec):
    """Train a model for `steps` updates, committing to a checkpoint every `checkpoint_every` steps."""

    model_hash: str
    dataset: DatasetRef
    optimizer: OptimizerSpec
    steps: int
    batch_size: int
    seed: int
    checkpoint_every: int
    loss: str = "cross_entropy"
    mode: str = "strict"
    tolerance: Tolerance | None = None
    precision: str = "fp32"
    kind = "training"

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_common(self, problems)
        problems += _int_problem("steps", self.steps, 1, MAX_STEPS)
        problems += _int_problem("seed", self.seed, 0, 2**63 - 1)
        steps = self.steps if isinstance(self.steps, int) else 1
        problems += _int_problem("checkpoint_every", self.checkpoint_every, 1, max(1, steps))
        if self.loss not in LOSSES:
            problems.append(f"'loss' must be one of {LOSSES}, got {self.loss!r}")
        if not isinstance(self.optimizer, OptimizerSpec):
            problems.append(f"'optimizer' must be an OptimizerSpec, got {self.optimizer!r}")
        if not hasattr(self.dataset, "to_wire"):
            problems.append(f"'dataset' must be a dataset reference, got {self.dataset!r}")
        if problems:
            raise JobSpecError(problems)

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "v": VERSION,
            "kind": self.kind,
            "model_hash": self.model_hash,
            "dataset": self.dataset.to_wire(),
            "optimizer": self.optimizer.to_wire(),
            "steps": self.steps,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "checkpoint_every": self.checkpoint_every,
            "loss": self.loss,
            "mode": self.mode,
            "precision": self.precision,
        }
        if self.tolerance is not None:
            wire["tolerance"] = self.tolerance.to_wire()
        return canonical.canonical(wire)


JobSpec = InferenceSpec | TrainingSpec
_REQUIRED = {
    "inference": {"v", "kind", "model_hash", "inputs_hash", "batch_size", "mode", "precision"},
    "training": {
        "v",
        "kind",
        "model_hash",
        "dataset",
        "optimizer",
        "steps",
        "batch_size",
        "seed",
        "checkpoint_every",
        "loss",
        "mode",
        "precision",
    },
}


def job_from_wire(obj: Any) -> JobSpec:
    """Build a spec from its wire map (as produced by `to_wire`). Raises JobSpecError."""
    kind = obj.get("kind") if isinstance(obj, Mapping) else None
    if not isinstance(kind, str) or kind not in _REQUIRED:
        raise JobSpecError(f"a job spec must be a map with 'kind' in {sorted(_REQUIRED)}")
    missing, unknown = _REQUIRED[kind] - set(obj), set(obj) - _REQUIRED[kind] - {"tolerance"}
    if missing or unknown:
        raise JobSpecError(
            [f"missing field {k!r}" for k in sorted(missing)]
            + [f"unknown field {k!r}" for k in sorted(unknown)]
        )
    if obj["v"] != VERSION:
        raise JobSpecError(f"unsupported job spec version {obj['v']!r}")
    tolerance = Tolerance.from_wire(obj["tolerance"]) if "tolerance" in obj else None
    common = {
        "model_hash": obj["model_hash"],
        "batch_size": obj["batch_size"],
        "mode": obj["mode"],
        "tolerance": tolerance,
        "precision": obj["precision"],
    }
    if kind == "inference":
        return InferenceSpec(inputs_hash=obj["inputs_hash"], **common)
    try:
        dataset = dataset_ref_from_wire(obj["dataset"])
    except DatasetError as e:
        raise JobSpecError([f"dataset: {p}" for p in e.problems]) from e
    return TrainingSpec(
        dataset=dataset,
        optimizer=OptimizerSpec.from_wire(obj["optimizer"]),
        steps=obj["steps"],
        seed=obj["seed"],
        checkpoint_every=obj["checkpoint_every"],
        loss=obj["loss"],
        **common,
    )


def decode_job(data: bytes) -> JobSpec:
    """Parse untrusted spec bytes; they must be the canonical encoding. Raises JobSpecError."""
    if not isinstance(data, bytes) or len(data) > MAX_SPEC_BYTES:
        raise JobSpecError(f"a job spec must be bytes of at most {MAX_SPEC_BYTES}")
    try:
        obj = unpackb(data, max_bytes=MAX_SPEC_BYTES)
    except Exception as e:  # gossip's InvalidMessage; compute must not depend on its hierarchy
        raise JobSpecError(f"malformed msgpack: {e}") from e
    spec = job_from_wire(obj)
    if spec.encode() != data:
        raise JobSpecError("job spec bytes are not in canonical form")
    return spec
