"""Content-addressed models: an architecture spec plus safetensors weights.

The model hash binds both halves:

    model_hash = sha256(DOMAIN || canonical msgpack of the normalized spec || weights hash)

where the weights hash is `determinism.tensors_hash` of the tensors (sorted names, dtype,
shape, little-endian bytes), so the same weights hash the same whichever safetensors writer
stored them. `encode_weights` gives the one canonical safetensors encoding we emit.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from compute import canonical
from compute.architectures import build_module, validate_spec
from compute.determinism import tensors_hash
from compute.errors import HashMismatch, WeightsError

_MODEL_DOMAIN = b"hivemesh/model/v1\x00"
MAX_WEIGHTS_BYTES = 4 << 30
_init_lock = threading.Lock()


def encode_weights(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Canonical safetensors bytes (CPU, contiguous, no metadata) of named tensors."""
    return st_save({k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())})


def decode_weights(data: bytes, what: str = "weights") -> dict[str, torch.Tensor]:
    """Parse untrusted safetensors bytes. Raises WeightsError on anything malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WeightsError(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) > MAX_WEIGHTS_BYTES:
        raise WeightsError(f"{what} of {len(data)} bytes exceeds the limit of {MAX_WEIGHTS_BYTES}")
    try:
        return dict(st_load(bytes(data)))
    except Exception as e:  # safetensors raises its own error type, plus others on odd headers
        raise WeightsError(f"{what} are not valid safetensors: {type(e).__name__}: {e}") from e


_warm_lock = threading.Lock()
_warmed = False


def warm_up() -> None:
    """Pay torch's one-time cost of initializing a tensor on the meta device (~1 s of CPU).

    Every model check builds its module on "meta", and the first normal_() there imports
    torch's compiler stack. A daemon calls this once at start, before it uses torch in other
    threads, so that second is not spent on the path of its first job. Callers in several
    threads are serialized: torch's lazy imports fail when two threads run them at once.
    """
    global _warmed
    with _warm_lock:
        if not _warmed:
            torch.nn.init.normal_(torch.empty(1, device="meta"))
            _warmed = True


def expected_tensors(spec: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor the architecture's weights must contain."""
    module = build_module(spec, device="meta")
    return {name: (tuple(t.shape), t.dtype) for name, t in module.state_dict().items()}


def check_weights(spec: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise WeightsError listing every missing, unexpected or mis-shaped tensor."""
    want, problems = expected_tensors(spec), []
    problems += [f"missing tensor {n!r}" for n in sorted(set(want) - set(tensors))]
    problems += [f"unexpected tensor {n!r}" for n in sorted(set(tensors) - set(want))]
    for name in sorted(set(want) & set(tensors)):
        shape, dtype = want[name]
        got = tensors[name]
        if tuple(got.shape) != shape or got.dtype != dtype:
            problems.append(f"{name!r} must be {dtype} {list(shape)}, got {got.dtype} {list(got.shape)}")
    if problems:
        raise WeightsError(problems)


def spec_bytes(spec: Mapping[str, Any]) -> bytes:
    """Canonical encoding of the normalized spec."""
    return canonical.encode(validate_spec(spec))


def model_hash(spec: Mapping[str, Any], weights: bytes | Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 binding the normalized spec and the weights' canonical tensor hash."""
    tensors = decode_weights(weights) if isinstance(weights, bytes | bytearray | memoryview) else weights
    return canonical.sha256_hex(_MODEL_DOMAIN, spec_bytes(spec), bytes.fromhex(tensors_hash(tensors)))


def init_model(spec: Mapping[str, Any], seed: int) -> bytes:
    """Fresh weights for the architecture, from torch's CPU RNG seeded with `seed`.

    The global RNG state is saved and restored around the draw (under a lock, so concurrent
    callers in other threads neither disturb it nor see it change).
    """
    s = validate_spec(spec)
    with _init_lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_module(s)
    return encode_weights(module.state_dict())


def load_model(spec: Mapping[str, Any], weights: bytes | Mapping[str, torch.Tensor]) -> nn.Module:
    """Build the architecture and load the weights into it (eval mode, on CPU).

    Raises:
        ArchitectureError: the spec is invalid.
        WeightsError: the bytes are not safetensors, or names/shapes/dtypes do not match.
    """
    tensors = (
        decode_weights(weights) if isinstance(weights, bytes | bytearray | memoryview) else dict(weights)
    )
    check_weights(spec, tensors)
    module = build_module(spec, device="meta")
    module.load_state_dict({k: v.detach().clone() for k, v in tensors.items()}, strict=True, assign=True)
    return module.eval()


@dataclass(frozen=True)
class Model:
    """A verified (spec, weights) pair and its hash. Build with `Model.create`."""

    spec: dict[str, Any]
    weights: bytes = field(repr=False)
    hash: str

    @classmethod
    def create(cls, spec: Mapping[str, Any], weights: bytes, expected_hash: str | None = None) -> Model:
        """Validate spec and weights; with `expected_hash`, also check the content address.

        Raises ArchitectureError, WeightsError, or HashMismatch.
        """
        normalized = validate_spec(spec)
        tensors = decode_weights(weights)
        check_weights(normalized, tensors)
        digest = model_hash(normalized, tensors)
        if expected_hash is not None and digest != expected_hash:
            raise HashMismatch("model", expected_hash, digest)
        return cls(spec=normalized, weights=bytes(weights), hash=digest)

    def __hash__(self) -> int:
        return hash(self.hash)

    @classmethod
    def init(cls, spec: Mapping[str, Any], seed: int) -> Model:
        return cls.create(spec, init_model(spec, seed))

    def module(self) -> nn.Module:
        """A fresh torch module holding these weights."""
        return load_model(self.spec, self.weights)

    def tensors(self) -> dict[str, torch.Tensor]:
        return decode_weights(self.weights)
