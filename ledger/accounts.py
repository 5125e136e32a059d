"""Account balances: credit/debit/burn helpers and the transfer and register tx handlers.

Handlers take (journal, tx, sender address) and either write through the journal or raise a
LedgerError; the caller rolls the journal back on error, so a handler may fail half-way.
"""

from __future__ import annotations

from dataclasses import replace

from ledger.errors import AlreadyRegistered, InsufficientBalance, UnknownAccount
from ledger.state import Account, Journal
from ledger.tx import Tx

EMPTY_ACCOUNT = Account()


def credit(j: Journal, address: str, amount: int) -> None:
    """Add `amount` to `address`, creating the account if it does not exist."""
    assert amount >= 0, amount
    acct = j.state.accounts.get(address, EMPTY_ACCOUNT)
    j.put("accounts", address, replace(acct, balance=acct.balance + amount))


def debit(j: Journal, address: str, amount: int) -> None:
    """Take `amount` from `address`. Raises UnknownAccount or InsufficientBalance."""
    assert amount >= 0, amount
    acct = j.state.accounts.get(address)
    if acct is None:
        raise UnknownAccount(address)
    if acct.balance < amount:
        raise InsufficientBalance(amount, acct.balance)
    j.put("accounts", address, replace(acct, balance=acct.balance - amount))


def burn(j: Journal, amount: int) -> None:
    """Record `amount` (already taken from somewhere) as destroyed."""
    assert amount >= 0, amount
    j.set("burned", j.state.burned + amount)


def transfer(j: Journal, tx: Tx, sender: str) -> None:
    """Move `amount` from the sender to `to` (created if new). A transfer to oneself is a no-op."""
    amount = tx.body["amount"]
    debit(j, sender, amount)
    credit(j, tx.body["to"], amount)


def register(j: Journal, tx: Tx, sender: str) -> None:
    """Burn params.registration_burn and record the role (with the height) on the account."""
    role = tx.body["role"]
    acct = j.state.accounts.get(sender)
    if acct is None:
        raise UnknownAccount(sender)
    if acct.has_role(role):
        raise AlreadyRegistered(sender, role)
    cost = j.state.params.registration_burn
    debit(j, sender, cost)
    burn(j, cost)
    acct = j.state.accounts[sender]
    roles = tuple(sorted((*acct.roles, (role, j.state.height))))
    j.put("accounts", sender, replace(acct, roles=roles))
