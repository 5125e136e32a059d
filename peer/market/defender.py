"""The solver's side of a dispute: reveal and bisect with Merkle proofs from its own trace.

When a verifier disputes a job this peer solved (ledger/disputes.py), only the solver can
move in the "reveal" and "bisect" phases, and a silent solver loses at the phase's deadline
(params.dispute_step_blocks). The defender follows the chain; on every committed state it
finds the active disputes where this peer is the solver and the solver must move, and posts
the move once per (dispute, phase, interval):

- reveal: dispute_bisect with mid = the claim index (or the last leaf when the claim lies
  beyond the trace), proving that leaf of the committed trace;
- bisect: dispute_bisect with mid = (lo + hi) // 2, proving that leaf.

The leaves come from the solver's checkpoint index (checkpoints.py: every training
checkpoint, or the batch hashes of an inference run), which is kept until the dispute ends.
`next_move` is the pure part (dispute + leaves -> tx body), shared with the benchmark.

Error handling: a refused move (a race with the deadline, a phase that moved on) is logged;
one that timed out is retried on the next height. A dispute over a job whose leaves this
peer no longer has is logged at ERROR (it will be lost by timeout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio

from ledger.disputes import disputes_by
from ledger.records_disputes import Dispute
from ledger.state import State
from peer.market.errors import TxFailed, Unavailable

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

SOLVER_PHASES = ("reveal", "bisect")

Leaf = tuple[int, str, list[bytes], int]  # (step, hash, proof, leaf count)


def move_index(d: Dispute, n_leaves: int) -> int:
    """The leaf the solver must prove next in dispute `d` (in a solver phase)."""
    if d.phase == "reveal":
        return n_leaves - 1 if d.claim_index >= n_leaves else d.claim_index
    assert d.phase == "bisect", d.phase
    return (d.lo + d.hi) // 2


def next_move(dispute_id: str, d: Dispute, leaf: Any) -> dict[str, Any]:
    """The dispute_bisect body for the solver's move, given `leaf(index) -> Leaf | None`.

    Raises LookupError when the solver does not have the leaf it must prove.
    """
    first = leaf(0)
    if first is None:
        raise LookupError(f"no trace leaves kept for job {d.job_id}")
    index = move_index(d, first[3])
    found = leaf(index)
    if found is None:
        raise LookupError(f"leaf {index} of job {d.job_id} is not kept")
    step, digest, proof, n = found
    return {
        "dispute_id": dispute_id,
        "mid": index,
        "step": step,
        "hash": digest,
        "n_leaves": n,
        "proof": proof,
    }


@dataclass(frozen=True)
class Move:
    """A move this defender posted (for the API and tests)."""

    dispute_id: str
    phase: str
    mid: int
    height: int
    error: str = ""


class Defender:
    """Answers the disputes over jobs this peer solved (see the module docstring)."""

    def __init__(self, market: MarketService) -> None:
        self.market = market
        self.moves: list[Move] = []  # newest last, written by `run`'s tasks only
        self._posted: set[tuple[str, str, int, int]] = set()

    def _due(self, state: State) -> list[tuple[str, Dispute]]:
        me = self.market.ledger.address
        due = []
        for dispute_id in disputes_by(state, party=me, active=True):
            d = state.disputes[dispute_id]
            if (
                d.solver == me
                and d.phase in SOLVER_PHASES
                and (dispute_id, d.phase, d.lo, d.hi) not in self._posted
            ):
                due.append((dispute_id, d))
        return due

    async def run(self) -> None:
        height = 0
        async with trio.open_nursery() as nursery:
            while True:
                state = await self.market.watch.wait_above(height)
                height = state.height
                for dispute_id, d in self._due(state):
                    self._posted.add((dispute_id, d.phase, d.lo, d.hi))
                    nursery.start_soon(self._move, dispute_id, d, height)

    async def _move(self, dispute_id: str, d: Dispute, height: int) -> None:
        store = self.market.checkpoints
        try:
            body = await self.market.in_thread(next_move, dispute_id, d, lambda i: store.leaf(d.job_id, i))
        except LookupError as e:
            log.error("cannot defend a dispute", dispute=dispute_id[:16], job=d.job_id[:16], error=str(e))
            self.moves.append(Move(dispute_id, d.phase, -1, height, str(e)))
            return
        try:
            await self.market.ledger.send("dispute_bisect", body)
        except Unavailable as e:  # not committed in time: try again on the next height
            self._posted.discard((dispute_id, d.phase, d.lo, d.hi))
            log.warning("dispute move not committed yet", dispute=dispute_id[:16], error=str(e))
            return
        except TxFailed as e:
            log.warning("dispute move refused", dispute=dispute_id[:16], phase=d.phase, error=str(e))
            self.moves.append(Move(dispute_id, d.phase, body["mid"], height, str(e)))
            return
        log.info("dispute move posted", dispute=dispute_id[:16], phase=d.phase, mid=body["mid"])
        self.moves.append(Move(dispute_id, d.phase, body["mid"], height))
