"""Records of the trust games: dispute games, job audits, verifier reports, reputation votes.

These are the immutable values stored in the ledger tables that `ledger.disputes`,
`ledger.audits` and `ledger.repvote` write (see `ledger.state` for the table list):

  disputes          dispute id -> Dispute (kept after the game closes)
  audits            job id -> Audit, from the canary seal or result commit until the job settles
  reports           (job id, verifier) -> Report, until the job settles
  repvotes          vote id -> RepVote (kept after the tally)
  repvote_commits   (vote id, voter) -> commitment (hex), dropped at the tally
  repvote_reveals   (vote id, voter) -> score, dropped at the tally
  game_timers       (due height, kind, id) -> what is due; kind is "dispute" (value: the phase),
                    "seed" (an audit's sample seed draw) or "repvote" (the tally)

This module imports nothing from `ledger.state` at run time (state imports it), so the helpers
that read a whole state (`game_held`, `game_problems`) take it untyped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ledger.state import State

SCORE_MAX = 10_000
# Dispute phases while the game runs; "closed" afterwards. Who must act in each:
# reveal / bisect: the solver; respond: the challenger; draw: end_block (committee draw);
# referee: the committee.
ACTIVE_PHASES = ("reveal", "bisect", "respond", "draw", "referee")
DISPUTE_OUTCOMES = ("solver", "challenger", "no_fault")
VERDICTS = ("solver", "challenger")
REPORT_VERDICTS = ("ok", "bad")
TIMER_KINDS = ("dispute", "seed", "repvote")


@dataclass(frozen=True, slots=True)
class Dispute:
    """One bisection game over a job's committed trace (checkpoints or inference batches).

    The interval (lo, hi] of leaf indices always has both parties agreeing on leaf lo (for
    lo == 0 of a training job: the spec's initial state) and disagreeing on leaf hi. `lo_hash`,
    `hi_hash` and `mid_hash` are the solver's leaf values, each proven against the job's
    trace_root ("" where not proven: lo == 0 / -1 at the start).

    Once a training game is down to one checkpoint interval (hi == lo + 1) wider than one step,
    it goes on over training steps (`stepwise`): lo and hi stay, the step interval
    (lo_step, hi_step] narrows, and `mid_step` / `mid_hash` are the solver's full-state hash at
    a step inside it, bound by the game itself (the trace commits only checkpoints).
    """

    job_id: str
    challenger: str
    solver: str
    kind: str  # the job's kind: "training" (bisect checkpoints) or "inference" (one batch)
    bond: int  # the challenger's bond: held while the game runs, 0 once settled
    claim_index: int
    claim_hash: str  # the challenger's value of leaf claim_index
    phase: str  # one of ACTIVE_PHASES, or "closed"
    due_height: int  # end_block of this height acts if the party to move stayed silent (0 closed)
    opened_height: int
    lo: int = 0
    hi: int = 0
    lo_step: int = 0
    hi_step: int = 0
    lo_hash: str = ""
    hi_hash: str = ""
    mid: int = 0
    mid_step: int = 0
    mid_hash: str = ""
    n_leaves: int = 0  # leaf count of the trace, fixed by the solver's reveal (0 before)
    rounds: int = 0  # bisect/respond rounds completed
    committee: tuple[tuple[str, int], ...] = ()  # (validator, voting weight), sorted by address
    votes: tuple[tuple[str, str], ...] = ()  # (member, "solver" | "challenger"), sorted by member
    outcome: str = ""  # once closed: one of DISPUTE_OUTCOMES
    reason: str = ""  # once closed: "referee", "timeout", "claim_agrees", "claim_out_of_range", ...
    closed_height: int = 0
    stepwise: bool = False  # the game bisects training steps inside leaf interval (lo, hi]

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    def held(self) -> int:
        return self.bond if self.active else 0


@dataclass(frozen=True, slots=True)
class Audit:
    """Audit data of one job: the submitter's sealed canary and the spot-check sample seed."""

    canary: str = ""  # sealed commitment (hex sha256), "" if none was posted
    canary_expected: str = ""  # the expected output hash, once revealed
    sample_seed: bytes = b""  # block entropy drawn after the result commit (b"" until drawn)
    sample_rate_bps: int = 0  # spot-check rate fixed at the draw (from the solver's reputation)
    seed_height: int = 0  # end_block of this height draws the seed (0 once drawn / not committed)


@dataclass(frozen=True, slots=True)
class Report:
    """A verifier's spot-check verdict on a committed job, with the bond it locked."""

    verdict: str  # "ok" or "bad"
    bond: int
    height: int


@dataclass(frozen=True, slots=True)
class RepVote:
    """A commit-reveal vote of the validators on the reputation of (subject, role)."""

    opener: str
    subject: str
    role: str
    evidence: bytes
    deposit: int  # held while "voting", 0 once refunded or burned
    open_height: int
    commit_end: int  # commits accepted in blocks open_height .. commit_end
    reveal_end: int  # reveals accepted in blocks commit_end + 1 .. reveal_end; tally at its end
    status: str  # "voting", "tallied", "no_quorum"
    consensus: int = 0  # stake-weighted median of the revealed scores
    tally: int = 0  # stake-weighted mean of the scores clipped to the consensus
    revealed_stake: int = 0
    new_reputation: int = 0

    def held(self) -> int:
        return self.deposit if self.status == "voting" else 0


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def _decoder(cls: type) -> Callable[[Any], Any]:
    return lambda row: cls(*(_tuplify(v) for v in row))


DECODERS: dict[str, Callable[[Any], Any]] = {
    "disputes": _decoder(Dispute),
    "audits": _decoder(Audit),
    "reports": _decoder(Report),
    "repvotes": _decoder(RepVote),
    "repvote_commits": str,
    "repvote_reveals": int,
    "game_timers": str,
}
GAME_TABLES = tuple(DECODERS)


def game_held(state: State) -> int:
    """Tokens held by the games: challenger bonds, report bonds, open vote deposits."""
    return (
        sum(d.held() for d in state.disputes.values())
        + sum(r.bond for r in state.reports.values())
        + sum(v.held() for v in state.repvotes.values())
    )


def _timer_problems(state: State) -> list[str]:
    timers: dict[tuple[str, str], tuple[int, str]] = {}
    problems: list[str] = []
    for (height, kind, key), what in sorted(state.game_timers.items()):
        if kind not in TIMER_KINDS or (kind, key) in timers:
            problems.append(f"game timer {(height, kind, key)} is unknown or duplicated")
        timers[(kind, key)] = (height, what)
    wanted: dict[tuple[str, str], tuple[int, str]] = {}
    wanted |= {("dispute", i): (d.due_height, d.phase) for i, d in state.disputes.items() if d.active}
    wanted |= {("seed", i): (a.seed_height, "seed") for i, a in state.audits.items() if a.seed_height}
    wanted |= {
        ("repvote", i): (v.reveal_end, "tally") for i, v in state.repvotes.items() if v.status == "voting"
    }
    if timers != wanted:
        problems.append(f"game timers {sorted(set(timers) ^ set(wanted))[:4]} do not match the games")
    return problems


def game_problems(state: State) -> list[str]:
    """Broken invariants of the game tables (an empty list when all is well)."""
    problems = _timer_problems(state)
    for did, d in sorted(state.disputes.items()):
        job = state.jobs.get(d.job_id)
        if d.bond < 0 or (d.active and (job is None or job.status != "disputed")):
            problems.append(f"dispute {did}: bond {d.bond}, job status {job.status if job else None}")
        if d.stepwise and (d.kind != "training" or d.hi != d.lo + 1 or not d.lo_step < d.hi_step):
            problems.append(f"dispute {did}: a step stage outside one training checkpoint interval")
    live = ("open", "assigned", "committed", "disputed")
    for jid in sorted(state.audits):
        if jid not in state.jobs or state.jobs[jid].status not in live:
            problems.append(f"audit of job {jid} outlived the job")
    for (jid, verifier), r in sorted(state.reports.items()):
        job = state.jobs.get(jid)
        if r.bond < 0 or job is None or job.status not in ("committed", "disputed"):
            problems.append(f"report {(jid, verifier)} is on a settled job or has a negative bond")
    open_votes = {vid for vid, v in state.repvotes.items() if v.status == "voting"}
    for table in ("repvote_commits", "repvote_reveals"):
        problems += [
            f"{table} {k} is on a closed vote"
            for k in sorted(getattr(state, table))
            if k[0] not in open_votes
        ]
    problems += [
        f"score {k} = {s} is outside [0, {SCORE_MAX}]"
        for k, s in sorted(state.repvote_reveals.items())
        if not 0 <= s <= SCORE_MAX
    ]
    return problems
