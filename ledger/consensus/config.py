"""Tunables of the consensus core: timeouts and the bounds that keep hostile input small.

Timeouts grow with the round (init + round x delta) so that after enough rounds they exceed
the real message delay and a round can succeed. CometBFT's local-test values are propose 40
ms and prevote/precommit 10 ms; the defaults here suit a gossip network over the internet.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.consensus.types import TimeoutKind

PROPOSAL_ROUNDS_AHEAD = 1  # proposals are held for rounds up to current + this
FUTURE_BUFFER = 1024  # messages held for height + 1 until start_height reaches it


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """Timeout of round r = init + r * delta, in milliseconds, per kind."""

    propose_ms: int = 3000
    propose_delta_ms: int = 500
    prevote_ms: int = 1000
    prevote_delta_ms: int = 500
    precommit_ms: int = 1000
    precommit_delta_ms: int = 500
    rebroadcast_ms: int = 2000
    rebroadcast_delta_ms: int = 500

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"timeout {name} must be a non-negative integer of milliseconds, got {value!r}"
                )

    def duration_ms(self, kind: TimeoutKind, round: int) -> int:
        init, delta = {
            TimeoutKind.PROPOSE: (self.propose_ms, self.propose_delta_ms),
            TimeoutKind.PREVOTE: (self.prevote_ms, self.prevote_delta_ms),
            TimeoutKind.PRECOMMIT: (self.precommit_ms, self.precommit_delta_ms),
            TimeoutKind.REBROADCAST: (self.rebroadcast_ms, self.rebroadcast_delta_ms),
        }[kind]
        return init + round * delta
