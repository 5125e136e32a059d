"""The daemon's side of the ledger API: sign with the node key, submit, wait for commit, answer queries.

`LedgerService` sits between the HTTP handlers (`peer.ledger_api`) and the running
`LedgerNode`. It owns nothing the node owns: it reads the node's committed state, reads
blocks and the tx index through its own read-only `LedgerStore` connection (the node writes
through another, in a worker thread) and submits through `LedgerNode.submit`, so every tx,
ours or external, goes through the same mempool admission. Results are plain JSON-ready
dicts (hashes and keys as hex).

Own txs (`submit_own`): the node's account signs. The nonce is pending-aware: the mempool's
next nonce for our account (committed nonce plus our pending txs); one lock covers
choose-nonce, sign and submit so concurrent requests never pick the same nonce, and a
`BadNonce` answer (a race with a commit that dropped one of ours) is retried with the nonce
the mempool expects. Before spending a fee the tx is run against a copy of
the committed state: a tx that would certainly fail (insufficient balance, unknown
validator...) is refused with that error instead of being committed as a failed, charged tx.

Error handling: ledger rejections propagate as `LedgerError` (the API maps them to 4xx);
`QueryError` covers lookups of things that do not exist; a commit that does not come in time
raises `CommitTimeout` carrying the tx hash (the tx may still commit later).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import trio

from gossip.identity import Identity
from ledger import state as queries
from ledger.apply import Receipt, deliver_tx
from ledger.block import Block
from ledger.errors import BadNonce, InvalidTx, LedgerError
from ledger.genesis import Genesis
from ledger.tx import check_address, sign_tx

if TYPE_CHECKING:
    from ledger.node import LedgerNode
    from ledger.store import LedgerStore

NONCE_RETRIES = 3
DEFAULT_WAIT_S = 30.0


class QueryError(Exception):
    """A query for something that does not exist or a malformed query argument."""

    def __init__(self, message: str, code: str, status: int = 404) -> None:
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


class CommitTimeout(Exception):
    def __init__(self, tx_hash: str, timeout: float) -> None:
        super().__init__(
            f"tx {tx_hash} was accepted but not committed within {timeout:g}s; "
            f"it may still commit (check with `hivemesh query tx {tx_hash}`)"
        )
        self.tx_hash, self.timeout = tx_hash, timeout


class WouldFail(LedgerError):
    """A tx that the state machine would charge and then fail: refused before it is signed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def receipt_dict(receipt: Receipt) -> dict[str, Any]:
    return {
        "ok": receipt.ok,
        "code": receipt.code,
        "message": receipt.message,
        "charged": receipt.charged,
        "fee": receipt.fee,
    }


def parse_tx_hash(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise QueryError(f"tx hash must be 64 hex characters, got {text!r}", "invalid_hash", 400)
    return raw


def parse_address(text: str) -> str:
    try:
        check_address(text)
    except InvalidTx as e:
        raise QueryError(f"malformed address: {e}", "invalid_address", 400) from None
    return text


class LedgerService:
    """Ledger operations of one daemon, over its running `LedgerNode` and its store."""

    def __init__(self, node: LedgerNode, reader: LedgerStore, identity: Identity, genesis: Genesis) -> None:
        self.node, self.reader, self.identity, self.genesis = node, reader, identity, genesis
        self.address = identity.peer_id
        self._lock = trio.Lock()

    # ---- txs -------------------------------------------------------------------------------

    async def submit_own(
        self, tx_type: str, body: dict[str, Any], fee: int | None, *, wait: bool, timeout: float
    ) -> dict[str, Any]:
        """Sign `tx_type`/`body` with the node key, submit it and, with `wait`, wait for its commit.

        Raises InvalidTx for a malformed body, WouldFail / another LedgerError when the tx is
        refused, CommitTimeout when `wait` runs out.
        """
        async with self._lock:
            state = self.node.state
            acct = state.accounts.get(self.address)
            fee = state.params.min_fee if fee is None else fee
            chain_id = self.genesis.chain_id
            committed_nonce = acct.nonce if acct is not None else 0
            trial = sign_tx(self.identity, tx_type, body, nonce=committed_nonce, fee=fee, chain_id=chain_id)
            _, outcome = deliver_tx(state, trial)
            if not outcome.ok:
                raise WouldFail(outcome.code, outcome.message)
            nonce = self.node.mempool.pending_nonce(state, self.address)
            for attempt in range(NONCE_RETRIES + 1):
                stx = sign_tx(self.identity, tx_type, body, nonce=nonce, fee=fee, chain_id=chain_id)
                try:
                    tx_hash = await self.node.submit(stx.encoded)
                    break
                except BadNonce as e:
                    if attempt == NONCE_RETRIES or e.expected == nonce:
                        raise
                    nonce = e.expected
        result = {"tx_hash": tx_hash, "nonce": nonce, "fee": fee}
        return {**result, **(await self._wait(tx_hash, timeout) if wait else {"committed": False})}

    async def submit_raw(self, data: bytes, *, wait: bool, timeout: float) -> dict[str, Any]:
        """Submit externally signed tx bytes. Raises LedgerError when refused, CommitTimeout."""
        tx_hash = await self.node.submit(data)
        return {"tx_hash": tx_hash, **(await self._wait(tx_hash, timeout) if wait else {"committed": False})}

    async def submit_many(self, txs: list[bytes]) -> list[dict[str, Any]]:
        """Submit a batch without waiting: one {"tx_hash"} or {"error", "code"} per tx, in order."""
        return [
            {"error": str(r), "code": r.code} if isinstance(r, LedgerError) else {"tx_hash": r}
            for r in await self.node.submit_many(txs)
        ]

    async def _wait(self, tx_hash: str, timeout: float) -> dict[str, Any]:
        try:
            height, index, receipt = await self.node.wait_committed(tx_hash, timeout)
        except (trio.TooSlowError, TimeoutError):
            raise CommitTimeout(tx_hash, timeout) from None
        return {"committed": True, "height": height, "index": index, **receipt_dict(receipt)}

    # ---- queries ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"chain_id": self.genesis.chain_id, "address": self.address, **self.node.status()}

    def account(self, address: str) -> dict[str, Any]:
        state = self.node.state
        acct = self._account(address)
        validator = state.validators.get(address)
        return {
            "address": address,
            "height": state.height,
            "balance": acct.balance,
            "nonce": acct.nonce,
            "roles": [{"role": role, "since": height} for role, height in acct.roles],
            "validator": _validator_dict(address, validator, state) if validator else None,
            "delegations": [
                {"validator": v, "amount": amount}
                for _, v, amount in queries.delegations(state, delegator=address)
            ],
            "unbonding": [
                {"validator": v, "amount": e.amount, "release_height": e.release_height}
                for _, v, e in queries.unbondings(state, owner=address)
            ],
        }

    def balance(self, address: str) -> dict[str, Any]:
        acct = self._account(address)
        return {"address": address, "balance": acct.balance, "height": self.node.state.height}

    def _account(self, address: str) -> queries.Account:
        parse_address(address)
        acct = self.node.state.accounts.get(address)
        if acct is None:
            raise QueryError(f"no account {address} on this chain", "unknown_account")
        return acct

    def validators(self) -> dict[str, Any]:
        state = self.node.state
        rows = [_validator_dict(a, v, state) for a, v in queries.validators(state)]
        return {"height": state.height, "validators": rows}

    def block(self, height: int | None) -> dict[str, Any]:
        latest = self.node.height
        if height is None:
            height = latest
        if height < 1 or height > latest:
            raise QueryError(
                f"no block at height {height} (the chain is at height {latest})", "unknown_block"
            )
        info = self.node.block_info(height)
        if info is None:
            raise QueryError(f"block {height} is not stored on this peer", "unknown_block")
        return {**info, "tx_hashes": self._tx_hashes(height)}

    def _tx_hashes(self, height: int) -> list[str]:
        stored = self.reader.block(height)
        if stored is None:
            return []
        return [
            hashlib.sha256(raw).hexdigest() for raw in Block.decode(stored[0]).txs
        ]  # tx hash = sha256(wire)

    def tx(self, tx_hash: str) -> dict[str, Any]:
        location = self.reader.tx_location(parse_tx_hash(tx_hash))
        if location is None:
            raise QueryError(f"tx {tx_hash} is not in any committed block on this peer", "unknown_tx")
        height, index, receipt = location
        return {"tx_hash": tx_hash, "height": height, "index": index, **receipt_dict(receipt)}


def _validator_dict(address: str, v: queries.Validator, state: queries.State) -> dict[str, Any]:
    power = next((p.power for p in state.validator_set if p.address == address), 0)
    return {
        "address": address,
        "self_stake": v.self_stake,
        "delegated": v.delegated,
        "bonded": v.bonded,
        "commission_bps": v.commission_bps,
        "jailed": v.jailed,
        "jailed_until": v.jailed_until,
        "power": power,
    }
