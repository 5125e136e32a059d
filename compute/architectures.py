"""Built-in architectures, each built from a validated spec dict.

No model hub is reachable, so the architectures a job may name are defined here:

- ``{"arch": "mlp", "in": 32, "hidden": [64, 64], "out": 10, "activation": "relu"}``:
  an MLP classifier over float32 vectors ``(batch, in)`` giving logits ``(batch, out)``.
- ``{"arch": "cnn", "in_shape": [1, 28, 28], "channels": [8, 16], "out": 10, "kernel": 3}``:
  stride-2 convolutions with ReLU (no pooling: every op has a deterministic backward),
  then a linear head, over float32 images ``(batch, C, H, W)``.
- ``{"arch": "transformer", "vocab": 64, "context": 32, "d_model": 32, "heads": 4,
  "layers": 2, "ff": 128}``: a pre-LayerNorm causal transformer LM with learned positions
  and a head tied to the token embedding, over int64 tokens ``(batch, T)`` with
  ``T <= context``, giving logits ``(batch, T, vocab)``.

`validate_spec` returns the normalized spec (defaults filled in) that models are hashed
over; anything wrong is an ArchitectureError listing every problem found.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from compute.errors import ArchitectureError, InputError

MAX_WIDTH = 1 << 16
MAX_DEPTH = 64
MAX_PARAMETERS = 1_000_000_000
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class _Fields:
    """Collects every problem with a spec dict instead of stopping at the first one."""

    def __init__(self, spec: Mapping[str, Any], allowed: set[str]) -> None:
        self.spec, self.problems = (
            spec,
            [f"unknown field {k!r}" for k in sorted(set(spec) - allowed - {"arch"})],
        )

    def int(self, key: str, lo: int = 1, hi: int = MAX_WIDTH, default: int | None = None) -> int:
        value = self.spec.get(key, default)
        if value is None:
            self.problems.append(f"missing field {key!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self.problems.append(f"{key!r} must be an int in [{lo}, {hi}], got {value!r}")
        else:
            return value
        return lo

    def ints(self, key: str, min_len: int, max_len: int, lo: int = 1, hi: int = MAX_WIDTH) -> list[int]:
        value = self.spec.get(key)
        ok = isinstance(value, list | tuple) and min_len <= len(value) <= max_len
        if ok and all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in value):
            return list(value)
        if value is None:
            self.problems.append(f"missing field {key!r}")
        else:
            self.problems.append(
                f"{key!r} must be a list of {min_len}..{max_len} ints in [{lo}, {hi}], got {value!r}"
            )
        return [lo] * min_len

    def choice(self, key: str, options: Mapping[str, Any], default: str) -> str:
        value = self.spec.get(key, default)
        if not isinstance(value, str) or value not in options:
            self.problems.append(f"{key!r} must be one of {sorted(options)}, got {value!r}")
            return default
        return value


@dataclass(frozen=True)
class InputSignature:
    """What one input item looks like: shape (None = any length up to max_len) and dtype."""

    shape: tuple[int | None, ...]
    dtype: torch.dtype
    max_len: int = 0
    vocab: int = 0  # int inputs must lie in [0, vocab)


# ---------------------------------------------------------------- MLP


def _mlp_validate(f: _Fields) -> dict[str, Any]:
    return {
        "arch": "mlp",
        "in": f.int("in"),
        "hidden": f.ints("hidden", 0, MAX_DEPTH),
        "out": f.int("out"),
        "activation": f.choice("activation", _ACTIVATIONS, "relu"),
    }


def _mlp_params(s: Mapping[str, Any]) -> int:
    widths = [s["in"], *s["hidden"], s["out"]]
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def _mlp_build(s: Mapping[str, Any]) -> nn.Module:
    widths, layers = [s["in"], *s["hidden"], s["out"]], []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(_ACTIVATIONS[s["activation"]]())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- CNN


def _conv_out(size: int, kernel: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // 2 + 1


def _cnn_validate(f: _Fields) -> dict[str, Any]:
    spec = {
        "arch": "cnn",
        "in_shape": f.ints("in_shape", 3, 3, hi=4096),
        "channels": f.ints("channels", 1, 8, hi=4096),
        "kernel": f.int("kernel", hi=7, default=3),
        "out": f.int("out"),
    }
    if spec["kernel"] % 2 == 0:
        f.problems.append(f"'kernel' must be odd, got {spec['kernel']}")
    return spec


def _cnn_geometry(s: Mapping[str, Any]) -> tuple[int, int]:
    _, h, w = s["in_shape"]
    for _ in s["channels"]:
        h, w = _conv_out(h, s["kernel"]), _conv_out(w, s["kernel"])
    return h, w


def _cnn_params(s: Mapping[str, Any]) -> int:
    chans, k = [s["in_shape"][0], *s["channels"]], s["kernel"]
    h, w = _cnn_geometry(s)
    convs = sum(a * b * k * k + b for a, b in itertools.pairwise(chans))
    return convs + chans[-1] * h * w * s["out"] + s["out"]


def _cnn_build(s: Mapping[str, Any]) -> nn.Module:
    chans, k, layers = [s["in_shape"][0], *s["channels"]], s["kernel"], []
    for a, b in itertools.pairwise(chans):
        layers += [nn.Conv2d(a, b, k, stride=2, padding=k // 2), nn.ReLU()]
    h, w = _cnn_geometry(s)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(chans[-1] * h * w, s["out"]))


# ---------------------------------------------------------------- transformer


def _tf_validate(f: _Fields) -> dict[str, Any]:
    spec = {
        "arch": "transformer",
        "vocab": f.int("vocab", lo=2, hi=1 << 20),
        "context": f.int("context", hi=8192),
        "d_model": f.int("d_model", hi=8192),
        "heads": f.int("heads", hi=256),
        "layers": f.int("layers", hi=MAX_DEPTH),
    }
    spec["ff"] = f.int("ff", hi=1 << 15, default=4 * spec["d_model"])
    if spec["d_model"] % spec["heads"]:
        f.problems.append(f"'d_model' ({spec['d_model']}) must be divisible by 'heads' ({spec['heads']})")
    return spec


def _tf_params(s: Mapping[str, Any]) -> int:
    d, ff = s["d_model"], s["ff"]
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d)
    return s["vocab"] * d + s["context"] * d + s["layers"] * block + 2 * d


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.heads))
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = att.masked_fill(causal, float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CausalLM(nn.Module):
    """A small decoder-only transformer; the output head shares the token embedding."""

    def __init__(self, vocab: int, context: int, d_model: int, heads: int, layers: int, ff: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d_model), nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, heads, ff) for _ in range(layers))
        self.ln = nn.LayerNorm(d_model)
        for emb in (self.tok, self.pos):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln(x), self.tok.weight)


def _tf_build(s: Mapping[str, Any]) -> nn.Module:
    return CausalLM(s["vocab"], s["context"], s["d_model"], s["heads"], s["layers"], s["ff"])


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Arch:
    validate: Callable[[_Fields], dict[str, Any]]
    params: Callable[[Mapping[str, Any]], int]
    build: Callable[[Mapping[str, Any]], nn.Module]
    signature: Callable[[Mapping[str, Any]], InputSignature]


ARCHITECTURES: dict[str, _Arch] = {
    "mlp": _Arch(_mlp_validate, _mlp_params, _mlp_build, lambda s: InputSignature((s["in"],), torch.float32)),
    "cnn": _Arch(
        _cnn_validate, _cnn_params, _cnn_build, lambda s: InputSignature(tuple(s["in_shape"]), torch.float32)
    ),
    "transformer": _Arch(
        _tf_validate,
        _tf_params,
        _tf_build,
        lambda s: InputSignature((None,), torch.int64, s["context"], s["vocab"]),
    ),
}
_FIELDS = {
    "mlp": {"in", "hidden", "out", "activation"},
    "cnn": {"in_shape", "channels", "kernel", "out"},
    "transformer": {"vocab", "context", "d_model", "heads", "layers", "ff"},
}


def validate_spec(spec: Any) -> dict[str, Any]:
    """The normalized spec (defaults filled in). Raises ArchitectureError listing every problem."""
    if not isinstance(spec, Mapping):
        raise ArchitectureError(f"spec must be a map, got {type(spec).__name__}")
    arch = spec.get("arch")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise ArchitectureError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    fields = _Fields(spec, _FIELDS[arch])
    normalized = ARCHITECTURES[arch].validate(fields)
    if not fields.problems and (n := ARCHITECTURES[arch].params(normalized)) > MAX_PARAMETERS:
        fields.problems.append(f"{n} parameters exceeds the limit of {MAX_PARAMETERS}")
    if fields.problems:
        raise ArchitectureError(fields.problems)
    return normalized


def parameter_count(spec: Mapping[str, Any]) -> int:
    """Number of parameters the spec describes, computed without building it."""
    s = validate_spec(spec)
    return ARCHITECTURES[s["arch"]].params(s)


def build_module(spec: Mapping[str, Any], device: torch.device | str | None = None) -> nn.Module:
    """Construct the module (freshly initialized from torch's global RNG, or empty on "meta")."""
    s = validate_spec(spec)
    with torch.device(device or "cpu"):
        return ARCHITECTURES[s["arch"]].build(s)


def input_signature(spec: Mapping[str, Any]) -> InputSignature:
    s = validate_spec(spec)
    return ARCHITECTURES[s["arch"]].signature(s)


def check_inputs(spec: Mapping[str, Any], x: torch.Tensor, what: str = "inputs") -> None:
    """Raise InputError unless `x` is a batch (first dim) of valid items for the architecture."""
    sig, problems = input_signature(spec), []
    if x.dtype != sig.dtype:
        problems.append(f"{what} dtype must be {sig.dtype}, got {x.dtype}")
    if x.dim() != len(sig.shape) + 1 or x.shape[0] < 1:
        problems.append(f"{what} must have shape (batch>=1, {_shape_text(sig)}), got {tuple(x.shape)}")
    elif any(want is not None and want != got for want, got in zip(sig.shape, x.shape[1:], strict=True)):
        problems.append(f"{what} items must have shape ({_shape_text(sig)}), got {tuple(x.shape[1:])}")
    elif sig.max_len and not 1 <= x.shape[1] <= sig.max_len:
        problems.append(f"{what} sequence length must be in [1, {sig.max_len}], got {x.shape[1]}")
    if not problems and sig.vocab and x.numel() and not (0 <= int(x.min()) and int(x.max()) < sig.vocab):
        problems.append(f"{what} token ids must lie in [0, {sig.vocab})")
    if not problems and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        problems.append(f"{what} contain NaN or infinity")
    if problems:
        raise InputError(problems)


def _shape_text(sig: InputSignature) -> str:
    return ", ".join("T" if d is None else str(d) for d in sig.shape)
