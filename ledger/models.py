"""Model registry: the model_register and model_transfer tx handlers and the model queries.

Rules:
- model_register {model_hash, arch, royalty_bps}: the sender must be registered as
  "model_owner" (the registration burn is the sybil cost of filling the registry); the hash
  must not be registered yet (ModelExists); royalty_bps <= params.max_royalty_bps
  (RoyaltyTooHigh). The sender becomes the owner. A model is never deleted and its royalty and
  arch never change; jobs can only be posted for registered models.
- model_transfer {model_hash, to}: only the owner (NotModelOwner); `to` becomes the owner and
  receives the royalties of every job finalized from then on (including jobs posted before).
  `to` needs no role. Transferring to oneself is allowed and changes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ledger.errors import (
    ModelExists,
    NotModelOwner,
    NotRegistered,
    RoyaltyTooHigh,
    UnknownAccount,
    UnknownModel,
)
from ledger.state import Journal, ModelRecord, State
from ledger.tx import Tx


def _owned(j: Journal, model_hash: str, sender: str) -> ModelRecord:
    record = j.state.models.get(model_hash)
    if record is None:
        raise UnknownModel(model_hash)
    if record.owner != sender:
        raise NotModelOwner(model_hash, record.owner, sender)
    return record


def model_register(j: Journal, tx: Tx, sender: str) -> None:
    body = tx.body
    acct = j.state.accounts.get(sender)
    if acct is None:
        raise UnknownAccount(sender)
    if not acct.has_role("model_owner"):
        raise NotRegistered(sender, "model_owner")
    existing = j.state.models.get(body["model_hash"])
    if existing is not None:
        raise ModelExists(body["model_hash"], existing.owner)
    limit = j.state.params.max_royalty_bps
    if body["royalty_bps"] > limit:
        raise RoyaltyTooHigh(limit, body["royalty_bps"])
    record = ModelRecord(
        owner=sender, arch=body["arch"], royalty_bps=body["royalty_bps"], registered_height=j.state.height
    )
    j.put("models", body["model_hash"], record)


def model_transfer(j: Journal, tx: Tx, sender: str) -> None:
    record = _owned(j, tx.body["model_hash"], sender)
    j.put("models", tx.body["model_hash"], replace(record, owner=tx.body["to"]))


# ---- queries (pure, read-only) ------------------------------------------------------------


def _as_dict(model_hash: str, record: ModelRecord) -> dict[str, Any]:
    return {
        "model_hash": model_hash,
        "owner": record.owner,
        "arch": record.arch,
        "royalty_bps": record.royalty_bps,
        "registered_height": record.registered_height,
    }


def model(state: State, model_hash: str) -> dict[str, Any]:
    """The registry entry of `model_hash` as a plain dict. Raises UnknownModel."""
    record = state.models.get(model_hash)
    if record is None:
        raise UnknownModel(model_hash)
    return _as_dict(model_hash, record)


def models(state: State, owner: str | None = None) -> list[dict[str, Any]]:
    """Every registered model (optionally only those of `owner`), sorted by hash."""
    return [_as_dict(h, r) for h, r in sorted(state.models.items()) if owner is None or r.owner == owner]
