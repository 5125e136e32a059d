"""The full training state at a checkpoint: weights plus optimizer state, as one tensor set.

A checkpoint must let anyone resume training bitwise, so it holds more than the weights:
tensors are named ``model.<param>`` for the weights and ``optim.<param>.<key>`` for the
optimizer's per-parameter state (SGD momentum buffers; Adam step, exp_avg, exp_avg_sq).
At step 0 the optimizer state is empty. The state hash committed in checkpoint traces is
`tensors_hash` of this set; its bytes travel as canonical safetensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from compute.determinism import tensors_hash
from compute.errors import CheckpointError, WeightsError
from compute.jobs import OptimizerSpec
from compute.models import Model, check_weights, decode_weights, encode_weights

MODEL_PREFIX, OPTIM_PREFIX = "model.", "optim."
_OPTIM_KEYS = {"sgd": {"momentum_buffer"}, "adam": {"step", "exp_avg", "exp_avg_sq"}}


def build_optimizer(spec: OptimizerSpec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The torch optimizer a spec describes (single-tensor code path: the same on CPU and GPU)."""
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=float(spec.lr),
            momentum=float(spec.momentum),
            weight_decay=float(spec.weight_decay),
            foreach=False,
        )
    return torch.optim.Adam(
        params,
        lr=float(spec.lr),
        betas=(float(spec.betas[0]), float(spec.betas[1])),
        eps=float(spec.eps),
        weight_decay=float(spec.weight_decay),
        foreach=False,
        fused=False,
    )


def capture(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The state set of a live module and optimizer (tensors still on their device)."""
    names = {id(p): name for name, p in module.named_parameters()}
    state = {MODEL_PREFIX + k: v.detach() for k, v in module.state_dict().items()}
    for param, per_param in optimizer.state.items():
        for key, value in per_param.items():
            if value is not None:
                state[f"{OPTIM_PREFIX}{names[id(param)]}.{key}"] = torch.as_tensor(value).detach()
    return state


def split(
    arch_spec: Mapping[str, Any], optimizer: OptimizerSpec, state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(weights, optimizer state by parameter name) of a state set, checked against model and optimizer.

    Raises CheckpointError listing what does not fit.
    """
    weights = {k.removeprefix(MODEL_PREFIX): v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
    rest = [k for k in state if not k.startswith((MODEL_PREFIX, OPTIM_PREFIX))]
    try:
        check_weights(arch_spec, weights)
    except WeightsError as e:
        raise CheckpointError(list(e.problems) + [f"unexpected tensor {k!r}" for k in rest]) from e
    problems = [f"unexpected tensor {k!r}" for k in rest]
    allowed = _OPTIM_KEYS[optimizer.name] if optimizer.name == "adam" or optimizer.momentum else set()
    per_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if not key.startswith(OPTIM_PREFIX):
            continue
        param, _, field = key.removeprefix(OPTIM_PREFIX).rpartition(".")
        if param not in weights or field not in allowed:
            problems.append(f"unexpected optimizer tensor {key!r}")
        elif field == "step" and (value.shape != () or value.dtype != torch.float32):
            problems.append(f"{key!r} must be a float32 scalar")
        elif field != "step" and (value.shape != weights[param].shape or value.dtype != weights[param].dtype):
            problems.append(f"{key!r} must match its parameter's dtype and shape")
        else:
            per_param.setdefault(param, {})[field] = value
    if per_param and (set(per_param) != set(weights) or any(set(v) != allowed for v in per_param.values())):
        problems.append(f"optimizer state must give every parameter exactly {sorted(allowed)}")
    if problems:
        raise CheckpointError(problems)
    return weights, per_param


def restore_optimizer(
    optimizer: torch.optim.Optimizer, module: nn.Module, per_param: Mapping[str, Mapping[str, torch.Tensor]]
) -> None:
    """Load per-parameter optimizer state (Adam's step stays on the CPU, as torch keeps it)."""
    params = dict(module.named_parameters())
    for name, fields in per_param.items():
        param = params[name]
        optimizer.state[param] = {
            k: v.clone() if k == "step" else v.to(param.device, copy=True) for k, v in fields.items()
        }


def decode_state(data: bytes) -> dict[str, torch.Tensor]:
    """Parse untrusted checkpoint bytes. Raises CheckpointError."""
    try:
        return decode_weights(data, what="checkpoint")
    except WeightsError as e:
        raise CheckpointError(e.problems) from e


def encode_state(state: Mapping[str, torch.Tensor]) -> bytes:
    return encode_weights(state)


def state_hash(state: bytes | Mapping[str, torch.Tensor]) -> str:
    """The hash a checkpoint trace commits to."""
    return tensors_hash(decode_state(state) if isinstance(state, bytes) else state)


def initial_state(model: Model) -> dict[str, torch.Tensor]:
    """The state at step 0: the model's weights and an empty optimizer state."""
    return {MODEL_PREFIX + k: v for k, v in model.tensors().items()}


def weights_of(state: bytes | Mapping[str, torch.Tensor]) -> bytes:
    """Safetensors bytes of just the weights in a state (loadable with `load_model`)."""
    tensors = decode_state(state) if isinstance(state, bytes) else state
    return encode_weights(
        {k.removeprefix(MODEL_PREFIX): v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    )
