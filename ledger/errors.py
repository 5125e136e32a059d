"""Errors raised by the ledger. Every rejected transaction raises a `LedgerError` subclass.

Each class carries a stable machine-readable `code` (it goes into receipts and over the wire)
and a message that says what was expected and what was found. A broken internal invariant is
not a `LedgerError`: it raises AssertionError, because it means a bug, not a bad transaction.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""

    code = "ledger_error"


class InvalidTx(LedgerError):
    """Transaction bytes that do not decode to a well-formed transaction."""

    code = "invalid_tx"


class BadSignature(LedgerError):
    code = "bad_signature"

    def __init__(self, address: str) -> None:
        super().__init__(f"signature does not verify for sender {address}")
        self.address = address


class WrongChain(LedgerError):
    code = "wrong_chain"

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"transaction is for chain {got!r}, this chain is {expected!r}")
        self.expected, self.got = expected, got


class BadNonce(LedgerError):
    code = "bad_nonce"

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"nonce {got} is not the account's next nonce {expected}")
        self.expected, self.got = expected, got


class FeeTooLow(LedgerError):
    code = "fee_too_low"

    def __init__(self, minimum: int, got: int) -> None:
        super().__init__(f"fee {got} is below the minimum fee {minimum}")
        self.minimum, self.got = minimum, got


class UnknownAccount(LedgerError):
    code = "unknown_account"

    def __init__(self, address: str) -> None:
        super().__init__(f"no account {address}")
        self.address = address


class InsufficientBalance(LedgerError):
    code = "insufficient_balance"

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(f"needs {needed} but the balance is {available}")
        self.needed, self.available = needed, available


class AlreadyRegistered(LedgerError):
    code = "already_registered"

    def __init__(self, address: str, role: str) -> None:
        super().__init__(f"{address} is already registered as {role}")
        self.address, self.role = address, role


class NotRegistered(LedgerError):
    code = "not_registered"

    def __init__(self, address: str, role: str) -> None:
        super().__init__(f"{address} is not registered as {role}; send a register tx first")
        self.address, self.role = address, role


class UnknownValidator(LedgerError):
    code = "unknown_validator"

    def __init__(self, address: str) -> None:
        super().__init__(f"no validator {address}")
        self.address = address


class CommissionTooHigh(LedgerError):
    code = "commission_too_high"

    def __init__(self, maximum: int, got: int) -> None:
        super().__init__(f"commission {got} bps exceeds the maximum {maximum} bps")
        self.maximum, self.got = maximum, got


class CommissionMismatch(LedgerError):
    code = "commission_mismatch"

    def __init__(self, current: int, got: int) -> None:
        super().__init__(f"commission is fixed at {current} bps by the first stake, tx says {got} bps")
        self.current, self.got = current, got


class InsufficientStake(LedgerError):
    code = "insufficient_stake"

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(f"needs {needed} bonded but only {available} is bonded")
        self.needed, self.available = needed, available


class UnknownDelegation(LedgerError):
    code = "unknown_delegation"

    def __init__(self, delegator: str, validator: str) -> None:
        super().__init__(f"{delegator} has no delegation to {validator}")
        self.delegator, self.validator = delegator, validator


class SelfDelegation(LedgerError):
    code = "self_delegation"

    def __init__(self, address: str) -> None:
        super().__init__(f"{address} cannot delegate to itself; use a stake tx")
        self.address = address


class TooManyUnbondings(LedgerError):
    code = "too_many_unbondings"

    def __init__(self, limit: int) -> None:
        super().__init__(f"already {limit} unbonding entries for this delegator and validator (the limit)")
        self.limit = limit


class NotJailed(LedgerError):
    code = "not_jailed"

    def __init__(self, address: str) -> None:
        super().__init__(f"validator {address} is not jailed")
        self.address = address


class StillJailed(LedgerError):
    code = "still_jailed"

    def __init__(self, until: int, height: int) -> None:
        super().__init__(f"validator is jailed until height {until}, current height is {height}")
        self.until, self.height = until, height


class UnknownProposal(LedgerError):
    code = "unknown_proposal"

    def __init__(self, proposal_id: int) -> None:
        super().__init__(f"no proposal {proposal_id}")
        self.proposal_id = proposal_id


class ProposalClosed(LedgerError):
    code = "proposal_closed"

    def __init__(self, proposal_id: int, status: str) -> None:
        super().__init__(f"proposal {proposal_id} is closed (status {status})")
        self.proposal_id, self.status = proposal_id, status


class NoVotingPower(LedgerError):
    code = "no_voting_power"

    def __init__(self, address: str) -> None:
        super().__init__(f"{address} has no bonded stake, so no vote to cast")
        self.address = address


class InvalidParams(LedgerError):
    """A parameter set (or a proposed change to one) that breaks a bound."""

    code = "invalid_params"


class InvalidGenesis(LedgerError):
    code = "invalid_genesis"


class InvalidBlock(LedgerError):
    """Block data that the caller (consensus) should never pass: wrong height, time going back."""

    code = "invalid_block"


class DuplicateTx(LedgerError):
    """The mempool already holds this tx, or it was committed recently."""

    code = "duplicate_tx"

    def __init__(self, tx_hash: bytes, where: str = "in the mempool") -> None:
        super().__init__(f"tx {tx_hash.hex()} is already {where}")
        self.tx_hash, self.where = tx_hash, where


class MempoolFull(LedgerError):
    code = "mempool_full"

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"mempool is full: adding this tx would exceed {limit} {what}")
        self.what, self.limit = what, limit


class StoreError(LedgerError):
    """The block store refused a write (out of order, inconsistent) or found itself corrupt."""

    code = "store_error"


class CorruptStore(StoreError):
    """Stored data that does not decode or does not replay to the stored app hashes."""

    code = "corrupt_store"


class SignRegression(StoreError):
    """A last-signed (height, round, step) lower than the one already stored (double-sign guard)."""

    code = "sign_regression"

    def __init__(self, stored: tuple[int, int, int], got: tuple[int, int, int]) -> None:
        super().__init__(f"last signed {got} is below the stored {stored}; refusing to go backwards")
        self.stored, self.got = stored, got


# ---- market: models and jobs -------------------------------------------------------------------


class UnknownModel(LedgerError):
    code = "unknown_model"

    def __init__(self, model_hash: str) -> None:
        super().__init__(f"no model {model_hash} is registered")
        self.model_hash = model_hash


class ModelExists(LedgerError):
    code = "model_exists"

    def __init__(self, model_hash: str, owner: str) -> None:
        super().__init__(f"model {model_hash} is already registered (owner {owner})")
        self.model_hash, self.owner = model_hash, owner


class NotModelOwner(LedgerError):
    code = "not_model_owner"

    def __init__(self, model_hash: str, owner: str, address: str) -> None:
        super().__init__(f"model {model_hash} is owned by {owner}, not by {address}")
        self.model_hash, self.owner, self.address = model_hash, owner, address


class RoyaltyTooHigh(LedgerError):
    code = "royalty_too_high"

    def __init__(self, maximum: int, got: int) -> None:
        super().__init__(f"royalty {got} bps exceeds the maximum {maximum} bps")
        self.maximum, self.got = maximum, got


class WindowOutOfRange(LedgerError):
    code = "window_out_of_range"

    def __init__(self, name: str, lo: int, hi: int, got: int) -> None:
        super().__init__(f"{name} must be in [{lo}, {hi}] blocks, got {got}")
        self.name, self.lo, self.hi, self.got = name, lo, hi, got


class UnknownJob(LedgerError):
    code = "unknown_job"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class WrongJobStatus(LedgerError):
    code = "wrong_job_status"

    def __init__(self, job_id: str, status: str, expected: str) -> None:
        super().__init__(f"job {job_id} is {status}; this needs it {expected}")
        self.job_id, self.status, self.expected = job_id, status, expected


class BidWindowClosed(LedgerError):
    code = "bid_window_closed"

    def __init__(self, job_id: str, closed_at: int, height: int) -> None:
        super().__init__(f"bids on job {job_id} closed at height {closed_at}, current height is {height}")
        self.job_id, self.closed_at, self.height = job_id, closed_at, height


class PriceTooHigh(LedgerError):
    code = "price_too_high"

    def __init__(self, limit: int, got: int, what: str = "bounty") -> None:
        super().__init__(f"price {got} exceeds the job's {what} {limit}")
        self.limit, self.got, self.what = limit, got, what


class BondTooLow(LedgerError):
    code = "bond_too_low"

    def __init__(self, minimum: int, got: int) -> None:
        super().__init__(f"bond {got} is below the minimum {minimum} for this price")
        self.minimum, self.got = minimum, got


class RequirementNotMet(LedgerError):
    code = "requirement_not_met"

    def __init__(self, what: str, needed: int, got: int) -> None:
        super().__init__(f"the job requires {what} >= {needed}, the bidder has {got}")
        self.what, self.needed, self.got = what, needed, got


class TooManyBids(LedgerError):
    code = "too_many_bids"

    def __init__(self, job_id: str, limit: int) -> None:
        super().__init__(f"job {job_id} already has {limit} bidders (the limit)")
        self.job_id, self.limit = job_id, limit


class SelfDealing(LedgerError):
    code = "self_dealing"

    def __init__(self, job_id: str, address: str) -> None:
        super().__init__(f"{address} posted job {job_id} and cannot bid on it")
        self.job_id, self.address = job_id, address


class NotAssignedSolver(LedgerError):
    code = "not_assigned_solver"

    def __init__(self, job_id: str, solver: str, address: str) -> None:
        super().__init__(f"job {job_id} is assigned to {solver}, not to {address}")
        self.job_id, self.solver, self.address = job_id, solver, address


class DeadlinePassed(LedgerError):
    code = "deadline_passed"

    def __init__(self, job_id: str, deadline: int) -> None:
        super().__init__(f"job {job_id} missed its deadline at height {deadline}")
        self.job_id, self.deadline = job_id, deadline


class AlreadyCommitted(LedgerError):
    code = "already_committed"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} already has a result commitment (status {status})")
        self.job_id, self.status = job_id, status


class NotSubmitter(LedgerError):
    code = "not_submitter"

    def __init__(self, job_id: str, submitter: str, address: str) -> None:
        super().__init__(f"job {job_id} was posted by {submitter}, not by {address}")
        self.job_id, self.submitter, self.address = job_id, submitter, address


class BadQuote(LedgerError):
    code = "bad_quote"

    def __init__(self, solver: str) -> None:
        super().__init__(f"the quote's signature does not match solver {solver} for these terms")
        self.solver = solver


class DuplicateJob(LedgerError):
    code = "duplicate_job"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} exists already (a job_award's salt must be fresh)")
        self.job_id = job_id


class QuoteExpired(LedgerError):
    code = "quote_expired"

    def __init__(self, expires: int, height: int) -> None:
        super().__init__(f"the quote expired at height {expires}, current height is {height}")
        self.expires, self.height = expires, height


class InvalidDispute(LedgerError):
    """A dispute outcome the ledger cannot apply (bad jackpot share, challenger is the solver)."""

    code = "invalid_dispute"


# ---- trust games: disputes, audits, reputation votes ---------------------------------------------


class UnknownDispute(LedgerError):
    code = "unknown_dispute"

    def __init__(self, dispute_id: str) -> None:
        super().__init__(f"no dispute {dispute_id}")
        self.dispute_id = dispute_id


class WrongDisputePhase(LedgerError):
    code = "wrong_dispute_phase"

    def __init__(self, dispute_id: str, phase: str, expected: str) -> None:
        super().__init__(f"dispute {dispute_id} is in phase {phase}; this needs {expected}")
        self.dispute_id, self.phase, self.expected = dispute_id, phase, expected


class NotYourMove(LedgerError):
    code = "not_your_move"

    def __init__(self, dispute_id: str, expected: str, address: str) -> None:
        super().__init__(f"dispute {dispute_id}: the move belongs to {expected}, not to {address}")
        self.dispute_id, self.expected, self.address = dispute_id, expected, address


class BadBisection(LedgerError):
    """A bisection move that breaks the game's rules (wrong midpoint, step or leaf count)."""

    code = "bad_bisection"


class BadProof(LedgerError):
    code = "bad_proof"

    def __init__(self, dispute_id: str, index: int) -> None:
        super().__init__(f"dispute {dispute_id}: the proof of leaf {index} does not match the trace root")
        self.dispute_id, self.index = dispute_id, index


class NotOnCommittee(LedgerError):
    code = "not_on_committee"

    def __init__(self, dispute_id: str, address: str) -> None:
        super().__init__(f"{address} is not on the referee committee of dispute {dispute_id}")
        self.dispute_id, self.address = dispute_id, address


class AlreadyVoted(LedgerError):
    code = "already_voted"

    def __init__(self, what: str, address: str) -> None:
        super().__init__(f"{address} already voted on {what}")
        self.what, self.address = what, address


class CanaryError(LedgerError):
    """A canary seal or reveal that does not fit the job (none sealed, sealed twice, bad opening)."""

    code = "canary_error"


class ReportRejected(LedgerError):
    """A verify_report the job cannot take (closed, duplicate, full, sample not yet drawn)."""

    code = "report_rejected"


class WrongSampleSeed(LedgerError):
    code = "wrong_sample_seed"

    def __init__(self, job_id: str, expected: bytes, got: bytes) -> None:
        super().__init__(f"job {job_id} is sampled with seed {expected.hex()}, the report used {got.hex()}")
        self.job_id, self.expected, self.got = job_id, expected, got


class UnknownRepVote(LedgerError):
    code = "unknown_repvote"

    def __init__(self, vote_id: str) -> None:
        super().__init__(f"no reputation vote {vote_id}")
        self.vote_id = vote_id


class WrongVotePhase(LedgerError):
    code = "wrong_vote_phase"

    def __init__(self, vote_id: str, expected: str, height: int) -> None:
        super().__init__(f"reputation vote {vote_id} is not in its {expected} phase at height {height}")
        self.vote_id, self.expected, self.height = vote_id, expected, height


class BadReveal(LedgerError):
    code = "bad_reveal"

    def __init__(self, what: str) -> None:
        super().__init__(f"the reveal does not open the commitment: {what}")
        self.what = what


class DepositTooLow(LedgerError):
    code = "deposit_too_low"

    def __init__(self, minimum: int, got: int) -> None:
        super().__init__(f"deposit {got} is below the minimum {minimum}")
        self.minimum, self.got = minimum, got


class ConflictOfInterest(LedgerError):
    code = "conflict_of_interest"

    def __init__(self, what: str, address: str) -> None:
        super().__init__(f"{address} cannot take part in {what}: it is a party to it")
        self.what, self.address = what, address
