"""Trustless results: spot-check detection rate vs verifier overhead, and dispute length.

Part 1, detection. A real training run (strict mode, an MLP on a synthetic set) at several
checkpoint granularities; the "fake-train" test behaviour skips 10% of the segments and
fabricates their checkpoints. For each granularity and spot-check rate, over many seeded
sample draws (peer/market/verifier.py `sampled_leaves`: the ledger's sample rule over the
trace's segments, labelled by the verifier), it counts how often the sample holds a faked
segment. Overhead = re-executed steps /
total steps (mean over draws); the wall time of a real re-execution of one draw's sample
(compute.verify.check_segment from the solver's states) is measured against the honest run.
"k verifiers" shows what k verifiers give together: each draws its own sample (the label
holds its address), so their detection compounds.

Part 2, disputes. Rounds: the pure ledger game (real signed txs through `apply_block`, as
tests/test_disputes.py does) over the real trace of each granularity, with the solver's
defence from peer/market/defender.py (`next_move`) and an honest challenger; the game bisects
the checkpoints, then the steps of the last checkpoint interval, down to one training step.
Seconds: the same game with real re-execution in one process: the solver computes its states
at the step midpoints from its nearest kept state, the challenger answers each round by
running check_segment from the agreed lower state to mid, and each of the 3 committee members
re-executes the final single step (ref_steps = 1); blocks used are counted and converted at a
few block times.

    .venv/bin/python benchmarks/verification.py [--steps 1000] [--draws 2000] [--every 100,20,10,4,2]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compute.datasets import SyntheticClasses
from compute.executor import run_training, run_training_segment
from compute.jobs import OptimizerSpec, TrainingSpec
from compute.models import Model
from compute.trace import CheckpointTrace
from compute.train_state import encode_state, initial_state, state_hash
from compute.verify import SegmentCheck, check_segment
from gossip.blobs import BlobStore
from ledger.disputes import dispute_id_for, round_bound
from peer.market.behaviours import SolverBehaviour
from peer.market.checkpoints import CheckpointStore
from peer.market.defender import next_move
from peer.market.verifier import sampled_leaves
from tests.trust_chain import CHALLENGER, SOLVER, A, TrustChain

MLP = {"arch": "mlp", "in": 16, "hidden": [64], "out": 4}
RATES_BPS = (500, 1_000, 2_000, 5_000)
BLOCK_TIMES_S = (1.0, 3.0)


@dataclass
class Run:
    every: int
    spec: TrainingSpec
    trace: CheckpointTrace
    faked: tuple[int, ...]
    store: CheckpointStore
    job_id: str
    solver_s: float

    @property
    def n_leaves(self) -> int:
        return len(self.trace.checkpoints)

    def state(self, index: int) -> bytes | None:
        if index == 0:
            return None  # check_segment starts from the spec's initial state
        entry = self.store.entry(self.job_id)
        assert entry is not None
        return self.store.blobs.read(entry["leaves"][index][2])


def sampled_segments(seed: bytes, job_id: str, verifier: str, n_leaves: int, rate_bps: int) -> list[int]:
    """Segment indices (segment j: leaf j -> j + 1) that a verifier re-runs."""
    return [leaf - 1 for leaf in sampled_leaves(seed, job_id, verifier, True, n_leaves, rate_bps)]


def spec_for(model: Model, steps: int, every: int) -> TrainingSpec:
    data = SyntheticClasses(1, 512, (16,), 4)
    return TrainingSpec(model.hash, data, OptimizerSpec.sgd("0.05", "0.9"), steps, 32, 1, every)


def solve(model: Model, steps: int, every: int, root: Path) -> Run:
    spec = spec_for(model, steps, every)
    job_id = hashlib.sha256(b"bench-job-%d" % every).hexdigest()
    store = CheckpointStore(BlobStore(root / f"blobs-{every}"), root / f"index-{every}")
    t = time.perf_counter()
    _, trace, faked = SolverBehaviour("fake-train", fraction=0.1).train(
        spec, model, None, job_id=job_id, on_checkpoint=store.recorder(job_id)
    )
    solver_s = time.perf_counter() - t
    store.seal(job_id, trace)
    return Run(every, spec, trace, faked, store, job_id, solver_s)


def detection(run: Run, rate_bps: int, draws: int, verifiers: int = 1) -> tuple[float, float]:
    """(detection rate, re-executed steps / total steps, mean) over `draws` seeded sample draws."""
    hits, shares = 0, []
    faked = set(run.faked)
    steps = run.trace.steps
    for d in range(draws):
        seed = hashlib.sha256(b"draw-%d" % d).digest()
        union: set[int] = set()
        rerun = 0
        for v in range(verifiers):  # each verifier draws its own sample
            segments = sampled_segments(seed, run.job_id, f"verifier-{v}", run.n_leaves, rate_bps)
            rerun += sum(steps[j + 1] - steps[j] for j in segments)
            union |= set(segments)
        hits += bool(union & faked)
        shares.append(rerun / steps[-1])
    return hits / draws, statistics.fmean(shares)


def reexecute(run: Run, model: Model, rate_bps: int) -> tuple[float, int, int, bool]:
    """Really re-run one draw's sample: (seconds, segments run, segments failed, failures == faked ones)."""
    seed = hashlib.sha256(b"draw-0").digest()
    segments = sampled_segments(seed, run.job_id, "verifier-0", run.n_leaves, rate_bps)
    steps = run.trace.steps
    t = time.perf_counter()
    failed = set()
    for j in segments:
        check = check_segment(
            run.spec, model, None, run.state(j), steps[j], steps[j + 1], run.trace.hash_at(steps[j + 1])
        )
        if not check.ok:
            failed.add(j)
    return time.perf_counter() - t, len(segments), len(failed), failed == set(segments) & set(run.faked)


def segment_cost(model: Model, steps: int, repeats: int = 15) -> tuple[float, float]:
    """(fixed seconds per re-executed segment, seconds per step) of check_segment (1- and 11-step runs)."""
    spec = spec_for(model, steps, 1)
    state = run_training_segment(spec, model, None, encode_state(initial_state(model)), 0, 1)
    times = {}
    for k in (1, 11):
        t = time.perf_counter()
        for _ in range(repeats):
            check_segment(spec, model, None, state, 1, 1 + k, "00" * 32)
        times[k] = (time.perf_counter() - t) / repeats
    per_step = (times[11] - times[1]) / 10
    return times[1] - per_step, per_step


def honest_seconds(model: Model, steps: int, every: int) -> float:
    spec = spec_for(model, steps, every)
    t = time.perf_counter()
    run_training(spec, model, on_checkpoint=lambda step, state: None)
    return time.perf_counter() - t


# ---- disputes ------------------------------------------------------------------------------


@dataclass
class Game:
    rounds: int
    blocks: int
    challenger_s: float
    solver_s: float
    referee_s: float
    outcome: str
    narrowed: tuple[int, int]  # the training steps (lo_step, hi_step] the committee re-executes
    referee_steps: int  # steps each committee member re-executed


class SolverStates:
    """The fake-train solver's full states at dispute steps: resumed from its nearest kept state
    at or below the step (a checkpoint, or a step computed earlier in the game), as
    peer/market/defender.py does."""

    def __init__(self, run: Run, model: Model) -> None:
        self.run, self.model = run, model
        self.kept = {s: i for i, s in enumerate(run.trace.steps)}  # step -> leaf index
        self.steps: dict[int, bytes] = {}

    def at(self, step: int) -> bytes:
        if step in self.steps:
            return self.steps[step]
        start = max([s for s in self.kept if s <= step] + [s for s in self.steps if s <= step])
        state = self.steps.get(start) or self.run.state(self.kept[start])
        if state is None:
            state = encode_state(initial_state(self.model))
        if start < step:
            state = run_training_segment(self.run.spec, self.model, None, state, start, step)
        self.steps[step] = state
        return state


def play(run: Run, model: Model, bad: int, challenger: str) -> Game:
    """One dispute over leaf `bad` of `run` on a real ledger state machine, over leaves and then
    over the steps of the last checkpoint interval.

    challenger: "reexecute" answers each round by re-running from the agreed state to mid (what
    peer/market/challenger.py does); "agree-below" agrees with every mid below the claim (the
    solver's own committed values, from which the spot check already re-ran segment bad - 1 ->
    bad) and, over steps, with every step state below the claimed step's (re-executing nothing);
    "none" plays the pure game (no compute at all, referees too).
    """
    chain = TrustChain()
    job_id = chain.assigned_job("training", challenge_window=100)
    chain.commit(job_id, run.trace.root)
    steps = run.trace.steps
    compute = challenger != "none"
    solver = SolverStates(run, model)

    def recompute(lo: int, hi: int) -> SegmentCheck:
        return check_segment(
            run.spec, model, None, run.state(lo), steps[lo], steps[hi], run.trace.checkpoints[hi][1]
        )

    def state_or_none(step: int) -> bytes | None:
        return None if step == 0 else solver.at(step)  # the agreed state (strict: bitwise ours)

    def step_hash(step: int) -> str:
        return state_hash(solver.at(step)) if compute else hashlib.sha256(b"step-%d" % step).hexdigest()

    claim_hash = recompute(bad - 1, bad).recomputed_hash if compute else "00" * 32
    dispute_id = dispute_id_for(job_id)
    start = chain.state.height
    claim = {"index": bad, "hash": claim_hash}
    chain.ok(CHALLENGER, "dispute_open", {"job_id": job_id, "bond": 1_000, "claim": claim})
    timers = {"challenger": 0.0, "solver": 0.0, "referee": 0.0}

    def leaf(i: int) -> tuple[int, str, list[bytes], int] | None:
        return run.store.leaf(run.job_id, i)

    while (d := chain.dispute(job_id)).phase in ("reveal", "bisect", "respond"):
        t = time.perf_counter()
        if d.phase == "respond":
            if challenger == "reexecute" and d.stepwise:
                start_state = state_or_none(d.lo_step)
                agree = check_segment(
                    run.spec, model, None, start_state, d.lo_step, d.mid_step, d.mid_hash
                ).ok
            elif challenger == "reexecute":
                agree = recompute(d.lo, d.mid).recomputed_hash == d.mid_hash
            else:
                agree = d.mid_step < steps[bad]
            timers["challenger"] += time.perf_counter() - t
            chain.ok(CHALLENGER, "dispute_respond", {"dispute_id": dispute_id, "agree": agree})
        else:
            body = next_move(dispute_id, d, leaf, step_hash)
            timers["solver"] += time.perf_counter() - t
            chain.ok(SOLVER, "dispute_bisect", body)
    narrowed = (d.lo_step, d.hi_step)
    chain.block()  # the committee draw at end_block of the due height
    d = chain.dispute(job_id)
    assert d.phase == "referee", d.phase
    votes = []
    for member, _ in d.committee:
        t = time.perf_counter()
        honest = (
            compute
            and check_segment(
                run.spec, model, None, state_or_none(d.lo_step), d.lo_step, d.hi_step, d.hi_hash
            ).ok
        )
        timers["referee"] += time.perf_counter() - t
        body = {"dispute_id": dispute_id, "honest": "solver" if honest else "challenger"}
        votes.append(chain.tx(A.index(member), "dispute_verdict", body))
    chain.block(*votes)
    d = chain.dispute(job_id)
    return Game(
        d.rounds,
        chain.state.height - start,
        timers["challenger"],
        timers["solver"],
        timers["referee"],
        d.outcome,
        narrowed,
        narrowed[1] - narrowed[0],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--every", default="100,20,10,4,2")
    args = parser.parse_args()
    model = Model.init(MLP, seed=0)
    everies = [int(e) for e in args.every.split(",")]
    honest_seconds(model, 50, 50)  # warm-up: torch and the strict settings
    print(
        f"# training: MLP {MLP['hidden']} hidden, {args.steps} steps, batch 32, strict; fake-train fakes 10%"
    )
    print("# honest solver wall time by checkpoint interval (checkpointing cost):")
    base = {e: honest_seconds(model, args.steps, e) for e in [args.steps, *everies]}
    for e, s in base.items():
        print(
            f"  every={e:>5}  leaves={args.steps // e + 1:>5}  {s:6.2f}s"
            f"  ({s / base[args.steps]:.2f}x the run without checkpoints)"
        )
    fixed, per_step = segment_cost(model, args.steps)
    print(
        f"# re-executing one segment costs {fixed * 1e3:.1f} ms fixed (model build, dataset, state decode/"
        f"encode/hash) + {per_step * 1e3:.2f} ms per step: wall overhead tracks the step share only when"
        f" steps per segment >> {fixed / per_step:.0f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        runs = [solve(model, args.steps, e, Path(tmp)) for e in everies]
        print(f"\n# detection over {args.draws} seeded draws (1 verifier, the ledger's sample rule)")
        print(
            "  every  segs  faked  rate_bps  detect   steps_reexec  reexec_wall/honest_wall"
            "  fails==faked∩sample"
        )
        for run in runs:
            for rate in RATES_BPS:
                rate_hit, share = detection(run, rate, args.draws)
                wall, n_run, _, exact = reexecute(run, model, rate)
                print(
                    f"  {run.every:>5}  {run.n_leaves - 1:>4}  {len(run.faked):>5}  {rate:>8}"
                    f"  {rate_hit:6.1%}"
                    f"   {share:11.1%}   {wall / base[run.every]:22.2f}  {exact} ({n_run} segs, {wall:.2f}s)"
                )
        print("\n# k independent verifiers (each its own draw) at 500 bps")
        for run in runs:
            for k in (1, 2, 3):
                rate_hit, share = detection(run, 500, args.draws, verifiers=k)
                print(
                    f"  every={run.every:>4}  k={k}  detect {rate_hit:6.1%}"
                    f"  total steps re-executed {share:6.1%}"
                )
        print(
            "\n# dispute rounds, pure ledger game over the real traces, down to one training step"
            " (claim at leaf 1, middle, last); bound = ceil(log2 leaves-1) + ceil(log2 every)"
        )
        for run in runs:
            n = run.n_leaves
            rounds = [play(run, model, bad, "none") for bad in (1, n // 2, n - 1)]
            cells = "  ".join(
                f"claim {b:>4}: {g.rounds:>2} rounds {g.blocks:>2} blocks {g.referee_steps} step"
                for b, g in zip((1, n // 2, n - 1), rounds, strict=True)
            )
            bound = round_bound(args.steps, run.every)
            print(f"  every={run.every:>4}  leaves={n:>5}  bound={bound:>2}  {cells}")
        print(
            "\n# disputes with real re-execution (claim = first / last faked leaf);"
            " blocks = dispute_open to verdict"
        )
        print(
            "  every  leaves  claim  challenger    rounds  blocks  outcome     challenger_s  solver_s"
            "  referee_s(3)  ref_steps  compute_s" + "".join(f"  @{b:g}s/block" for b in BLOCK_TIMES_S)
        )
        for run, who in itertools.product(runs, ("reexecute", "agree-below")):
            for bad in sorted({run.faked[0] + 1, run.faked[-1] + 1}):  # the first and last faked leaf
                g = play(run, model, bad, who)
                total = g.challenger_s + g.solver_s + g.referee_s
                chain_s = "".join(f"  {g.blocks * b + total:11.1f}s" for b in BLOCK_TIMES_S)
                print(
                    f"  {run.every:>5}  {run.n_leaves:>6}  {bad:>5}  {who:<12}  {g.rounds:>6}"
                    f"  {g.blocks:>6}  {g.outcome:<10}  {g.challenger_s:12.2f}  {g.solver_s:8.3f}"
                    f"  {g.referee_s:12.3f}  {g.referee_steps:>9}  {total:9.2f}{chain_s}"
                    f"  narrowed to steps {g.narrowed}"
                )


if __name__ == "__main__":
    main()
