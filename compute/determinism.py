"""Pinned execution settings for strict mode, and canonical hashing of tensors.

`strict_settings()` pins everything torch needs to give bitwise-identical results on the
same hardware and software: deterministic algorithms, no cuDNN autotuning, no TF32, a fixed
CPU thread count and, if given a seed, a seeded global RNG. The algorithm and precision
flags are process-wide, so the context is reference-counted: concurrent strict jobs share
one pinned configuration, and the previous settings come back when the last one leaves.
The thread count is per thread (torch's OpenMP backend) and is pinned in each entering thread.

`tensors_hash()` hashes the canonical bytes of named tensors: names sorted, and for each
tensor its name, dtype, shape and contiguous little-endian bytes. Two state dicts hash
equal exactly when they are bitwise equal, however they were stored or laid out in memory.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from compute.errors import DeterminismError
from gossip.envelope import packb

STRICT_THREADS = 1  # part of what "strict" means: verifiers must reduce in the same order
_CUBLAS_WORKSPACE = ":4096:8"  # required by cuBLAS for deterministic matmuls
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_TENSOR_DOMAIN = b"hivemesh/tensors/v1\x00"


@dataclass(frozen=True)
class _Settings:
    deterministic: bool
    warn_only: bool
    benchmark: bool
    cudnn_deterministic: bool
    fp32_precision: str
    matmul_precision: str
    conv_precision: str


_STRICT = _Settings(True, False, False, True, "ieee", "ieee", "ieee")


def _current() -> _Settings:
    return _Settings(
        deterministic=torch.are_deterministic_algorithms_enabled(),
        warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        benchmark=torch.backends.cudnn.benchmark,
        cudnn_deterministic=torch.backends.cudnn.deterministic,
        fp32_precision=torch.backends.fp32_precision,
        matmul_precision=torch.backends.cuda.matmul.fp32_precision,
        conv_precision=torch.backends.cudnn.conv.fp32_precision,
    )


def _apply(s: _Settings) -> None:
    torch.use_deterministic_algorithms(s.deterministic, warn_only=s.warn_only)
    torch.backends.cudnn.benchmark = s.benchmark
    torch.backends.cudnn.deterministic = s.cudnn_deterministic
    torch.backends.fp32_precision = s.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = s.matmul_precision
    torch.backends.cudnn.conv.fp32_precision = s.conv_precision


_lock = threading.Lock()
_depth = 0
_pinned_threads = 0
_saved: _Settings | None = None


def _enter(threads: int) -> None:
    global _depth, _pinned_threads, _saved
    with _lock:
        if _depth and threads != _pinned_threads:
            raise DeterminismError(
                f"strict settings are pinned with {_pinned_threads} threads, not {threads}"
            )
        if not _depth:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
            _saved, _pinned_threads = _current(), threads
            _apply(_STRICT)
        _depth += 1


def _exit() -> None:
    global _depth, _saved
    with _lock:
        _depth -= 1
        if not _depth and _saved is not None:
            _apply(_saved)
            _saved = None


@contextmanager
def strict_settings(seed: int | None = None, threads: int = STRICT_THREADS) -> Iterator[None]:
    """Pin deterministic torch settings for the duration of the block.

    The algorithm and precision flags are process-wide (shared by every strict block that is
    active); the CPU thread count is per calling thread with torch's OpenMP backend, so it is
    set, and afterwards restored, in the thread that enters the block.

    Args:
        seed: if given, seeds torch's global RNGs (CPU and CUDA). Executors draw their own
            randomness from explicit generators; the seed covers anything that does not.
        threads: intra-op CPU threads; every strict block in the process must agree on it.

    Raises:
        DeterminismError: another strict block is active with a different thread count.
    """
    _enter(threads)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if seed is not None:
            torch.manual_seed(seed)
        yield
    finally:
        torch.set_num_threads(previous_threads)
        _exit()


def strict_settings_active() -> bool:
    """True while at least one strict block is running in this process."""
    with _lock:
        return _depth > 0


def bit_view(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as a same-shaped integer CPU tensor (for bitwise comparison)."""
    t = tensor.detach().to("cpu").contiguous()
    int_dtype = _INT_VIEW.get(t.element_size())
    if int_dtype is None or t.is_complex():
        raise DeterminismError(f"cannot take the bits of tensors of dtype {t.dtype}")
    return t.reshape(-1).view(int_dtype).reshape(t.shape)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The contiguous little-endian bytes of a tensor (on any device, of any fixed-size dtype)."""
    array = bit_view(tensor).reshape(-1).numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _update(h: hashlib._Hash, name: str | int, tensor: torch.Tensor) -> None:
    data = tensor_bytes(tensor)
    h.update(packb([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), len(data)]))
    h.update(data)


def tensors_hash(named: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) of named tensors in canonical form: sorted names, dtype, shape, bytes."""
    h = hashlib.sha256(_TENSOR_DOMAIN)
    h.update(packb(len(named)))
    for name in sorted(named):
        _update(h, name, named[name])
    return h.hexdigest()


def tensor_list_hash(tensors: Sequence[torch.Tensor]) -> str:
    """sha256 (hex) of an ordered list of tensors in canonical form (position, dtype, shape, bytes)."""
    h = hashlib.sha256(_TENSOR_DOMAIN + b"list\x00")
    h.update(packb(len(tensors)))
    for i, tensor in enumerate(tensors):
        _update(h, i, tensor)
    return h.hexdigest()
