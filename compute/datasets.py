"""Training datasets: (x, y) tensors in safetensors bytes, and seeded synthetic generators.

A job names its dataset by a reference: `BlobDataset(hash)` for a dataset fetched as a blob
(`hash` is `Dataset.hash`, the canonical tensor hash of x and y), or a synthetic set that
every peer regenerates from its parameters, so tests and demos need no download:

- `SyntheticClasses`: a separable classification set. Each class has a ±1 prototype; items
  are prototype + uniform noise of amplitude `noise`, shaped `shape` (e.g. [32] for an MLP,
  [1, 28, 28] for a CNN). Labels are int64.
- `SyntheticTokens`: token sequences for the LM, each an arithmetic progression modulo
  `vocab` with a random start and stride; x = tokens[:-1], y = tokens[1:].

Generation uses only integer draws from a seeded torch generator and exact float32
arithmetic, so a synthetic set is the same bits wherever it is regenerated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from compute import canonical
from compute.determinism import tensors_hash
from compute.errors import DatasetError, HashMismatch, InputError, WeightsError
from compute.models import decode_weights, encode_weights

MAX_ITEMS = 10_000_000
MAX_ELEMENTS = 50_000_000
_UNIFORM_BITS = 16


@dataclass(frozen=True, eq=False)
class Dataset:
    """Training pairs: x (items along dim 0) and y (one target per item)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        problems = []
        if self.x.dtype not in (torch.float32, torch.int64) or self.y.dtype not in (
            torch.float32,
            torch.int64,
        ):
            problems.append(f"x and y must be float32 or int64, got {self.x.dtype} and {self.y.dtype}")
        if self.x.dim() < 1 or self.y.dim() < 1 or self.x.shape[0] != self.y.shape[0] or self.x.shape[0] < 1:
            problems.append(
                f"x and y need the same number (>= 1) of items: {list(self.x.shape)}, {list(self.y.shape)}"
            )
        if problems:
            raise DatasetError(problems)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def hash(self) -> str:
        return tensors_hash({"x": self.x, "y": self.y})

    def to_bytes(self) -> bytes:
        return encode_weights({"x": self.x, "y": self.y})

    @classmethod
    def from_bytes(cls, data: bytes) -> Dataset:
        """Parse untrusted safetensors bytes holding exactly tensors x and y. Raises DatasetError."""
        try:
            tensors = decode_weights(data, what="dataset")
        except WeightsError as e:
            raise DatasetError(e.problems) from e
        if set(tensors) != {"x", "y"}:
            raise DatasetError(f"dataset must hold exactly tensors 'x' and 'y', got {sorted(tensors)}")
        return cls(tensors["x"], tensors["y"])


@dataclass(frozen=True)
class BlobDataset:
    """A dataset fetched as a blob, addressed by its `Dataset.hash`."""

    hash: str

    def __post_init__(self) -> None:
        if not canonical.is_hash(self.hash):
            raise DatasetError(f"blob dataset hash must be 64 lowercase hex chars, got {self.hash!r}")

    def to_wire(self) -> dict[str, Any]:
        return {"kind": "blob", "hash": self.hash}


def _check_int(problems: list[str], name: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        problems.append(f"{name!r} must be an int in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class SyntheticClasses:
    """Seeded separable classification data; see the module docstring."""

    seed: int
    size: int
    shape: tuple[int, ...]
    classes: int
    noise: Fraction = Fraction(1, 2)

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_int(problems, "seed", self.seed, 0, 2**63 - 1)
        _check_int(problems, "size", self.size, 1, MAX_ITEMS)
        _check_int(problems, "classes", self.classes, 2, 1 << 16)
        if not isinstance(self.shape, tuple) or not 1 <= len(self.shape) <= 4:
            problems.append(f"'shape' must be 1..4 dims, got {self.shape!r}")
        else:
            for d in self.shape:
                _check_int(problems, "shape[i]", d, 1, 1 << 16)
        if not isinstance(self.noise, Fraction) or not 0 <= self.noise <= 16:
            problems.append(f"'noise' must be a rational in [0, 16], got {self.noise!r}")
        if not problems and self.size * math.prod(self.shape) > MAX_ELEMENTS:
            problems.append(f"size x prod(shape) exceeds {MAX_ELEMENTS} elements")
        if problems:
            raise DatasetError(problems)

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": "classes",
            "seed": self.seed,
            "size": self.size,
            "shape": list(self.shape),
            "classes": self.classes,
            "noise": canonical.rational_str(self.noise),
        }

    def generate(self) -> Dataset:
        g = torch.Generator().manual_seed(self.seed)
        d = math.prod(self.shape)
        prototypes = torch.randint(0, 2, (self.classes, d), generator=g).to(torch.float32) * 2 - 1
        y = torch.randint(0, self.classes, (self.size,), generator=g)
        u = torch.randint(0, 1 << _UNIFORM_BITS, (self.size, d), generator=g).to(torch.float32)
        u = u * (2.0 / (1 << _UNIFORM_BITS)) - 1  # exact: uniform in [-1, 1)
        x = prototypes[y] + u * float(self.noise)
        return Dataset(x.reshape(self.size, *self.shape), y)


@dataclass(frozen=True)
class SyntheticTokens:
    """Seeded token sequences for a causal LM; see the module docstring."""

    seed: int
    size: int
    seq_len: int
    vocab: int

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_int(problems, "seed", self.seed, 0, 2**63 - 1)
        _check_int(problems, "size", self.size, 1, MAX_ITEMS)
        _check_int(problems, "seq_len", self.seq_len, 1, 8192)
        _check_int(problems, "vocab", self.vocab, 2, 1 << 20)
        if not problems and self.size * self.seq_len > MAX_ELEMENTS:
            problems.append(f"size x seq_len exceeds {MAX_ELEMENTS} elements")
        if problems:
            raise DatasetError(problems)

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": "tokens",
            "seed": self.seed,
            "size": self.size,
            "seq_len": self.seq_len,
            "vocab": self.vocab,
        }

    def generate(self) -> Dataset:
        g = torch.Generator().manual_seed(self.seed)
        start = torch.randint(0, self.vocab, (self.size, 1), generator=g)
        stride = torch.randint(1, min(4, self.vocab - 1) + 1, (self.size, 1), generator=g)
        seq = (start + stride * torch.arange(self.seq_len + 1)) % self.vocab
        return Dataset(seq[:, :-1].contiguous(), seq[:, 1:].contiguous())


DatasetRef = BlobDataset | SyntheticClasses | SyntheticTokens


def dataset_ref_from_wire(obj: Any) -> DatasetRef:
    """Decode a dataset reference from its wire map. Raises DatasetError."""
    if not isinstance(obj, Mapping):
        raise DatasetError(f"dataset reference must be a map, got {type(obj).__name__}")
    fields = {
        "blob": {"kind", "hash"},
        "classes": {"kind", "seed", "size", "shape", "classes", "noise"},
        "tokens": {"kind", "seed", "size", "seq_len", "vocab"},
    }
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in fields:
        raise DatasetError(f"unknown dataset kind {kind!r}; known: {sorted(fields)}")
    required = fields[kind] - ({"noise"} if kind == "classes" else set())
    if not required <= set(obj) <= fields[kind]:
        raise DatasetError(f"{kind} dataset fields must be {sorted(required)}, got {sorted(obj)}")
    if kind == "blob":
        return BlobDataset(obj["hash"])
    if kind == "tokens":
        return SyntheticTokens(obj["seed"], obj["size"], obj["seq_len"], obj["vocab"])
    shape = obj["shape"]
    if not isinstance(shape, list | tuple):
        raise DatasetError(f"'shape' must be a list, got {shape!r}")
    try:
        noise = canonical.parse_rational(obj.get("noise", "1/2"))
    except ValueError as e:
        raise DatasetError(f"'noise': {e}") from e
    return SyntheticClasses(obj["seed"], obj["size"], tuple(shape), obj["classes"], noise)


def resolve_dataset(ref: DatasetRef, supplied: Dataset | bytes | None = None) -> Dataset:
    """The dataset a reference names: synthetic ones are generated, blob ones must be supplied.

    Raises DatasetError (malformed or missing), or HashMismatch (a blob that is not the one named).
    """
    if isinstance(ref, SyntheticClasses | SyntheticTokens):
        return ref.generate()
    if supplied is None:
        raise DatasetError(f"dataset {ref.hash} must be supplied as bytes or a Dataset")
    dataset = supplied if isinstance(supplied, Dataset) else Dataset.from_bytes(supplied)
    if dataset.hash != ref.hash:
        raise HashMismatch("dataset", ref.hash, dataset.hash)
    return dataset


def encode_inputs(x: torch.Tensor) -> bytes:
    """Inference inputs as canonical safetensors bytes holding one tensor, "x"."""
    return encode_weights({"x": x})


def inputs_hash(x: torch.Tensor) -> str:
    """What `InferenceSpec.inputs_hash` commits to: the canonical tensor hash of {"x": x}."""
    return tensors_hash({"x": x})


def decode_inputs(data: bytes) -> torch.Tensor:
    """Parse untrusted inference inputs (safetensors with exactly "x"). Raises InputError."""
    try:
        tensors = decode_weights(data, what="inputs")
    except WeightsError as e:
        raise InputError(e.problems) from e
    if set(tensors) != {"x"}:
        raise InputError(f"inputs must hold exactly one tensor 'x', got {sorted(tensors)}")
    return tensors["x"]
