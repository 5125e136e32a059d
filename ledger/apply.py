"""Applying blocks: the tx handler table, admission checks, begin_block / deliver / end_block.

Every public function here is pure: it copies the state it is given and returns a new one.

Block order (apply_block): begin_block (check height and time, derive the block's entropy
(ledger.randomness) from the last one and the block's own randomness `entropy` (the previous
block's hash), activate the validator set scheduled for this height, slash evidence, release
matured unbonding entries), then each tx in order, then end_block (pay the block's fees to its
proposer, act on the jobs due at this height (choose winners, expire, miss deadlines, finalize:
ledger.jobs), act on the trust games due (dispute timeouts and committee draws:
ledger.disputes; spot-check seeds: ledger.audits; reputation tallies: ledger.repvote), tally
ended proposals, schedule a changed validator set for height + 2). app_hash is taken after
end_block.

Fee and nonce rule (like Cosmos): a tx passes the admission checks (`check_tx`: chain id,
signature, known sender, nonce == account nonce, fee >= params.min_fee, balance >= fee) or it is
excluded: no fee, no nonce bump, no effect, receipt with charged=False. An admitted tx always
pays its fee and bumps the nonce; if its handler then fails, every other write it made is
rolled back and the receipt carries the error code and message. Fees collect in the block's
fee pool and all go to the block proposer in end_block.

Adding a tx type: a body schema in `ledger.tx.BODY_SCHEMAS` and a handler in `HANDLERS`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ledger import accounts, audits, canary, disputes, governance, jobs, models, repvote, slashing, staking
from ledger.errors import (
    BadNonce,
    FeeTooLow,
    InsufficientBalance,
    InvalidBlock,
    InvalidTx,
    LedgerError,
    UnknownAccount,
    WrongChain,
)
from ledger.randomness import next_entropy
from ledger.slashing import EvidenceLike
from ledger.state import Journal, State, ValidatorSet, app_hash
from ledger.tx import SignedTx, Tx, check_address, decode_tx, verify_tx

Handler = Callable[[Journal, Tx, str], None]

# Tx type name -> handler(journal, tx, sender address). Handlers raise LedgerError to fail.
HANDLERS: dict[str, Handler] = {
    "transfer": accounts.transfer,
    "register": accounts.register,
    "stake": staking.stake,
    "unstake": staking.unstake,
    "delegate": staking.delegate,
    "undelegate": staking.undelegate,
    "unjail": staking.unjail,
    "param_change": governance.param_change,
    "vote": governance.vote,
    "model_register": models.model_register,
    "model_transfer": models.model_transfer,
    "job_post": jobs.job_post,
    "job_bid": jobs.job_bid,
    "job_commit": jobs.job_commit,
    "job_cancel": jobs.job_cancel,
    "job_award": jobs.job_award,
    "job_accept": jobs.job_accept,
    "dispute_open": disputes.dispute_open,
    "dispute_bisect": disputes.dispute_bisect,
    "dispute_respond": disputes.dispute_respond,
    "dispute_verdict": disputes.dispute_verdict,
    "canary_seal": canary.canary_seal,
    "canary_reveal": canary.canary_reveal,
    "verify_report": audits.verify_report,
    "vote_open": repvote.vote_open,
    "vote_commit": repvote.vote_commit,
    "vote_reveal": repvote.vote_reveal,
}


@dataclass(frozen=True, slots=True)
class Receipt:
    """Outcome of one tx of a block. code is "ok" or the LedgerError code."""

    tx_hash: bytes
    ok: bool
    code: str
    message: str
    charged: bool  # fee paid and nonce bumped (False: the tx was excluded)
    fee: int  # fee paid (0 when excluded)

    def to_wire(self) -> list[Any]:
        return [self.tx_hash, self.ok, self.code, self.message, self.charged, self.fee]

    @classmethod
    def from_wire(cls, raw: Any) -> Receipt:
        """For the node's own store; raises ValueError on anything but a to_wire list."""
        kinds = (bytes, bool, str, str, bool, int)
        if not isinstance(raw, list | tuple) or len(raw) != 6 or not all(map(isinstance, raw, kinds)):
            raise ValueError(f"not a receipt: {raw!r}")
        return cls(*raw)


def check_tx(
    state: State, stx: SignedTx, *, verified: Collection[bytes] = (), nonce: int | None = None
) -> None:
    """Admission checks, also what the mempool runs. Reads state only.

    Args:
        verified: hashes of txs whose signature was already verified; those skip the check.
        nonce: the nonce to expect instead of the account's (for a mempool holding earlier
            txs of the same sender).
    Raises:
        WrongChain, BadSignature, UnknownAccount, BadNonce, FeeTooLow, InsufficientBalance.
    """
    tx = stx.tx
    if tx.chain_id != state.chain_id:
        raise WrongChain(state.chain_id, tx.chain_id)
    if stx.hash not in verified:
        verify_tx(stx)
    address = stx.sender_address
    acct = state.accounts.get(address)
    if acct is None:
        raise UnknownAccount(address)
    expected = acct.nonce if nonce is None else nonce
    if tx.nonce != expected:
        raise BadNonce(expected, tx.nonce)
    if tx.fee < state.params.min_fee:
        raise FeeTooLow(state.params.min_fee, tx.fee)
    if acct.balance < tx.fee:
        raise InsufficientBalance(tx.fee, acct.balance)


def _deliver(state: State, raw: SignedTx | bytes, verified: Collection[bytes]) -> Receipt:
    try:
        if isinstance(raw, SignedTx):
            stx = raw
            stx.check()  # a SignedTx built in-process skipped decode_tx's checks
        else:
            stx = decode_tx(raw)
    except InvalidTx as e:
        if isinstance(raw, SignedTx):
            digest = raw.hash
        else:
            digest = hashlib.sha256(raw).digest() if isinstance(raw, bytes | bytearray) else b""
        return Receipt(digest, False, e.code, str(e), False, 0)
    try:
        check_tx(state, stx, verified=verified)
    except LedgerError as e:
        return Receipt(stx.hash, False, e.code, str(e), False, 0)
    tx, address = stx.tx, stx.sender_address
    acct = state.accounts[address]
    state.accounts[address] = replace(acct, balance=acct.balance - tx.fee, nonce=acct.nonce + 1)
    state.fee_pool += tx.fee
    j = Journal(state)
    try:
        HANDLERS[tx.type](j, tx, address)
    except LedgerError as e:
        j.rollback()
        return Receipt(stx.hash, False, e.code, str(e), True, tx.fee)
    j.commit()
    return Receipt(stx.hash, True, "ok", "", True, tx.fee)


MAX_BLOCK_ENTROPY = 64


def _begin(
    state: State,
    height: int,
    time_ms: int,
    proposer: str,
    evidence: Sequence[EvidenceLike],
    entropy: bytes = b"",
) -> None:
    if not isinstance(height, int) or height != state.height + 1:
        raise InvalidBlock(f"block height {height!r} does not follow the last applied height {state.height}")
    if not isinstance(time_ms, int) or time_ms < state.time_ms:
        raise InvalidBlock(f"block time {time_ms!r} is before the last block time {state.time_ms}")
    try:
        check_address(proposer)
    except InvalidTx as e:
        raise InvalidBlock(f"bad proposer: {e}") from e
    for ev in evidence:
        if not isinstance(getattr(ev, "validator", None), str) or not isinstance(
            getattr(ev, "height", None), int
        ):
            raise InvalidBlock(f"bad evidence {ev!r}")
    if not isinstance(entropy, bytes) or len(entropy) > MAX_BLOCK_ENTROPY:
        raise InvalidBlock(f"block entropy must be at most {MAX_BLOCK_ENTROPY} bytes")
    assert state.fee_pool == 0, "fee pool must be empty between blocks"
    state.height, state.time_ms, state.proposer = height, time_ms, proposer
    state.entropy = next_entropy(state.entropy, height, time_ms, proposer, entropy)
    j = Journal(state)
    staking.promote_validator_set(j)
    for ev in evidence:
        slashing.handle_evidence(j, ev)
    staking.release_matured(j)
    j.commit()


def _end(state: State) -> ValidatorSet | None:
    j = Journal(state)
    if state.fee_pool:
        accounts.credit(j, state.proposer, state.fee_pool)
        j.set("fee_pool", 0)
    jobs.process_due(j)
    disputes.process_due(j)
    audits.process_due(j)
    repvote.process_due(j)
    governance.tally_ended(j)
    updates = staking.schedule_validator_set(j)
    j.commit()
    return updates


def begin_block(
    state: State,
    height: int,
    time_ms: int,
    proposer: str,
    evidence: Sequence[EvidenceLike] = (),
    *,
    entropy: bytes = b"",
) -> State:
    """Start block `height`. `entropy`: the block's own randomness (the previous block's hash).

    Raises InvalidBlock if height, time, proposer, evidence or entropy are malformed."""
    s = state.copy()
    _begin(s, height, time_ms, proposer, evidence, entropy)
    return s


def deliver_tx(
    state: State, tx: SignedTx | bytes, *, verified: Collection[bytes] = ()
) -> tuple[State, Receipt]:
    """Apply one tx inside a block (between begin_block and end_block). Never raises for a bad tx."""
    s = state.copy()
    receipt = _deliver(s, tx, verified)
    return s, receipt


def end_block(state: State) -> tuple[State, ValidatorSet | None]:
    """Finish the block: (new state, the validator set newly scheduled for height + 2, or None)."""
    s = state.copy()
    updates = _end(s)
    return s, updates


def apply_block(
    state: State,
    height: int,
    time_ms: int,
    proposer: str,
    txs: Sequence[SignedTx | bytes],
    evidence: Sequence[EvidenceLike] = (),
    *,
    verified: Collection[bytes] = (),
    entropy: bytes = b"",
) -> tuple[State, list[Receipt], bytes]:
    """Apply a whole committed block: (new state, one receipt per tx in order, app hash).

    `entropy` is the block's own randomness, folded into the state's entropy (ledger.randomness):
    pass the previous block's hash; every peer must pass the same bytes for the same block.
    Raises InvalidBlock only for block-level data consensus must never produce; bad txs get receipts.
    """
    s = state.copy()
    _begin(s, height, time_ms, proposer, evidence, entropy)
    receipts = [_deliver(s, tx, verified) for tx in txs]
    _end(s)
    return s, receipts, app_hash(s)
