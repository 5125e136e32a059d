"""A training run at step granularity for playing the dispute game on the pure ledger.

`Run` gives the full-state hash at every training step (wrong from step `diverge` on) and the
checkpoint trace a solver commits (`compute.trace.checkpoint_steps`: every `every` steps and
the last one). `solver_move` plays the solver honestly from its own run, over leaves with
Merkle proofs and then over steps; `challenger_answer` answers from the challenger's run, or
lies ("agree" / "disagree" with everything).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compute.trace import checkpoint_steps
from ledger.disputes import dispute_id_for
from ledger.merkle import leaf_hash, proof_of, root_of, tree_levels
from ledger.records_disputes import Dispute
from tests.trust_chain import h


@dataclass
class Run:
    steps: int
    every: int
    diverge: int | None = None  # the first step whose state is wrong (None: an honest run)
    tag: str = "run"
    checkpoints: list[int] = field(init=False, repr=False)
    levels: list[list[bytes]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.checkpoints = checkpoint_steps(self.steps, self.every)
        self.levels = tree_levels([leaf_hash(*self.leaf(i)) for i in range(self.n)])

    @property
    def n(self) -> int:
        return len(self.checkpoints)

    def state_at(self, step: int) -> str:
        wrong = self.diverge is not None and step >= self.diverge
        return h(f"{self.tag}-{'bad' if wrong else 'true'}-step-{step}")

    def hash_at(self, i: int) -> str:
        return self.state_at(self.checkpoints[i])

    def leaf(self, i: int) -> tuple[int, str]:
        return self.checkpoints[i], self.hash_at(i)

    def first_leaf_at_or_after(self, step: int) -> int:
        return next(i for i, s in enumerate(self.checkpoints) if s >= step)

    @property
    def root(self) -> str:
        return root_of(self.levels)

    def proof(self, i: int) -> list[bytes]:
        return proof_of(self.levels, i)


def solver_move(d: Dispute, run: Run) -> dict[str, Any]:
    """The solver's dispute_bisect body from its own run, in either stage."""
    base = {"dispute_id": dispute_id_for(d.job_id), "n_leaves": run.n}
    if d.stepwise:
        step = (d.lo_step + d.hi_step) // 2
        return base | {"mid": step, "step": step, "hash": run.state_at(step), "proof": []}
    if d.phase == "reveal":
        mid = min(d.claim_index, run.n - 1)
    else:
        mid = (d.lo + d.hi) // 2
    step, value = run.leaf(mid)
    return base | {"mid": mid, "step": step, "hash": value, "proof": run.proof(mid)}


def challenger_answer(d: Dispute, run: Run | str) -> dict[str, Any]:
    """dispute_respond: agree iff `run`'s state at the midpoint step is the solver's, or always
    "agree" / "disagree" for a lying challenger."""
    agree = run == "agree" if isinstance(run, str) else run.state_at(d.mid_step) == d.mid_hash
    return {"dispute_id": dispute_id_for(d.job_id), "agree": agree}
