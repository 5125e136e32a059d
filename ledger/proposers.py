"""Proposer order: the consensus ValidatorSet, with proposer priorities, of every height.

The ledger state holds each height's validator rows (address, key, power) but no proposer
priorities, so they are derived from the rows and the height alone: the weighted round robin
of the rows (ledger.consensus.validators), started from zero priorities and advanced
(h - 1) mod period steps, where period = total_power / gcd(powers) is the length of the
rotation (from zero priorities every validator is picked exactly power/gcd times per period,
and the priorities come back to zero). Every node, restarted or not, derives the same set.

Cost: consecutive heights with unchanged rows cost one step each; a change of the rows or a
restart costs up to min(h, period) steps of O(validators). That is fine for small or
equal-stake sets; for long chains with many unequal stakes the priorities belong in the state
(as CometBFT keeps them), which would make this module a lookup.
"""

from __future__ import annotations

import math

from ledger.consensus import ValidatorSet
from ledger.state import State, ValidatorPower, validator_set_at


def period(vset: ValidatorSet) -> int:
    """Steps after which the rotation of vset, started from zero priorities, repeats."""
    return vset.total_power // math.gcd(*(v.power for v in vset))


class ProposerSchedule:
    """`at(state, h)`: the consensus ValidatorSet of height h (h <= state.height + 2)."""

    def __init__(self) -> None:
        self._last: tuple[int, tuple[ValidatorPower, ...], ValidatorSet] | None = None

    def at(self, state: State, height: int) -> ValidatorSet:
        rows = validator_set_at(state, height)
        last = self._last
        if last is not None and last[1] == rows and last[0] == height:
            return last[2]
        if last is not None and last[1] == rows and last[0] == height - 1:
            vset = last[2].advance(1)
        else:
            base = ValidatorSet(rows)
            vset = base.advance((height - 1) % period(base))
        self._last = (height, rows, vset)
        return vset
