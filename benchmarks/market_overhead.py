"""What the market costs on top of the compute: a ~30 s training job through the market vs run directly.

In one run, with a local cluster of 4 peer processes up (all validators; peer 0 owns the
model, peers 2 and 3 are solvers): the training loop of benchmarks/compute_direct.py (a
small causal transformer on synthetic tokens, strict mode, sized to take about --seconds)
runs directly through compute.executor in this process, then as a market job submitted by
peer 1, then directly again, --repeat times (direct, market, direct, market, ..., direct).
Each market job is compared with the mean of the direct runs just before and after it, which
cancels the drift of this shared machine's speed (identical direct runs differ by up to 7%
here), and also with the faster of the two; the medians over the jobs are printed, and each
job's own numbers under "runs":

- the share of a core each daemon process used during the first direct run (the idle cluster)
  and during the first market job (not counting the solver's compute worker process): what
  the compute shares the machine with;
- compute ratio: the solver's execution of the job (in its compute worker process) / the
  direct run, in wall time and in CPU time of the computing thread (the cost of running next
  to gossip, consensus and the API; CPU time is less sensitive to other load on the machine);
- end-to-end ratio: submit -> result fetched and checked by the submitter / the direct run
  (adds asking the solvers for quotes and posting the job awarded to the best one, or with
  --bid-window N the N-block auction, then the commit and the result transfer; the training
  job is not accepted early, its challenge window comes after);
- an inference job's submit -> finalized latency minus its compute time, in seconds and in
  block times (the mean block interval on the same chain), and its height span: awarded at
  post, committed, spot-checked and accepted by the submitter (or, with --no-accept, left to
  the ledger's challenge window).

    .venv/bin/python benchmarks/market_overhead.py [--seconds 30] [--repeat 3] [--bid-window 0]
        [--no-accept] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compute_direct import WORKLOADS

from compute.datasets import encode_inputs
from compute.executor import run_training
from compute.jobs import OptimizerSpec, TrainingSpec
from compute.models import Model
from peer.client import ApiClient
from peer.cluster import Cluster, cluster_down, cluster_up
from peer.procs import wait_for

ARCH = "transformer"
Direct = tuple[float, float, str]  # (wall s, CPU s, trace root) of a direct run
TIMEOUT = 600.0


def training_spec(model: Model, steps: int) -> TrainingSpec:
    _, dataset, batch_size = WORKLOADS[ARCH]
    return TrainingSpec(
        model.hash,
        dataset,
        OptimizerSpec.adam("1e-3"),
        steps,
        batch_size,
        seed=0,
        checkpoint_every=max(1, steps // 10),
    )


def size_steps(model: Model, seconds: float) -> int:
    """Steps that take about `seconds` here (after a warm-up of torch's first-call costs)."""
    run_training(training_spec(model, 2), model)
    probe = 10
    start = time.perf_counter()
    run_training(training_spec(model, probe), model)
    return max(1, round(seconds / ((time.perf_counter() - start) / probe)))


def direct_run(model: Model, steps: int) -> Direct:
    """(wall seconds, CPU seconds of this thread, trace root) of the job run directly."""
    wall, cpu = time.perf_counter(), time.thread_time()
    _, trace = run_training(training_spec(model, steps), model)
    return time.perf_counter() - wall, time.thread_time() - cpu, trace.root


def block_interval(client: ApiClient, count: int = 20) -> float:
    """Mean seconds between the last `count` blocks."""
    top = client.ledger_status()["height"]
    low = max(1, top - count)
    times = [client.query("block", h)["time_ms"] for h in (low, top)]
    return (times[1] - times[0]) / 1000 / max(1, top - low)


def process_cpu_s(pids: list[int]) -> list[float]:
    """CPU seconds (user + system) each process has used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split() for pid in pids]
    return [(int(f[11]) + int(f[12])) / ticks for f in fields]


def daemon_load(pids: list[int], run: Any) -> tuple[Any, list[float]]:
    """`run()`'s result and the share of a core each daemon used while it ran."""
    start, wall = process_cpu_s(pids), time.perf_counter()
    result = run()
    used = [b - a for a, b in zip(start, process_cpu_s(pids), strict=True)]
    return result, [round(u / (time.perf_counter() - wall), 3) for u in used]


def setup(root: Path, model: Model) -> list[ApiClient]:
    cluster = cluster_up(root / "cluster", 4, timeout=120)
    clients = [ApiClient(p.api_url, timeout=TIMEOUT) for p in cluster.peers]
    wait_for(lambda: all(c.get_json("/market/status")["ready"] for c in clients), 120, "every market")
    for client in clients[2:]:
        client.submit("register", {"role": "solver"})
    (root / "model.safetensors").write_bytes(model.weights)
    payload = {"spec": model.spec, "weights_path": str(root / "model.safetensors"), "royalty_bps": 500}
    clients[0].post_json("/market/models", payload)
    announced = lambda: any(m["announced_by"] for m in clients[1].get_json("/market/models"))  # noqa: E731
    wait_for(announced, 120, "the model announcement")
    return clients


def market_job(clients: list[ApiClient], request: dict[str, Any], until: str) -> dict[str, Any]:
    """Submit through peer 1; wait until the submitter's record shows `until`; return timings."""
    submitter = clients[1]
    start = time.time()
    job_id = submitter.post_json("/market/jobs", request)["job_id"]

    def reached() -> dict[str, Any] | None:
        view = submitter.get_json(f"/market/jobs/{job_id}")
        if view["phase"] in ("expired", "missed"):
            raise RuntimeError(f"job {job_id} {view['phase']}")
        return view if until in view["submitted_here"]["times"] else None

    view = wait_for(reached, TIMEOUT, f"job {job_id} to be {until}", interval=0.5)  # times: the daemons'
    solver = next(c for c in clients if c.health()["peer_id"] == view["solver"])
    work = solver.get_json(f"/market/jobs/{job_id}")["solved_here"]
    return {"start": start, "view": view, "work": work}


def market_run(job: dict[str, Any], before: Direct, after: Direct) -> dict[str, Any]:
    """One market training job against the mean of the direct runs just before and after it
    (drift of the shared machine's speed cancels; also against the faster of the two)."""
    t, work = job["view"]["submitted_here"]["times"], job["work"]["times"]
    e2e_s = t["verified"] - job["start"]
    wall, cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    return {
        "submit_to_verified_s": round(e2e_s, 3),
        "solver_compute_s": round(work["compute_s"], 3),
        "solver_compute_cpu_s": round(work["compute_cpu_s"], 3),
        "end_to_end_ratio": round(e2e_s / wall, 4),
        "end_to_end_ratio_vs_fastest": round(e2e_s / min(before[0], after[0]), 4),
        "compute_ratio_wall": round(work["compute_s"] / wall, 4),
        "compute_ratio_cpu": round(work["compute_cpu_s"] / cpu, 4),
        "market_overhead_s": round(e2e_s - work["compute_s"], 3),
    }


def timeline(job: dict[str, Any]) -> dict[str, float]:
    """Seconds from submit to each step the submitter and the solver recorded, in order."""
    marks = {f"submitter:{k}": v for k, v in job["view"]["submitted_here"]["times"].items()}
    marks |= {f"solver:{k}": v for k, v in job["work"]["times"].items() if not k.startswith("compute")}
    return {k: round(v - job["start"], 2) for k, v in sorted(marks.items(), key=lambda kv: kv[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="target wall time of the training job")
    parser.add_argument(
        "--bid-window", type=int, default=0, help="bid window of the market jobs in blocks (0: quotes)"
    )
    parser.add_argument("--no-accept", action="store_true", help="no early accept of the inference job")
    parser.add_argument(
        "--repeat", type=int, default=3, help="market training jobs, each between direct runs"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()

    model = Model.init(WORKLOADS[ARCH][0], seed=0)
    steps = size_steps(model, args.seconds)
    spec = training_spec(model, steps).to_wire()
    train_request = {
        "model_hash": model.hash,
        "kind": "training",
        "bounty": 10_000,
        "bid_window_blocks": args.bid_window,
        "deadline_blocks": 10_000,
        "spec": {
            k: spec[k] for k in ("dataset", "optimizer", "steps", "batch_size", "seed", "checkpoint_every")
        },
    }
    with tempfile.TemporaryDirectory(prefix="hivemesh-bench-") as tmp:
        root = Path(tmp)
        try:
            clients = setup(root, model)
            pids = [p.pid for p in Cluster.load(root / "cluster").peers]  # type: ignore[union-attr]
            first, idle_load = daemon_load(pids, lambda: direct_run(model, steps))
            directs, trains, job_load = [first], [], []
            for _ in range(args.repeat):  # direct, market, direct, market, ..., direct
                train, load = daemon_load(pids, lambda: market_job(clients, train_request, "verified"))
                trains.append(train)
                job_load = job_load or load
                directs.append(direct_run(model, steps))
            x = WORKLOADS[ARCH][1].generate().x[:64]
            (root / "inputs.safetensors").write_bytes(encode_inputs(x))
            infer_request = {
                "model_hash": model.hash,
                "kind": "inference",
                "bounty": 1_000,
                "bid_window_blocks": args.bid_window,
                "inputs_path": str(root / "inputs.safetensors"),
                "spec": {"batch_size": 16},
                "accept": not args.no_accept,
            }
            infer = market_job(clients, infer_request, "finalized")
            interval = block_interval(clients[1])
        finally:
            cluster_down(root / "cluster")

    runs = [market_run(train, directs[i], directs[i + 1]) for i, train in enumerate(trains)]
    train = trains[0]
    i_view, i_times = infer["view"], infer["view"]["submitted_here"]["times"]
    i_latency = i_times["finalized"] - infer["start"]
    i_overhead = i_latency - infer["work"]["times"]["compute_s"]
    result = {
        "benchmark": "market_overhead",
        "arch": ARCH,
        "steps": steps,
        "direct_s": [round(d[0], 3) for d in directs],
        "direct_cpu_s": [round(d[1], 3) for d in directs],
        "runs": runs,
        "end_to_end_ratio": median(r["end_to_end_ratio"] for r in runs),
        "compute_ratio_wall": median(r["compute_ratio_wall"] for r in runs),
        "compute_ratio_cpu": median(r["compute_ratio_cpu"] for r in runs),
        "end_to_end_ratio_vs_fastest_direct": median(r["end_to_end_ratio_vs_fastest"] for r in runs),
        "market_overhead_s": median(r["market_overhead_s"] for r in runs),
        "timeline_s": timeline(train),
        "daemon_cores_during_direct_run": idle_load,
        "daemon_cores_during_market_job": job_load,  # the solver's includes its compute worker
        "trace_roots_match": {t["view"]["trace_root"] for t in trains}
        == {d[2] for d in directs}
        == {first[2]},
        "block_interval_s": round(interval, 3),
        "inference_latency_s": round(i_latency, 3),
        "inference_compute_s": round(infer["work"]["times"]["compute_s"], 3),
        "inference_overhead_s": round(i_overhead, 3),
        "inference_overhead_blocks": round(i_overhead / interval, 2),
        "inference_submit_to_verified_s": round(i_times["verified"] - infer["start"], 3),
        "inference_heights": i_view["closed_height"] - i_view["post_height"],
        "inference_timeline_s": timeline(infer),
        "bid_window_blocks": args.bid_window,
        "inference_accepted": i_view["submitted_here"]["accepted"],
        "challenge_window_blocks": i_view["challenge_window_blocks"],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>30}: {value}")


if __name__ == "__main__":
    main()
