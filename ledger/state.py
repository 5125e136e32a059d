"""Ledger state: its records, its canonical encoding and app hash, its write journal, and queries.

`State` is a value: the public functions of `ledger.apply` never mutate the state they are
given, they copy it (`State.copy`, shallow: every record is an immutable dataclass) and return
the new one. Inside a block, each tx writes through a `Journal` that keeps an undo log, so a
failing tx is rolled back without copying the whole state.

Tables (all keyed by plain strings/ints or tuples of them, always iterated in sorted order):
  accounts      address -> Account
  validators    address -> Validator
  delegations   (delegator, validator) -> amount (> 0)
  unbonding     (owner, validator) -> entries (owner == validator for a validator's own unstake)
  proposals     id -> Proposal
  votes         (proposal id, voter) -> True for yes / False for no (dropped after the tally)
  tombstones    (validator, infraction height) -> height at which it was slashed
  pending_sets  effective height -> validator set (sets scheduled by end_block at H for H+2)
  models        model hash -> ModelRecord                     (ledger.models)
  jobs          job id -> Job (kept after the job closes)      (ledger.jobs)
  bids          (job id, solver) -> Bid, only while the job is open
  job_timers    (height, job id) -> job status: end_block of that height acts on the job
  reputation    (address, role) -> score in [0, 10_000]; absent = params.reputation_default
  disputes, audits, reports, repvotes, repvote_commits, repvote_reveals, game_timers:
                the trust games (records in ledger.records_disputes)

Scalar `entropy`: 32 bytes of block randomness, re-derived in every begin_block from the last
value and the block's data (ledger.randomness); the only source of chance in the state machine.

Supply: balances, bonded and unbonding stake, the fee pool, proposal deposits, job escrow (the
bounty of a job not yet settled), solver bonds (of bids and of assigned jobs), the verifier
pool and the treasury, challenger bonds, verifier report bonds and reputation-vote deposits.
`check_invariants` asserts minted == supply + burned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import msgpack

from gossip.envelope import packb
from ledger.errors import UnknownAccount
from ledger.params import Params
from ledger.records_disputes import DECODERS as GAME_DECODERS
from ledger.records_disputes import GAME_TABLES, Audit, Dispute, Report, RepVote, game_held, game_problems

STATE_VERSION = 3
MAX_SUPPLY = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Account:
    balance: int = 0
    nonce: int = 0
    roles: tuple[tuple[str, int], ...] = ()  # (role, height registered), sorted by role

    def has_role(self, role: str) -> bool:
        return any(r == role for r, _ in self.roles)


@dataclass(frozen=True, slots=True)
class Validator:
    pubkey: bytes
    self_stake: int
    delegated: int  # always the sum of the delegations to this validator
    commission_bps: int
    jailed: bool = False
    jailed_until: int = 0

    @property
    def bonded(self) -> int:
        return self.self_stake + self.delegated


@dataclass(frozen=True, slots=True)
class UnbondingEntry:
    amount: int
    creation_height: int
    release_height: int


@dataclass(frozen=True, slots=True)
class Proposal:
    proposer: str
    changes: tuple[tuple[str, int], ...]  # sorted by param name
    deposit: int  # held while voting; 0 once refunded or burned
    submit_height: int
    end_height: int  # tallied in end_block of this height
    status: str  # "voting", "passed", "rejected", "failed" (passed but no longer valid), "no_quorum"
    yes: int = 0  # final tallies, filled in when voting ends
    no: int = 0


@dataclass(frozen=True, slots=True)
class ValidatorPower:
    address: str
    pubkey: bytes
    power: int


ValidatorSet = tuple[ValidatorPower, ...]

REPUTATION_MAX = 10_000
# Job statuses. The bounty is in escrow while the job is in ESCROW_STATUSES, the winner's bond
# while it is in BONDED_STATUSES; every other status is final and holds nothing.
ESCROW_STATUSES = frozenset({"open", "assigned", "committed", "disputed"})
BONDED_STATUSES = frozenset({"assigned", "committed", "disputed"})
FINAL_STATUSES = frozenset({"finalized", "expired", "missed", "cancelled", "reversed"})
# Statuses in which end_block acts on the job at its due height ("disputed" waits on the dispute game).
TIMED_STATUSES = frozenset({"open", "assigned", "committed"})


@dataclass(frozen=True, slots=True)
class ModelRecord:
    owner: str
    arch: str
    royalty_bps: int
    registered_height: int


@dataclass(frozen=True, slots=True)
class Bid:
    price: int
    bond: int  # locked from the solver's balance until the bid loses or the job settles
    encryption_key: bytes  # X25519 public key the job's input is encrypted to
    height: int


@dataclass(frozen=True, slots=True)
class Job:
    submitter: str
    spec_hash: str
    model_hash: str
    kind: str  # "inference" or "training"
    bounty: int
    requirements: tuple[tuple[str, int], ...]  # sorted by name
    bid_window_blocks: int
    deadline_blocks: int
    challenge_window_blocks: int
    post_height: int
    status: str
    due_height: int  # end_block of this height acts on the job (0 once it needs no timer)
    solver: str = ""
    price: int = 0
    bond: int = 0
    encryption_key: bytes = b""
    assigned_height: int = 0
    output_hash: str = ""
    trace_root: str = ""
    result_size: int = 0
    commit_height: int = 0
    challenger: str = ""
    closed_height: int = 0

    def held(self) -> int:
        """Tokens this job holds now: its escrowed bounty and the winner's bond, by status."""
        return (self.bounty if self.status in ESCROW_STATUSES else 0) + (
            self.bond if self.status in BONDED_STATUSES else 0
        )


@dataclass(slots=True)
class State:
    chain_id: str
    params: Params
    height: int = 0  # last block applied (0 = genesis)
    time_ms: int = 0  # time of the last block applied
    proposer: str = ""  # proposer of the block being (or last) applied; receives its fees
    minted: int = 0
    burned: int = 0
    fee_pool: int = 0  # fees of the block in progress; paid to the proposer in end_block
    next_proposal_id: int = 1
    accounts: dict[str, Account] = field(default_factory=dict)
    validators: dict[str, Validator] = field(default_factory=dict)
    delegations: dict[tuple[str, str], int] = field(default_factory=dict)
    unbonding: dict[tuple[str, str], tuple[UnbondingEntry, ...]] = field(default_factory=dict)
    proposals: dict[int, Proposal] = field(default_factory=dict)
    votes: dict[tuple[int, str], bool] = field(default_factory=dict)
    tombstones: dict[tuple[str, int], int] = field(default_factory=dict)
    validator_set: ValidatorSet = ()  # the set that signs the current height
    pending_sets: dict[int, ValidatorSet] = field(default_factory=dict)
    treasury: int = 0  # treasury share of job payouts
    verifier_pool: int = 0  # verifiers' share of job payouts, for the verifier reward epochs
    models: dict[str, ModelRecord] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    bids: dict[tuple[str, str], Bid] = field(default_factory=dict)
    job_timers: dict[tuple[int, str], str] = field(default_factory=dict)
    reputation: dict[tuple[str, str], int] = field(default_factory=dict)
    entropy: bytes = b""  # block randomness (ledger.randomness.next_entropy), set in begin_block
    disputes: dict[str, Dispute] = field(default_factory=dict)
    audits: dict[str, Audit] = field(default_factory=dict)
    reports: dict[tuple[str, str], Report] = field(default_factory=dict)
    repvotes: dict[str, RepVote] = field(default_factory=dict)
    repvote_commits: dict[tuple[str, str], str] = field(default_factory=dict)
    repvote_reveals: dict[tuple[str, str], int] = field(default_factory=dict)
    game_timers: dict[tuple[int, str, str], str] = field(default_factory=dict)

    def copy(self) -> State:
        """An independent copy (records are immutable, so copying the tables is enough)."""
        c = State(chain_id=self.chain_id, params=self.params)
        for f in fields(self):
            value = getattr(self, f.name)
            setattr(c, f.name, dict(value) if isinstance(value, dict) else value)
        return c


TABLES = (
    "accounts",
    "validators",
    "delegations",
    "unbonding",
    "proposals",
    "votes",
    "tombstones",
    "pending_sets",
    "models",
    "jobs",
    "bids",
    "job_timers",
    "reputation",
    *GAME_TABLES,
)
SCALARS = (
    "height",
    "time_ms",
    "proposer",
    "minted",
    "burned",
    "fee_pool",
    "next_proposal_id",
    "params",
    "validator_set",
    "treasury",
    "verifier_pool",
    "entropy",
)
_MISSING = object()


class Journal:
    """Writes to a working State with an undo log; `rollback` restores it exactly."""

    __slots__ = ("_undo", "state")

    def __init__(self, state: State) -> None:
        self.state = state
        self._undo: list[tuple[str, Any, Any]] = []

    def put(self, table: str, key: Any, value: Any) -> None:
        assert table in TABLES, table
        d = getattr(self.state, table)
        self._undo.append((table, key, d.get(key, _MISSING)))
        d[key] = value

    def delete(self, table: str, key: Any) -> None:
        assert table in TABLES, table
        d = getattr(self.state, table)
        if key in d:
            self._undo.append((table, key, d.pop(key)))

    def set(self, name: str, value: Any) -> None:
        assert name in SCALARS, name
        self._undo.append((name, _MISSING, getattr(self.state, name)))
        setattr(self.state, name, value)

    def rollback(self) -> None:
        for name, key, old in reversed(self._undo):
            if key is _MISSING and name in SCALARS:
                setattr(self.state, name, old)
            elif old is _MISSING:
                getattr(self.state, name).pop(key, None)
            else:
                getattr(self.state, name)[key] = old
        self._undo.clear()

    def commit(self) -> None:
        self._undo.clear()


# ---- canonical encoding and app hash ---------------------------------------------------------


def _enc(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return [_enc(getattr(value, f.name)) for f in fields(value)]
    if isinstance(value, tuple | list):
        return [_enc(v) for v in value]
    return value


def _pairs(rows: list[Any]) -> tuple[tuple[Any, ...], ...]:
    return tuple(tuple(r) for r in rows)


def _vset(rows: list[Any]) -> ValidatorSet:
    return tuple(ValidatorPower(*r) for r in rows)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "accounts": lambda r: Account(r[0], r[1], _pairs(r[2])),
    "validators": lambda r: Validator(*r),
    "delegations": int,
    "unbonding": lambda r: tuple(UnbondingEntry(*e) for e in r),
    "proposals": lambda r: Proposal(r[0], _pairs(r[1]), *r[2:]),
    "votes": bool,
    "tombstones": int,
    "pending_sets": _vset,
    "models": lambda r: ModelRecord(*r),
    "jobs": lambda r: Job(*r[:5], _pairs(r[5]), *r[6:]),
    "bids": lambda r: Bid(*r),
    "job_timers": str,
    "reputation": int,
    **GAME_DECODERS,
}


def encode_state(state: State) -> bytes:
    """Canonical bytes of the whole state: tables as [key, value] rows sorted by key."""
    scalars = [
        state.height,
        state.time_ms,
        state.proposer,
        state.minted,
        state.burned,
        state.fee_pool,
        state.next_proposal_id,
        state.params.to_dict(),
        _enc(state.validator_set),
        state.treasury,
        state.verifier_pool,
        state.entropy,
    ]
    tables = [[[_enc(k), _enc(v)] for k, v in sorted(getattr(state, t).items())] for t in TABLES]
    return packb([STATE_VERSION, state.chain_id, scalars, tables])


def decode_state(data: bytes) -> State:
    """Inverse of encode_state, for the node's own store. Raises ValueError on corrupt bytes."""
    try:
        version, chain_id, scalars, tables = msgpack.unpackb(data, raw=False, strict_map_key=True)
        if version != STATE_VERSION:
            raise ValueError(f"state version {version} not supported")
        state = State(chain_id=chain_id, params=Params.from_dict(scalars[7]))
        (
            state.height,
            state.time_ms,
            state.proposer,
            state.minted,
            state.burned,
            state.fee_pool,
            state.next_proposal_id,
        ) = scalars[:7]
        state.validator_set = _vset(scalars[8])
        state.treasury, state.verifier_pool, state.entropy = scalars[9:12]
        for name, rows in zip(TABLES, tables, strict=True):
            decode = _DECODERS[name]
            setattr(state, name, {(tuple(k) if isinstance(k, list) else k): decode(v) for k, v in rows})
    except Exception as e:
        raise ValueError(f"corrupt state encoding: {type(e).__name__}: {e}") from e
    return state


def app_hash(state: State) -> bytes:
    """sha256 of the canonical encoding of the whole state."""
    return hashlib.sha256(encode_state(state)).digest()


# ---- queries (pure, read-only) ------------------------------------------------------------


def account(state: State, address: str) -> Account:
    try:
        return state.accounts[address]
    except KeyError:
        raise UnknownAccount(address) from None


def balance(state: State, address: str) -> int:
    acct = state.accounts.get(address)
    return acct.balance if acct is not None else 0


def validators(state: State) -> list[tuple[str, Validator]]:
    """Every validator record (jailed and powerless ones included), sorted by address."""
    return sorted(state.validators.items())


def validator_set_at(state: State, height: int) -> ValidatorSet:
    """The active set for `height` (valid from the current height up to height + 2)."""
    chosen = state.validator_set
    for h in sorted(state.pending_sets):
        if h <= height:
            chosen = state.pending_sets[h]
    return chosen


def delegations(
    state: State, *, delegator: str | None = None, validator: str | None = None
) -> list[tuple[str, str, int]]:
    """(delegator, validator, amount) rows, sorted, optionally filtered."""
    return [
        (d, v, amount)
        for (d, v), amount in sorted(state.delegations.items())
        if (delegator is None or d == delegator) and (validator is None or v == validator)
    ]


def unbondings(state: State, owner: str | None = None) -> list[tuple[str, str, UnbondingEntry]]:
    """(owner, validator, entry) rows, sorted, optionally for one owner."""
    return [
        (o, v, e)
        for (o, v), entries in sorted(state.unbonding.items())
        if owner is None or o == owner
        for e in entries
    ]


def bonded_by_owner(state: State) -> dict[str, int]:
    """Bonded stake per holder: a validator's self-stake plus what each address delegated."""
    out: dict[str, int] = {}
    for addr, v in sorted(state.validators.items()):
        if v.self_stake:
            out[addr] = v.self_stake
    for (d, _), amount in sorted(state.delegations.items()):
        out[d] = out.get(d, 0) + amount
    return out


def total_bonded(state: State) -> int:
    return sum(v.bonded for v in state.validators.values())


def total_supply(state: State) -> int:
    """Everything that exists: balances, bonded, unbonding, the fee pool, proposal deposits and the market
    (job escrow and bonds, bid bonds, the verifier pool and the treasury)."""
    return (
        sum(a.balance for a in state.accounts.values())
        + total_bonded(state)
        + sum(e.amount for entries in state.unbonding.values() for e in entries)
        + state.fee_pool
        + sum(p.deposit for p in state.proposals.values())
        + market_held(state)
    )


def market_held(state: State) -> int:
    """Tokens held by the market: escrowed bounties, bonds of jobs and bids, the two pools, and what
    the trust games hold (challenger and report bonds, vote deposits)."""
    return (
        sum(job.held() for job in state.jobs.values())
        + sum(b.bond for b in state.bids.values())
        + state.verifier_pool
        + state.treasury
        + game_held(state)
    )


def _market_problems(state: State) -> list[str]:
    problems: list[str] = []
    if min(state.treasury, state.verifier_pool) < 0:
        problems.append(f"bad pools: treasury {state.treasury}, verifiers {state.verifier_pool}")
    timers = {jid: (h, status) for (h, jid), status in state.job_timers.items()}
    if len(timers) != len(state.job_timers) or not set(timers) <= set(state.jobs):
        problems.append("job timers do not match the jobs one to one")
    for jid, job in sorted(state.jobs.items()):
        if job.status not in ESCROW_STATUSES | FINAL_STATUSES or min(job.bounty, job.bond, job.price) < 0:
            problems.append(f"job {jid}: status {job.status!r}, bounty {job.bounty}, bond {job.bond}")
        wanted = (job.due_height, job.status) if job.status in TIMED_STATUSES else None
        if timers.get(jid) != wanted:
            problems.append(f"job {jid} ({job.status}) has timer {timers.get(jid)}, expected {wanted}")
    problems += [
        f"bid {k} is on a job that is not open, or its bond is negative"
        for k, b in sorted(state.bids.items())
        if b.bond < 0 or k[0] not in state.jobs or state.jobs[k[0]].status != "open"
    ]
    problems += [
        f"reputation {k} = {r} is outside [0, {REPUTATION_MAX}]"
        for k, r in sorted(state.reputation.items())
        if not 0 <= r <= REPUTATION_MAX
    ]
    return problems


def check_invariants(state: State) -> None:
    """Raise AssertionError if the state breaks an invariant (that would be a bug, not bad input)."""
    problems: list[str] = []
    if state.minted != total_supply(state) + state.burned:
        problems.append(f"minted {state.minted} != supply {total_supply(state)} + burned {state.burned}")
    problems += [
        f"account {a} is negative: {x}"
        for a, x in sorted(state.accounts.items())
        if min(x.balance, x.nonce) < 0
    ]
    problems += [
        f"delegation {k} is not positive" for k, amt in sorted(state.delegations.items()) if amt <= 0
    ]
    problems += [
        f"unbonding {k} has a non-positive entry"
        for k, es in sorted(state.unbonding.items())
        if not es or any(e.amount <= 0 for e in es)
    ]
    sums: dict[str, int] = {}
    for (_, v), amount in state.delegations.items():
        sums[v] = sums.get(v, 0) + amount
    for addr, v in sorted(state.validators.items()):
        if v.self_stake < 0 or v.delegated != sums.get(addr, 0):
            problems.append(
                f"validator {addr}: self_stake {v.self_stake}, delegated {v.delegated} != {sums.get(addr, 0)}"
            )
    problems += _market_problems(state)
    problems += game_problems(state)
    if min(state.burned, state.fee_pool) < 0 or state.minted > MAX_SUPPLY:
        problems.append(
            f"bad totals: burned {state.burned}, fee pool {state.fee_pool}, minted {state.minted}"
        )
    if problems:
        raise AssertionError("ledger invariants broken: " + "; ".join(problems))
