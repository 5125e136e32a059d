"""Job lifecycle: the job_post / job_award / job_bid / job_commit / job_accept / job_cancel handlers,
the end_block timers (winner choice, missed deadlines, finalization), the dispute hook and the job
queries.

Job id: `job_id_for(chain id, submitter, tx nonce)`, the hex sha256 of a domain tag and the
canonical msgpack [chain, submitter, nonce]. The submitter knows it before its tx is included
(to gossip the spec under it) and it is unique: an (address, nonce) is admitted only once.

A job's life (H = the height of the block in which the step happens):
- job_post at H: the bounty moves from the submitter into escrow; "open". The model must be
  registered; bid_window_blocks and deadline_blocks in [1, max_job_window_blocks];
  challenge_window_blocks in [min_challenge_window_blocks, max_job_window_blocks]. Bids close
  at H + bid_window_blocks (bids in that block still count).
- job_award at H (ledger.quotes): a job_post without a bid window that carries a solver's
  signed quote and assigns the job to that solver at once. Its job id is
  `award_job_id(chain id, submitter, job_salt)` (the quote signs it before the tx has a nonce;
  a salt used before is refused: DuplicateJob); its `canary` commitment, unless "", is sealed
  with it (ledger.canary). Same model and window checks
  (deadline, challenge window); the quote must verify for the job id, spec_hash,
  deadline_blocks, price, bond and encryption_key of the tx and H <= quote_expires; the solver
  must pass what a job_bid checks (registered, not the submitter, price, bond, requirements).
  The bounty and the solver's bond are locked; "assigned" with bid_window_blocks 0 (bids_close
  = H), deadline = H + deadline_blocks. From there it is a job like any assigned one.
- job_bid while open: the sender is registered as "solver" and is not the submitter; price <=
  bounty and <= requirements.max_price; bond >= payout.min_bond(price); solver reputation >=
  requirements.min_reputation; stake (bonded + bond) >= requirements.min_stake; at most
  max_bids_per_job bidders. The bond is locked. A new bid by the same solver replaces its old
  one (the old bond is refunded first).
- job_cancel by the submitter while open: bounty and every bid bond refunded; "cancelled".
- end_block of the bids-close height: bids still eligible (requirements checked again with
  reputation and stake as they are then) are scored with payout.bid_score; the highest score
  wins, ties going to the lower address. The winner's bond moves into the job, every other bond
  is refunded; "assigned", deadline = H + deadline_blocks. No eligible bid: bounty refunded,
  "expired".
- job_commit by the assigned solver while assigned (so at a height <= deadline): output hash,
  trace root, result size; "committed"; the challenge window ends at H + challenge_window_blocks.
- end_block of the deadline, still "assigned": payout.pay_missed, "missed".
- job_accept by the submitter while "committed": finalized at once, exactly as at the end of
  the challenge window (the submitter gives up its own challenge time).
- end_block of the challenge end, still "committed": payout.pay_finalized, "finalized".
- Dispute hook for the dispute game (no tx calls it yet): `open_dispute` while "committed" makes
  the job "disputed", which has no timer, so nothing finalizes it; `resolve_dispute` then either
  finalizes it (solver honest; the challenger's verifier reputation goes down) or reverses it
  (payout.pay_reversed; "reversed").

Audits (ledger.audits): job_commit schedules the job's spot-check sample seed; whenever a job
leaves "committed" or "disputed" its verifier reports are settled (with the dispute's verdict
when there is one). The dispute game itself (txs, bisection, committee) is ledger.disputes.

Timers: `state.job_timers` holds (due height, job id) -> status for every job that is "open",
"assigned" or "committed", so end_block touches only the jobs due in that block, in id order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any

from gossip.envelope import packb
from ledger import audits
from ledger.accounts import credit, debit
from ledger.errors import (
    AlreadyCommitted,
    BadQuote,
    BidWindowClosed,
    BondTooLow,
    DeadlinePassed,
    DuplicateJob,
    InvalidDispute,
    InvalidTx,
    NotAssignedSolver,
    NotRegistered,
    NotSubmitter,
    PriceTooHigh,
    QuoteExpired,
    RequirementNotMet,
    SelfDealing,
    TooManyBids,
    UnknownJob,
    UnknownModel,
    WindowOutOfRange,
    WrongJobStatus,
)
from ledger.params import BPS
from ledger.payout import bid_score, min_bond, pay_finalized, pay_missed, pay_reversed, rate, reputation_of
from ledger.quotes import Quote
from ledger.records_disputes import Audit
from ledger.state import TIMED_STATUSES, Bid, Job, Journal, State
from ledger.tx import Tx, check_address

JOB_DOMAIN = b"hivemesh/job/v1\x00"
AWARD_DOMAIN = b"hivemesh/job-award/v1\x00"


def job_id_for(chain_id: str, submitter: str, nonce: int) -> str:
    """The id of the job posted by `submitter`'s tx with `nonce` on `chain_id`."""
    return hashlib.sha256(JOB_DOMAIN + packb([chain_id, submitter, nonce])).hexdigest()


def award_job_id(chain_id: str, submitter: str, salt: bytes) -> str:
    """The id of the job `submitter` awards with `salt` on `chain_id` (job_award): known before the
    tx is signed, so solvers can quote on it whatever nonce the tx ends up with."""
    return hashlib.sha256(AWARD_DOMAIN + packb([chain_id, submitter, salt])).hexdigest()


def _job(j: Journal, job_id: str) -> Job:
    job = j.state.jobs.get(job_id)
    if job is None:
        raise UnknownJob(job_id)
    return job


def submitted_job(j: Journal, job_id: str, sender: str) -> Job:
    """Job `job_id`, which `sender` must have submitted (its cancel, accept and canary txs)."""
    job = _job(j, job_id)
    if sender != job.submitter:
        raise NotSubmitter(job_id, job.submitter, sender)
    return job


def _put(j: Journal, job_id: str, job: Job) -> None:
    """Write a job and keep its timer in step with its status and due height."""
    old = j.state.jobs.get(job_id)
    if old is not None and old.status in TIMED_STATUSES:
        j.delete("job_timers", (old.due_height, job_id))
    if job.status in TIMED_STATUSES:
        assert job.due_height > j.state.height, (job_id, job.due_height)
        j.put("job_timers", (job.due_height, job_id), job.status)
    j.put("jobs", job_id, job)


def _close(j: Journal, job_id: str, job: Job, status: str) -> None:
    _put(j, job_id, replace(job, status=status, due_height=0, closed_height=j.state.height))


def _stake_of(state: State, address: str) -> int:
    """Bonded stake held by `address`: its validator self-stake plus its delegations."""
    v = state.validators.get(address)
    own = v.self_stake if v is not None else 0
    return own + sum(amount for (d, _), amount in state.delegations.items() if d == address)


def unmet_requirement(
    state: State, requirements: Mapping[str, int], solver: str, bond: int
) -> RequirementNotMet | None:
    """The first of a job's `requirements` (min_reputation, min_stake) that `solver`, putting up
    `bond`, fails in `state`, else None. What a bid, an award and the winner choice check."""
    rep = reputation_of(state, solver, "solver")
    if rep < requirements.get("min_reputation", 0):
        return RequirementNotMet("solver reputation", requirements["min_reputation"], rep)
    stake = _stake_of(state, solver) + bond
    if stake < requirements.get("min_stake", 0):
        return RequirementNotMet("stake (bonded + bond)", requirements["min_stake"], stake)
    return None


def _check_solver(state: State, job_id: str, job: Job, solver: str, price: int, bond: int) -> None:
    reqs = dict(job.requirements)
    check_offer(state, job_id, job.submitter, job.bounty, reqs, solver, price, bond)


def _unmet(state: State, job: Job, solver: str, bond: int) -> RequirementNotMet | None:
    """The first requirement of `job` that `solver` (bidding with `bond`) fails, else None."""
    return unmet_requirement(state, dict(job.requirements), solver, bond)


def offer_score(state: State, bounty: int, solver: str, price: int, bond: int) -> int:
    """payout.bid_score of `solver` offering `price` with `bond` for a job of `bounty`, with its
    reputation and stake (bonded + bond) as they are in `state`. Requires 0 < price <= bounty."""
    stake = _stake_of(state, solver) + bond
    return bid_score(state.params, bounty, price, reputation_of(state, solver, "solver"), stake)


def _check_window(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise WindowOutOfRange(name, lo, hi, value)


def _bids_of(state: State, job_id: str) -> list[tuple[str, Bid]]:
    """(solver, bid) of every bid on `job_id`, sorted by solver address."""
    return sorted((solver, b) for (jid, solver), b in state.bids.items() if jid == job_id)


# ---- tx handlers ----------------------------------------------------------------------------


def _posted(j: Journal, tx: Tx, sender: str, job_id: str) -> Job:
    """The "open" job `job_id` that a job_post or job_award body describes, after the checks both
    share: the model is registered, the windows are in range (a job_award has no bid window)."""
    b, s = tx.body, j.state
    p = s.params
    if b["model_hash"] not in s.models:
        raise UnknownModel(b["model_hash"])
    bid_window = b.get("bid_window_blocks", 0)
    if "bid_window_blocks" in b:
        _check_window("bid_window_blocks", bid_window, 1, p.max_job_window_blocks)
    _check_window("deadline_blocks", b["deadline_blocks"], 1, p.max_job_window_blocks)
    lo = p.min_challenge_window_blocks
    _check_window("challenge_window_blocks", b["challenge_window_blocks"], lo, p.max_job_window_blocks)
    if job_id in s.jobs:
        raise DuplicateJob(job_id)
    return Job(
        submitter=sender,
        spec_hash=b["spec_hash"],
        model_hash=b["model_hash"],
        kind=b["kind"],
        bounty=b["bounty"],
        requirements=tuple(sorted(b["requirements"].items())),
        bid_window_blocks=bid_window,
        deadline_blocks=b["deadline_blocks"],
        challenge_window_blocks=b["challenge_window_blocks"],
        post_height=s.height,
        status="open",
        due_height=s.height + bid_window,
    )


def check_offer(
    state: State,
    job_id: str,
    submitter: str,
    bounty: int,
    requirements: Mapping[str, int],
    solver: str,
    price: int,
    bond: int,
) -> None:
    """What a bid or a quote by `solver` at `price` with `bond` must pass for the job of
    `submitter` and `bounty` (its reputation and stake requirements: `unmet_requirement`).
    Raises SelfDealing, NotRegistered, PriceTooHigh or BondTooLow."""
    if solver == submitter:
        raise SelfDealing(job_id, solver)
    acct = state.accounts.get(solver)
    if acct is None or not acct.has_role("solver"):
        raise NotRegistered(solver, "solver")
    if price > bounty:
        raise PriceTooHigh(bounty, price)
    max_price = requirements.get("max_price")
    if max_price is not None and price > max_price:
        raise PriceTooHigh(max_price, price, "max_price")
    minimum = min_bond(price, state.params.min_solver_bond_bps)
    if bond < minimum:
        raise BondTooLow(minimum, bond)


def _assigned(state: State, job: Job, solver: str, price: int, bond: int, encryption_key: bytes) -> Job:
    """`job` assigned to `solver` at this height (by a bid window's winner or by an award)."""
    return replace(
        job,
        status="assigned",
        solver=solver,
        price=price,
        bond=bond,
        encryption_key=encryption_key,
        assigned_height=state.height,
        due_height=state.height + job.deadline_blocks,
    )


def job_post(j: Journal, tx: Tx, sender: str) -> None:
    job_id = job_id_for(tx.chain_id, sender, tx.nonce)  # unique: an (address, nonce) is admitted once
    job = _posted(j, tx, sender, job_id)
    debit(j, sender, job.bounty)
    _put(j, job_id, job)


def job_award(j: Journal, tx: Tx, sender: str) -> None:
    b, s = tx.body, j.state
    solver, price, bond = b["solver"], b["price"], b["bond"]
    job_id = award_job_id(tx.chain_id, sender, b["job_salt"])
    job = _posted(j, tx, sender, job_id)
    quote = Quote(
        job_id, b["spec_hash"], b["deadline_blocks"], price, bond, b["encryption_key"], b["quote_expires"]
    )
    if not quote.signed_by(solver, b["quote_sig"], tx.chain_id):
        raise BadQuote(solver)
    if s.height > quote.expires:
        raise QuoteExpired(quote.expires, s.height)
    _check_solver(s, job_id, job, solver, price, bond)
    problem = _unmet(s, job, solver, bond)
    if problem is not None:
        raise problem
    debit(j, sender, job.bounty)
    if bond:
        debit(j, solver, bond)
    _put(j, job_id, _assigned(s, job, solver, price, bond, b["encryption_key"]))
    if b["canary"]:  # sealed with the post: on the ledger before the solver can have a result
        j.put("audits", job_id, Audit(canary=b["canary"]))


def job_bid(j: Journal, tx: Tx, sender: str) -> None:
    b, s = tx.body, j.state
    job_id, price, bond = b["job_id"], b["price"], b["bond"]
    job = _job(j, job_id)
    if job.status != "open":
        closes = job.post_height + job.bid_window_blocks
        if s.height > closes:
            raise BidWindowClosed(job_id, closes, s.height)
        raise WrongJobStatus(job_id, job.status, "open")
    _check_solver(s, job_id, job, sender, price, bond)
    key = (job_id, sender)
    old = s.bids.get(key)
    if old is None and len(_bids_of(s, job_id)) >= s.params.max_bids_per_job:
        raise TooManyBids(job_id, s.params.max_bids_per_job)
    problem = _unmet(s, job, sender, bond)
    if problem is not None:
        raise problem
    if old is not None and old.bond:
        credit(j, sender, old.bond)
    if bond:
        debit(j, sender, bond)
    j.put("bids", key, Bid(price=price, bond=bond, encryption_key=b["encryption_key"], height=s.height))


def job_commit(j: Journal, tx: Tx, sender: str) -> None:
    b, s = tx.body, j.state
    job_id = b["job_id"]
    job = _job(j, job_id)
    if not job.solver:
        raise WrongJobStatus(job_id, job.status, "assigned")
    if sender != job.solver:
        raise NotAssignedSolver(job_id, job.solver, sender)
    if job.status == "missed":
        raise DeadlinePassed(job_id, job.assigned_height + job.deadline_blocks)
    if job.status != "assigned":
        raise AlreadyCommitted(job_id, job.status)
    assert s.height <= job.due_height, (job_id, s.height, job.due_height)
    committed = replace(
        job,
        status="committed",
        output_hash=b["output_hash"],
        trace_root=b["trace_root"],
        result_size=b["result_size"],
        commit_height=s.height,
        due_height=s.height + job.challenge_window_blocks,
    )
    _put(j, job_id, committed)
    audits.on_commit(j, job_id)


def job_cancel(j: Journal, tx: Tx, sender: str) -> None:
    job_id = tx.body["job_id"]
    job = submitted_job(j, job_id, sender)
    if job.status != "open":
        raise WrongJobStatus(job_id, job.status, "open (not yet assigned)")
    for solver, bid in _bids_of(j.state, job_id):
        j.delete("bids", (job_id, solver))
        if bid.bond:
            credit(j, solver, bid.bond)
    credit(j, sender, job.bounty)
    _close(j, job_id, job, "cancelled")
    audits.settle_job(j, job_id, None)  # drops a canary sealed while open


def job_accept(j: Journal, tx: Tx, sender: str) -> None:
    job_id = tx.body["job_id"]
    job = submitted_job(j, job_id, sender)
    if job.status != "committed":
        raise WrongJobStatus(job_id, job.status, "committed (inside its challenge window)")
    _finalize(j, job_id, job)


# ---- end_block ------------------------------------------------------------------------------


def _score(state: State, job: Job, solver: str, bid: Bid) -> int:
    return offer_score(state, job.bounty, solver, bid.price, bid.bond)


def _choose_winner(j: Journal, job_id: str, job: Job) -> None:
    s = j.state
    bids = _bids_of(s, job_id)
    # Highest score first, then the lower address: the first of this order wins.
    ranked = sorted(
        (-_score(s, job, solver, b), solver) for solver, b in bids if _unmet(s, job, solver, b.bond) is None
    )
    winner = ranked[0][1] if ranked else ""
    for solver, b in bids:
        j.delete("bids", (job_id, solver))
        if solver != winner and b.bond:
            credit(j, solver, b.bond)
    if not winner:
        credit(j, job.submitter, job.bounty)
        _close(j, job_id, job, "expired")
        audits.settle_job(j, job_id, None)  # drops a canary sealed while open
        return
    won = dict(bids)[winner]
    _put(j, job_id, _assigned(s, job, winner, won.price, won.bond, won.encryption_key))


def _finalize(j: Journal, job_id: str, job: Job) -> None:
    """A committed job whose result stands unchallenged (challenge end, or job_accept): pay it out."""
    pay_finalized(j, job)
    _close(j, job_id, job, "finalized")
    audits.settle_job(j, job_id, None)


def process_due(j: Journal) -> list[str]:
    """end_block step: act on every job due at (or before) this height. Returns their ids in order."""
    due = sorted(key for key in j.state.job_timers if key[0] <= j.state.height)
    for _, job_id in due:
        job = j.state.jobs[job_id]
        if job.status == "open":
            _choose_winner(j, job_id, job)
        elif job.status == "assigned":
            pay_missed(j, job)
            _close(j, job_id, job, "missed")
            audits.settle_job(j, job_id, None)
        else:
            assert job.status == "committed", (job_id, job.status)
            _finalize(j, job_id, job)
    return [job_id for _, job_id in due]


# ---- dispute hook -------------------------------------------------------------------------------


def _check_challenger(job_id: str, job: Job, challenger: str) -> None:
    try:
        check_address(challenger)
    except InvalidTx as e:
        raise InvalidDispute(f"job {job_id}: bad challenger: {e}") from e
    if challenger == job.solver:
        raise InvalidDispute(f"job {job_id}: the solver cannot challenge its own result")


def dispute_job(j: Journal, job_id: str, challenger: str) -> None:
    """Journal form of `open_dispute`: committed -> disputed (no timer, so no finalization)."""
    job = _job(j, job_id)
    if job.status != "committed":
        raise WrongJobStatus(job_id, job.status, "committed (inside its challenge window)")
    _check_challenger(job_id, job, challenger)
    _put(j, job_id, replace(job, status="disputed", challenger=challenger, due_height=0))


def settle_dispute(j: Journal, job_id: str, solver_honest: bool, challenger: str, jackpot_bps: int) -> None:
    """Journal form of `resolve_dispute`."""
    job = _job(j, job_id)
    if job.status != "disputed":
        raise WrongJobStatus(job_id, job.status, "disputed")
    _check_challenger(job_id, job, challenger)
    if isinstance(jackpot_bps, bool) or not isinstance(jackpot_bps, int) or not 0 <= jackpot_bps <= BPS:
        raise InvalidDispute(f"jackpot_bps must be an integer in [0, {BPS}], got {jackpot_bps!r}")
    audits.settle_job(j, job_id, solver_honest)
    if solver_honest:
        pay_finalized(j, job)
        rate(j, challenger, "verifier", up=False, alpha_bps=j.state.params.reputation_dispute_bps)
        _close(j, job_id, job, "finalized")
    else:
        pay_reversed(j, job, challenger, jackpot_bps)
        _close(j, job_id, job, "reversed")


def _pure(state: State, step: Callable[[Journal], None]) -> State:
    s = state.copy()
    j = Journal(s)
    step(j)
    j.commit()
    return s


def open_dispute(state: State, job_id: str, challenger: str) -> State:
    """A new state in which the committed job `job_id` is "disputed" by `challenger`.

    Raises:
        UnknownJob; WrongJobStatus unless the job is "committed"; InvalidDispute for a
        malformed challenger or the solver itself.
    """
    return _pure(state, lambda j: dispute_job(j, job_id, challenger))


def resolve_dispute(
    state: State, job_id: str, solver_honest: bool, challenger: str, jackpot_bps: int
) -> State:
    """A new state with the disputed job settled by the dispute game's verdict.

    solver_honest: the job finalizes exactly as if unchallenged, and `challenger` loses verifier
    reputation (its own stake in the game is the dispute game's business). Otherwise the payout is
    reversed: the whole bounty back to the submitter, `jackpot_bps` of the solver's bond to
    `challenger`, the rest of the bond burned, solver reputation down, challenger's up.

    Raises:
        UnknownJob; WrongJobStatus unless "disputed"; InvalidDispute for a bad challenger or
        jackpot_bps outside [0, 10_000].
    """
    return _pure(state, lambda j: settle_dispute(j, job_id, solver_honest, challenger, jackpot_bps))


# ---- queries (pure, read-only) ------------------------------------------------------------


def job(state: State, job_id: str) -> dict[str, Any]:
    """Everything about one job as a plain dict (bytes as hex), with its open bids and key heights."""
    record = state.jobs.get(job_id)
    if record is None:
        raise UnknownJob(job_id)
    out: dict[str, Any] = {"job_id": job_id} | {f.name: getattr(record, f.name) for f in fields(record)}
    out["requirements"] = dict(record.requirements)
    out["encryption_key"] = record.encryption_key.hex()
    out["held"] = record.held()
    out["bids_close"] = record.post_height + record.bid_window_blocks
    out["deadline"] = record.assigned_height + record.deadline_blocks if record.solver else None
    out["challenge_end"] = (
        record.commit_height + record.challenge_window_blocks if record.output_hash else None
    )
    out["bids"] = [
        {
            "solver": solver,
            "price": b.price,
            "bond": b.bond,
            "encryption_key": b.encryption_key.hex(),
            "height": b.height,
        }
        for solver, b in _bids_of(state, job_id)
    ]
    return out


def jobs_by_status(
    state: State, status: str | None = None, *, submitter: str | None = None, solver: str | None = None
) -> list[str]:
    """Ids of the jobs with `status` (any if None), optionally of one submitter or solver,
    oldest first (by post height, then id)."""
    return [
        job_id
        for _, job_id in sorted(
            (r.post_height, jid)
            for jid, r in state.jobs.items()
            if (status is None or r.status == status)
            and (submitter is None or r.submitter == submitter)
            and (solver is None or r.solver == solver)
        )
    ]
