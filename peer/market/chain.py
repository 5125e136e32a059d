"""The market's view of the ledger: txs signed by the node key, job and model queries, a height watch.

`MarketLedger` wraps the daemon's `LedgerService`: `send` signs a tx with the node key, waits
for its commit and raises `TxFailed` (with the ledger's code) when it is refused or commits
as failed. Queries read the node's committed state (an immutable value the ledger's owner
task replaces), so they never block.

`HeightWatch` is the one task that follows the chain's height; other tasks wait on it for the
next committed state (`wait_above`) instead of polling the ledger themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from ledger import jobs as ledger_jobs
from ledger import models as ledger_models
from ledger.errors import LedgerError, UnknownJob, UnknownModel
from ledger.records_disputes import game_held
from ledger.state import (
    BONDED_STATUSES,
    ESCROW_STATUSES,
    State,
    market_held,
    total_bonded,
    total_supply,
)
from peer.ledger_service import CommitTimeout, LedgerService
from peer.market.errors import TxFailed, Unavailable

WATCH_INTERVAL_S = 0.05
DEFAULT_TX_TIMEOUT_S = 60.0


class MarketLedger:
    """Signed txs and read-only queries over the daemon's ledger."""

    def __init__(self, service: LedgerService) -> None:
        self.service = service
        self.address: str = service.address
        self.chain_id: str = service.genesis.chain_id

    @property
    def state(self) -> State:
        return self.service.node.state

    @property
    def height(self) -> int:
        return int(self.service.node.height)

    async def send(
        self, tx_type: str, body: dict[str, Any], *, timeout: float = DEFAULT_TX_TIMEOUT_S
    ) -> dict[str, Any]:
        """Sign, submit and wait for the commit; returns the API's result dict (with "nonce", "height").

        Raises TxFailed when the ledger refuses the tx or it commits as failed, Unavailable on timeout.
        """
        return await self.committed(tx_type, await self.post(tx_type, body), timeout=timeout)

    async def post(self, tx_type: str, body: dict[str, Any]) -> dict[str, Any]:
        """Sign and submit without waiting: {"tx_hash", "nonce", "fee"}. Raises TxFailed when refused."""
        try:
            return await self.service.submit_own(
                tx_type, body, None, wait=False, timeout=DEFAULT_TX_TIMEOUT_S
            )
        except LedgerError as e:
            raise TxFailed(f"{tx_type} refused: {e}", code=e.code) from None

    async def committed(
        self, tx_type: str, posted: dict[str, Any], *, timeout: float = DEFAULT_TX_TIMEOUT_S
    ) -> dict[str, Any]:
        """Wait for a posted tx's commit; `posted` plus "height". Raises TxFailed, Unavailable."""
        try:
            height, _, receipt = await self.service.node.wait_committed(posted["tx_hash"], timeout)
        except trio.TooSlowError:
            raise Unavailable(str(CommitTimeout(posted["tx_hash"], timeout)), code="commit_timeout") from None
        if not receipt.ok:
            raise TxFailed(f"{tx_type} failed: {receipt.message}", code=receipt.code)
        return {**posted, "height": height, "ok": True}

    def job(self, job_id: str, state: State | None = None) -> dict[str, Any] | None:
        try:
            return ledger_jobs.job(state if state is not None else self.state, job_id)
        except UnknownJob:
            return None

    def model(self, model_hash: str) -> dict[str, Any] | None:
        try:
            return ledger_models.model(self.state, model_hash)
        except UnknownModel:
            return None

    def balance(self, address: str | None = None) -> int:
        acct = self.state.accounts.get(address or self.address)
        return acct.balance if acct is not None else 0

    def has_role(self, role: str, address: str | None = None) -> bool:
        acct = self.state.accounts.get(address or self.address)
        return acct is not None and acct.has_role(role)


def supply(state: State) -> dict[str, Any]:
    """Where every token is, from one committed state: accounts, stake, escrow, bonds, pools, burned."""
    jobs = state.jobs.values()
    unbonding = sum(e.amount for entries in state.unbonding.values() for e in entries)
    return {
        "height": state.height,
        "minted": state.minted,
        "burned": state.burned,
        "balances": sum(a.balance for a in state.accounts.values()),
        "bonded": total_bonded(state),
        "unbonding": unbonding,
        "fee_pool": state.fee_pool,
        "deposits": sum(p.deposit for p in state.proposals.values()),
        "escrow": sum(j.bounty for j in jobs if j.status in ESCROW_STATUSES),
        "job_bonds": sum(j.bond for j in jobs if j.status in BONDED_STATUSES),
        "bid_bonds": sum(b.bond for b in state.bids.values()),
        "verifier_pool": state.verifier_pool,
        "treasury": state.treasury,
        "games": game_held(state),
        "market_held": market_held(state),
        "total": total_supply(state),
        "accounts": {a: {"balance": x.balance, "nonce": x.nonce} for a, x in sorted(state.accounts.items())},
    }


class HeightWatch:
    """Follows the committed height; `wait_above` wakes when a newer state is committed."""

    def __init__(self, ledger: MarketLedger, interval: float = WATCH_INTERVAL_S) -> None:
        self._ledger = ledger
        self._interval = interval
        self._height = -1
        self._changed = trio.Event()

    async def run(self) -> None:
        """The owner task: poll the node's height (a cheap attribute read) and wake the waiters."""
        while True:
            height = self._ledger.height
            if height != self._height:
                self._height = height
                self._changed.set()
                self._changed = trio.Event()
            await trio.sleep(self._interval)

    async def wait_above(self, height: int) -> State:
        """The first committed state above `height` (at once when the chain is already past it)."""
        while True:
            state = self._ledger.state
            if state.height > height:
                return state
            await self._changed.wait()

    async def each_state(self, scan: Callable[[State, trio.Nursery], None]) -> None:
        """Call `scan(state, nursery)` on every newer committed state, forever; the tasks it starts
        in the nursery live on across heights (an agent's per-job or per-dispute work)."""
        async with trio.open_nursery() as nursery:
            height = 0
            while True:
                state = await self.wait_above(height)
                height = state.height
                scan(state, nursery)
