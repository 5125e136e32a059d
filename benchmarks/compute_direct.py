"""Baseline: a ~30 s training job run directly through compute.executor, no market around it.

Prints steps/s and wall time for a small causal transformer (default) or CNN on a synthetic
dataset, in strict mode unless told otherwise. The market-overhead benchmark runs the same
job through the peer and compares against these numbers.

    .venv/bin/python benchmarks/compute_direct.py [--arch transformer|cnn] [--seconds 30]
        [--steps N] [--mode strict|tolerant] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from compute.architectures import parameter_count
from compute.datasets import SyntheticClasses, SyntheticTokens
from compute.executor import accelerator, run_training
from compute.jobs import OptimizerSpec, TrainingSpec
from compute.models import Model

WORKLOADS: dict[str, tuple[dict[str, Any], Any, int]] = {
    "transformer": (
        {"arch": "transformer", "vocab": 256, "context": 64, "d_model": 128, "heads": 4, "layers": 4},
        SyntheticTokens(seed=1, size=4096, seq_len=64, vocab=256),
        16,
    ),
    "cnn": (
        {"arch": "cnn", "in_shape": [3, 32, 32], "channels": [32, 64, 128], "out": 10},
        SyntheticClasses(seed=1, size=4096, shape=(3, 32, 32), classes=10),
        32,
    ),
}


def _spec(model: Model, arch: str, steps: int, mode: str) -> TrainingSpec:
    _, dataset, batch_size = WORKLOADS[arch]
    every = max(1, steps // 10)
    return TrainingSpec(
        model.hash,
        dataset,
        OptimizerSpec.adam("1e-3"),
        steps,
        batch_size,
        seed=0,
        checkpoint_every=every,
        mode=mode,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(WORKLOADS), default="transformer")
    parser.add_argument("--seconds", type=float, default=30.0, help="target wall time of the measured run")
    parser.add_argument("--steps", type=int, default=0, help="fixed step count (overrides --seconds)")
    parser.add_argument("--mode", choices=("strict", "tolerant"), default="strict")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()

    arch_spec = WORKLOADS[args.arch][0]
    model = Model.init(arch_spec, seed=0)
    run_training(_spec(model, args.arch, 2, args.mode), model)  # warm-up: first-call costs of torch
    probe_steps = 10
    start = time.perf_counter()
    run_training(_spec(model, args.arch, probe_steps, args.mode), model)  # step-time probe
    per_step = (time.perf_counter() - start) / probe_steps
    steps = args.steps or max(1, round(args.seconds / per_step))

    spec = _spec(model, args.arch, steps, args.mode)
    start = time.perf_counter()
    _, trace = run_training(spec, model)
    wall = time.perf_counter() - start
    result = {
        "benchmark": "compute_direct",
        "arch": args.arch,
        "parameters": parameter_count(arch_spec),
        "mode": args.mode,
        "device": str(accelerator().device),
        "threads": 1 if args.mode == "strict" else torch.get_num_threads(),
        "batch_size": spec.batch_size,
        "steps": steps,
        "checkpoints": len(trace.checkpoints),
        "wall_s": round(wall, 3),
        "steps_per_s": round(steps / wall, 2),
        "trace_root": trace.root,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>12}: {value}")


if __name__ == "__main__":
    main()
