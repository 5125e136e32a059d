"""The dispute game: a challenger and a solver bisect the job's committed trace down to one step,
and a committee of validators re-executes that step.

Leaves are those of the job's trace_root (ledger.merkle): (checkpoint step, state hash) for a
training job, (batch index, batch output hash) for an inference job. dispute id =
`dispute_id_for(job_id)` (a job is disputed at most once). H = the height of the current block,
T = params.dispute_step_blocks; a move in the block of its deadline still counts.

1. dispute_open {job_id, bond, claim: {index, hash}} by a registered "verifier" other than the
   solver, while the job is "committed" (its challenge window): bond >= dispute_min_bond is
   locked, the job becomes "disputed" (so it does not finalize), phase "reveal", due H + T.
   A training claim must name index >= 1: leaf 0 is the initial state fixed by the spec.
2. reveal (the solver's dispute_bisect with mid = claim index): the solver proves its leaf
   there, declaring n_leaves (fixed for the game; a valid proof also proves it, because the
   root seals the count). If the claim index is >= n_leaves the solver proves leaf n_leaves - 1
   instead and wins ("claim_out_of_range"); if its hash equals the claim's, it wins
   ("claim_agrees"). Otherwise hi = the claim index; training: lo = 0 (the spec's initial
   state, step 0), phase "bisect"; inference: lo = hi - 1 and straight to "draw" (batches are
   independent: the unit is batch hi itself).
3. bisect over leaves (solver): dispute_bisect {dispute_id, mid = (lo + hi) // 2, step, hash,
   n_leaves, proof}: a proven leaf with lo_step < step < hi_step; phase "respond", due H + T.
   respond (challenger): dispute_respond {dispute_id, agree}: agree -> lo = mid, else hi = mid;
   one round done. Only the solver bisects, because only its values can be checked against a
   commitment; a challenger that answers against its own trace only narrows the game onto a
   step where it is wrong.
4. bisect over steps: when a training game reaches hi == lo + 1 with hi_step > lo_step + 1 (a
   checkpoint interval of several steps), it does not go to the draw: `stepwise` is set and
   the game bisects the training steps of (lo_step, hi_step] the same way. The solver's
   dispute_bisect names mid = step = (lo_step + hi_step) // 2 and the hash of its full
   training state at that step, with n_leaves unchanged and an empty proof (the trace commits
   only checkpoints; the hash binds the solver within the game, and it must serve that state).
   respond: agree -> lo_step, lo_hash = the mid's, else hi_step, hi_hash = the mid's; lo and hi
   stay. The game leaves the bisection when one unit is left: hi == lo + 1 and
   hi_step == lo_step + 1 (always so for inference): phase "draw", due H + 1; else "bisect",
   due H + T.
   Rounds: at most ceil(log2(claim index)) over leaves plus ceil(log2(hi_step - lo_step)) over
   the steps of the last interval (`max_rounds`); for a job of S steps checkpointed every E
   that is <= ceil(log2(ceil(S / E))) + ceil(log2(E)) <= ceil(log2(S)) + 1 (`round_bound`).
5. draw (end_block of the due height, so with entropy the parties could not know): a committee
   of up to dispute_committee_size validators of the active set, drawn by voting power without
   replacement (`ledger.randomness.weighted_draw`), excluding the solver, challenger and
   submitter; phase "referee", due H + dispute_referee_blocks. No one to draw: "no_fault".
6. referee: each member posts dispute_verdict {dispute_id, honest}: whether one execution of
   the last unit gives the solver's hash: training step hi_step from the state at lo_step
   (lo_hash; the spec's initial state at step 0), inference batch hi. The game ends when every
   member has voted, or at the deadline: a side backed by more than half of the committee's
   weight wins; otherwise (split, silent or partly silent committee) the outcome is "no_fault".
Timeouts: a silent solver (reveal / bisect) loses; a silent challenger (respond) loses.

Settlement (W = dispute_jackpot_bps, C = dispute_committee_reward_bps; C is taken only when a
committee majority decided, and is split among the members of the majority by weight, floored;
what is not paid out is burned):
- challenger wins: jobs.settle_dispute(solver dishonest): bounty back to the submitter, the
  solver's bond pays W to the challenger and C to the committee, solver reputation down; the
  challenger's own bond is returned.
- solver wins: jobs.settle_dispute(solver honest): the job finalizes and pays as if unchallenged;
  the challenger's bond pays W to the solver and C to the committee.
- no_fault: nobody was shown wrong: the job finalizes as if unchallenged, the challenger gets its
  bond back and keeps its reputation. (A silent committee is not evidence against either
  party, and a challenger-favourable rule would let anyone grief honest solvers while
  validators are slow.)
Committee members who voted against a majority verdict, and all members who did not vote, lose
validator reputation (EMA step reputation_referee_bps towards 0).
"""

from __future__ import annotations

import hashlib
from dataclasses import fields, replace
from typing import Any

from ledger import audits
from ledger.accounts import burn, credit, debit
from ledger.errors import (
    AlreadyVoted,
    BadBisection,
    BadProof,
    BondTooLow,
    InvalidDispute,
    NotOnCommittee,
    NotRegistered,
    NotYourMove,
    UnknownDispute,
    UnknownJob,
    WrongDisputePhase,
)
from ledger.jobs import dispute_job, settle_dispute
from ledger.merkle import MAX_LEAVES, verify_leaf
from ledger.payout import rate, share
from ledger.randomness import weighted_draw
from ledger.records_disputes import Dispute
from ledger.state import Journal, State
from ledger.tx import Tx

DISPUTE_DOMAIN = b"hivemesh/dispute/v1\x00"


def dispute_id_for(job_id: str) -> str:
    """The id of the dispute over `job_id`."""
    return hashlib.sha256(DISPUTE_DOMAIN + bytes.fromhex(job_id)).hexdigest()


def _log2_ceil(n: int) -> int:
    """ceil(log2(n)) for n >= 1 (0 for n <= 1), exactly, in integers."""
    return (n - 1).bit_length() if n > 1 else 0


def max_rounds(claim_index: int, interval_steps: int = 1) -> int:
    """Most bisect/respond rounds of a training game over claim index `claim_index` whose last
    checkpoint interval spans `interval_steps` steps: the leaf stage plus the step stage."""
    return _log2_ceil(claim_index) + _log2_ceil(interval_steps)


def round_bound(steps: int, checkpoint_every: int) -> int:
    """Most rounds any training game over a job of `steps` steps checkpointed every
    `checkpoint_every` can take; always <= ceil(log2(steps)) + 1."""
    every = max(1, min(checkpoint_every, steps))
    intervals = -(-steps // every)  # the last interval may be shorter, never longer
    return max_rounds(intervals, every)


def _dispute(j: Journal, dispute_id: str) -> Dispute:
    d = j.state.disputes.get(dispute_id)
    if d is None:
        raise UnknownDispute(dispute_id)
    return d


def _put(j: Journal, dispute_id: str, d: Dispute) -> None:
    """Write a dispute and keep its timer in step with its phase and due height."""
    old = j.state.disputes.get(dispute_id)
    if old is not None and old.active:
        j.delete("game_timers", (old.due_height, "dispute", dispute_id))
    if d.active:
        assert d.due_height > j.state.height, (dispute_id, d.due_height)
        j.put("game_timers", (d.due_height, "dispute", dispute_id), d.phase)
    j.put("disputes", dispute_id, d)


def _step_due(j: Journal) -> int:
    return j.state.height + j.state.params.dispute_step_blocks


# ---- tx handlers ----------------------------------------------------------------------------


def dispute_open(j: Journal, tx: Tx, sender: str) -> None:
    b, s = tx.body, j.state
    job_id, bond, claim = b["job_id"], b["bond"], b["claim"]
    job = s.jobs.get(job_id)
    if job is None:
        raise UnknownJob(job_id)
    acct = s.accounts.get(sender)
    if acct is None or not acct.has_role("verifier"):
        raise NotRegistered(sender, "verifier")
    if bond < s.params.dispute_min_bond:
        raise BondTooLow(s.params.dispute_min_bond, bond)
    if job.kind == "training" and claim["index"] == 0:
        raise InvalidDispute("leaf 0 of a training trace is the spec's initial state; claim a later one")
    dispute_job(j, job_id, sender)
    debit(j, sender, bond)
    dispute_id = dispute_id_for(job_id)
    assert dispute_id not in s.disputes, dispute_id
    d = Dispute(
        job_id=job_id,
        challenger=sender,
        solver=job.solver,
        kind=job.kind,
        bond=bond,
        claim_index=claim["index"],
        claim_hash=claim["hash"],
        phase="reveal",
        due_height=_step_due(j),
        opened_height=s.height,
    )
    _put(j, dispute_id, d)


def _check_leaf(j: Journal, dispute_id: str, d: Dispute, b: dict[str, Any]) -> None:
    root = j.state.jobs[d.job_id].trace_root
    if d.kind == "inference" and b["step"] != b["mid"]:
        raise BadBisection(f"an inference leaf's step is its batch index {b['mid']}, got {b['step']}")
    if not verify_leaf(root, b["step"], b["hash"], b["mid"], b["n_leaves"], b["proof"]):
        raise BadProof(dispute_id, b["mid"])


def _reveal(j: Journal, dispute_id: str, d: Dispute, b: dict[str, Any]) -> None:
    n = b["n_leaves"]
    if not 1 <= n <= MAX_LEAVES:
        raise BadBisection(f"n_leaves must be in [1, {MAX_LEAVES}], got {n}")
    outside = d.claim_index >= n
    want = n - 1 if outside else d.claim_index
    if b["mid"] != want:
        raise BadBisection(f"the reveal must prove leaf {want}, got {b['mid']}")
    _check_leaf(j, dispute_id, d, b)
    if outside or b["hash"] == d.claim_hash:
        _finish(
            j,
            dispute_id,
            replace(d, n_leaves=n),
            "solver",
            "claim_out_of_range" if outside else "claim_agrees",
        )
        return
    d = replace(d, n_leaves=n, hi=d.claim_index, hi_step=b["step"], hi_hash=b["hash"])
    if d.kind == "inference":
        d = replace(d, lo=d.hi - 1, lo_step=d.hi_step - 1)
    elif b["step"] < 1:
        raise BadBisection(f"checkpoint {d.hi} of a training trace cannot be at step {b['step']}")
    _put(j, dispute_id, _after_round(j, d))


def _after_round(j: Journal, d: Dispute) -> Dispute:
    """The next phase once the interval is updated: the draw when one unit (one training step,
    one inference batch) is left, else bisect, over steps once one checkpoint interval is left."""
    if d.hi == d.lo + 1 and d.hi_step == d.lo_step + 1:
        return replace(d, phase="draw", due_height=j.state.height + 1)
    if d.hi == d.lo + 1:
        assert d.kind == "training" and d.hi_step > d.lo_step + 1, (d.kind, d.lo_step, d.hi_step)
        d = replace(d, stepwise=True)
    return replace(d, phase="bisect", due_height=_step_due(j))


def _bisect_step(j: Journal, dispute_id: str, d: Dispute, b: dict[str, Any]) -> None:
    """The solver names its state hash at the middle training step of (lo_step, hi_step]."""
    want = (d.lo_step + d.hi_step) // 2
    if b["mid"] != want or b["step"] != want:
        raise BadBisection(
            f"the step stage names step {want} of ({d.lo_step}, {d.hi_step}] as mid and step, "
            f"got mid {b['mid']}, step {b['step']}"
        )
    if b["proof"]:
        raise BadBisection("a step-stage move carries no proof: the trace commits only checkpoints")
    moved = replace(d, phase="respond", mid_step=want, mid_hash=b["hash"])
    _put(j, dispute_id, replace(moved, due_height=_step_due(j)))


def dispute_bisect(j: Journal, tx: Tx, sender: str) -> None:
    b = dict(tx.body)
    dispute_id = b["dispute_id"]
    d = _dispute(j, dispute_id)
    if d.phase not in ("reveal", "bisect"):
        raise WrongDisputePhase(dispute_id, d.phase, "reveal or bisect (the solver's move)")
    if sender != d.solver:
        raise NotYourMove(dispute_id, d.solver, sender)
    if d.phase == "reveal":
        _reveal(j, dispute_id, d, b)
        return
    if b["n_leaves"] != d.n_leaves:
        raise BadBisection(f"the trace has {d.n_leaves} leaves (fixed by the reveal), got {b['n_leaves']}")
    if d.stepwise:
        _bisect_step(j, dispute_id, d, b)
        return
    want = (d.lo + d.hi) // 2
    if b["mid"] != want:
        raise BadBisection(f"the midpoint of ({d.lo}, {d.hi}] is {want}, got {b['mid']}")
    if not d.lo_step < b["step"] < d.hi_step:
        raise BadBisection(f"step {b['step']} is not strictly between {d.lo_step} and {d.hi_step}")
    _check_leaf(j, dispute_id, d, b)
    moved = replace(d, phase="respond", mid=want, mid_step=b["step"], mid_hash=b["hash"])
    _put(j, dispute_id, replace(moved, due_height=_step_due(j)))


def dispute_respond(j: Journal, tx: Tx, sender: str) -> None:
    dispute_id = tx.body["dispute_id"]
    d = _dispute(j, dispute_id)
    if d.phase != "respond":
        raise WrongDisputePhase(dispute_id, d.phase, "respond (the challenger's move)")
    if sender != d.challenger:
        raise NotYourMove(dispute_id, d.challenger, sender)
    agree = tx.body["agree"]
    if d.stepwise and agree:  # over steps the leaf interval stays; only the steps narrow
        d = replace(d, lo_step=d.mid_step, lo_hash=d.mid_hash)
    elif d.stepwise:
        d = replace(d, hi_step=d.mid_step, hi_hash=d.mid_hash)
    elif agree:
        d = replace(d, lo=d.mid, lo_step=d.mid_step, lo_hash=d.mid_hash)
    else:
        d = replace(d, hi=d.mid, hi_step=d.mid_step, hi_hash=d.mid_hash)
    d = replace(d, mid=0, mid_step=0, mid_hash="", rounds=d.rounds + 1)
    _put(j, dispute_id, _after_round(j, d))


def dispute_verdict(j: Journal, tx: Tx, sender: str) -> None:
    dispute_id = tx.body["dispute_id"]
    d = _dispute(j, dispute_id)
    if d.phase != "referee":
        raise WrongDisputePhase(dispute_id, d.phase, "referee")
    if sender not in dict(d.committee):
        raise NotOnCommittee(dispute_id, sender)
    if sender in dict(d.votes):
        raise AlreadyVoted(f"dispute {dispute_id}", sender)
    d = replace(d, votes=tuple(sorted((*d.votes, (sender, tx.body["honest"])))))
    if len(d.votes) == len(d.committee):
        _finish(j, dispute_id, d, _majority(d), "referee")
    else:
        _put(j, dispute_id, d)


# ---- end_block ------------------------------------------------------------------------------


def _majority(d: Dispute) -> str:
    """The side backed by more than half the committee's weight, else "no_fault"."""
    weights = dict(d.committee)
    total = sum(weights.values())
    for side in ("solver", "challenger"):
        if 2 * sum(weights[m] for m, v in d.votes if v == side) > total:
            return side
    return "no_fault"


def _draw(j: Journal, dispute_id: str, d: Dispute) -> None:
    s = j.state
    parties = {d.solver, d.challenger, s.jobs[d.job_id].submitter}
    candidates = [(v.address, v.power) for v in s.validator_set if v.address not in parties]
    committee = weighted_draw(
        s.entropy, f"committee/{dispute_id}", candidates, s.params.dispute_committee_size
    )
    if not committee:
        _finish(j, dispute_id, d, "no_fault", "no_committee")
        return
    due = s.height + s.params.dispute_referee_blocks
    _put(j, dispute_id, replace(d, phase="referee", committee=tuple(committee), due_height=due))


def process_due(j: Journal) -> list[str]:
    """end_block step: act on every dispute whose deadline is this height. Returns their ids."""
    s = j.state
    due = sorted(k for k in s.game_timers if k[1] == "dispute" and k[0] <= s.height)
    for _, _, dispute_id in due:
        d = s.disputes[dispute_id]
        if d.phase in ("reveal", "bisect"):
            _finish(j, dispute_id, d, "challenger", "timeout")
        elif d.phase == "respond":
            _finish(j, dispute_id, d, "solver", "timeout")
        elif d.phase == "draw":
            _draw(j, dispute_id, d)
        else:
            assert d.phase == "referee", (dispute_id, d.phase)
            _finish(j, dispute_id, d, _majority(d), "referee")
    return [k[2] for k in due]


# ---- settlement -----------------------------------------------------------------------------


def _pay_committee(j: Journal, pot: int, majority: list[tuple[str, int]]) -> None:
    """Split `pot` among the majority by weight (floored); burn what is left."""
    total = sum(w for _, w in majority)
    paid = 0
    for member, weight in majority:
        amount = pot * weight // total
        if amount:
            credit(j, member, amount)
            paid += amount
    if pot > paid:
        burn(j, pot - paid)


def _finish(j: Journal, dispute_id: str, d: Dispute, outcome: str, reason: str) -> None:
    """Close the game with `outcome` and settle the job, the bonds and the committee."""
    s = j.state
    p = s.params
    job = s.jobs[d.job_id]
    votes = dict(d.votes)
    majority = [(m, w) for m, w in d.committee if votes.get(m) == outcome]
    reward_bps = p.dispute_committee_reward_bps if majority else 0
    if outcome == "challenger":
        settle_dispute(j, d.job_id, False, d.challenger, p.dispute_jackpot_bps + reward_bps)
        pot = share(job.bond, p.dispute_jackpot_bps + reward_bps) - share(job.bond, p.dispute_jackpot_bps)
        if pot:
            debit(j, d.challenger, pot)  # the committee's part of what settle_dispute paid out
            _pay_committee(j, pot, majority)
        credit(j, d.challenger, d.bond)
    elif outcome == "solver":
        settle_dispute(j, d.job_id, True, d.challenger, p.dispute_jackpot_bps)
        compensation, pot = share(d.bond, p.dispute_jackpot_bps), share(d.bond, reward_bps)
        if compensation:
            credit(j, d.solver, compensation)
        if pot:
            _pay_committee(j, pot, majority)
        if d.bond > compensation + pot:
            burn(j, d.bond - compensation - pot)
    else:
        key = (d.challenger, "verifier")
        kept = s.reputation.get(key)
        audits.settle_job(j, d.job_id, None)
        settle_dispute(j, d.job_id, True, d.challenger, p.dispute_jackpot_bps)
        if kept is None:  # no fault: undo settle_dispute's "challenger lost" reputation step
            j.delete("reputation", key)
        else:
            j.put("reputation", key, kept)
        credit(j, d.challenger, d.bond)
    for member, _ in d.committee:
        if member not in votes or (outcome != "no_fault" and votes[member] != outcome):
            rate(j, member, "validator", up=False, alpha_bps=p.reputation_referee_bps)
    closed = replace(
        d, phase="closed", due_height=0, bond=0, outcome=outcome, reason=reason, closed_height=s.height
    )
    _put(j, dispute_id, closed)


# ---- queries (pure, read-only) ------------------------------------------------------------

_TO_MOVE = {
    "reveal": "solver",
    "bisect": "solver",
    "respond": "challenger",
    "draw": "ledger",
    "referee": "committee",
}


def dispute(state: State, dispute_id: str) -> dict[str, Any]:
    """Everything about one dispute as a plain dict, with who must move next ("to_move")."""
    d = state.disputes.get(dispute_id)
    if d is None:
        raise UnknownDispute(dispute_id)
    out: dict[str, Any] = {"dispute_id": dispute_id} | {f.name: getattr(d, f.name) for f in fields(d)}
    out["committee"] = [list(c) for c in d.committee]
    out["votes"] = dict(d.votes)
    out["to_move"] = _TO_MOVE.get(d.phase)
    out |= next_move_of(d)
    out["held"] = d.held()
    return out


def next_move_of(d: Dispute) -> dict[str, Any]:
    """What the solver must post next: {"stage": "leaves" | "steps", "next_mid", "next_step"}.

    Over leaves next_mid is the leaf to prove (its step is the leaf's, next_step None); over
    steps both are the training step whose state hash to name. None when it is not a bisect.
    """
    stage = "steps" if d.stepwise else "leaves"
    if d.phase != "bisect":
        return {"stage": stage, "next_mid": None, "next_step": None}
    if d.stepwise:
        step = (d.lo_step + d.hi_step) // 2
        return {"stage": stage, "next_mid": step, "next_step": step}
    return {"stage": stage, "next_mid": (d.lo + d.hi) // 2, "next_step": None}


def disputes_by(state: State, *, party: str | None = None, active: bool | None = None) -> list[str]:
    """Ids of the disputes where `party` is solver, challenger or committee member (any if None),
    optionally only the active (or closed) ones, oldest first."""
    return [
        did
        for _, did in sorted(
            (d.opened_height, did)
            for did, d in state.disputes.items()
            if (active is None or d.active == active)
            and (party is None or party in (d.solver, d.challenger) or party in dict(d.committee))
        )
    ]
