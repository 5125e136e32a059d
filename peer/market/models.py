"""Models in the market: the index of models this peer serves, registration, lookup for jobs.

`ModelIndex` maps a model hash to the blob of its bundle (bundles.py) and is kept in
`<home>/data/market/models.json` (written atomically), so a restarted peer serves what it
served before. Only the market service's owner task writes it (`MarketService.record_model`).

`register_model` (POST /market/models): read and check the weights file against the spec,
register the "model_owner" role first if the account lacks it (it burns the chain's
registration fee; the answer says so), store the bundle blob, send model_register, and
announce where the blob is. Registering a model this account already owns again only makes
this peer serve it.

`model_blob_for_job` gives the bundle blob a submitter announces with a job: ours, or fetched
from a peer that announced the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compute.errors import ComputeError
from compute.models import Model
from gossip.blobs import BlobError
from peer.market.bundles import model_bundle
from peer.market.errors import BadRequest, MarketError, NotFound, Unavailable

if TYPE_CHECKING:
    from peer.market.service import MarketService


class ModelIndex:
    """model hash -> {"blob", "arch", "size"} of the models this peer serves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            raw = json.loads(path.read_text())
            self._entries: dict[str, dict[str, Any]] = dict(raw) if isinstance(raw, dict) else {}
        except FileNotFoundError:
            self._entries = {}
        except (OSError, ValueError) as e:
            raise MarketError(f"cannot read the model index {path}: {e}") from None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model_hash: str) -> dict[str, Any] | None:
        return self._entries.get(model_hash)

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(sorted(self._entries.items()))

    def put(self, model_hash: str, entry: dict[str, Any]) -> None:
        self._entries[model_hash] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self._entries, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def read_model(spec: Any, weights_path: str) -> Model:
    """The model in a safetensors file under `spec`. Raises BadRequest (blocking: call in a thread)."""
    path = Path(weights_path)
    try:
        weights = path.read_bytes()
    except OSError as e:
        raise BadRequest(f"cannot read the weights file {path}: {e.strerror or e}") from None
    if not isinstance(spec, dict):
        raise BadRequest('the model spec must be a JSON object such as {"arch": "mlp", ...}')
    try:
        return Model.create(spec, weights)
    except ComputeError as e:
        raise BadRequest(f"{path} does not hold a model of that spec: {e}", code="bad_model") from None


async def register_model(
    market: MarketService, spec: Any, weights_path: str, royalty_bps: int
) -> dict[str, Any]:
    """Register a model on the ledger and serve its bundle (see the module docstring)."""
    model = await market.in_thread(read_model, spec, weights_path)
    ledger = market.ledger
    existing = ledger.model(model.hash)
    if existing is not None and existing["owner"] != ledger.address:
        raise MarketError(
            f"model {model.hash} is already registered by {existing['owner']}",
            code="model_exists",
            status=409,
        )
    registered_role = None
    if not ledger.has_role("model_owner"):
        registered_role = (await ledger.send("register", {"role": "model_owner"}))["tx_hash"]
    data = await market.in_thread(model_bundle, model)
    blob = await market.put_blob(data)
    tx = None
    if existing is None:
        body = {"model_hash": model.hash, "arch": model.spec["arch"], "royalty_bps": royalty_bps}
        tx = await ledger.send("model_register", body)
    await market.record_model(model.hash, {"blob": blob, "arch": model.spec["arch"], "size": len(data)})
    record = ledger.model(model.hash) or {}
    return {
        "model_hash": model.hash,
        "arch": model.spec["arch"],
        "spec": model.spec,
        "blob": blob,
        "size": len(data),
        "owner": record.get("owner", ledger.address),
        "royalty_bps": record.get("royalty_bps", royalty_bps),
        "registered_height": record.get("registered_height"),
        "tx_hash": tx["tx_hash"] if tx else None,
        "already_registered": existing is not None,
        "role_registered_tx": registered_role,
        "registration_burn": ledger.state.params.registration_burn if registered_role else 0,
    }


async def model_blob_for_job(market: MarketService, model_hash: str) -> tuple[str, Model]:
    """(bundle blob id, model) of a registered model, fetched from its announcers when not ours.

    Raises NotFound for a model the ledger does not know, Unavailable when no peer serves it.
    """
    if market.ledger.model(model_hash) is None:
        raise NotFound(
            f"unknown model {model_hash}: no model with that hash is registered on this chain "
            "(see `hivemesh model list`)",
            code="unknown_model",
        )
    entry = market.models.get(model_hash)
    candidates = [entry["blob"]] if entry else []
    candidates += [
        note.blob for _, note in market.book.model_sources(model_hash) if note.blob not in candidates
    ]
    if not candidates:
        raise Unavailable(
            f"model {model_hash} is registered but no peer has announced its weights yet; "
            "its owner's peer must be running"
        )
    problems = []
    for blob in candidates:
        try:
            return blob, await market.load_model(model_hash, blob, [])
        except (Unavailable, MarketError, BlobError) as e:
            problems.append(str(e))
    raise Unavailable(f"cannot get model {model_hash}: {'; '.join(problems)}")


def list_models(market: MarketService) -> list[dict[str, Any]]:
    """Every model on the ledger, with whether this peer serves it and who announced it."""
    from ledger.models import models as ledger_models

    rows = []
    for record in ledger_models(market.ledger.state):
        model_hash = record["model_hash"]
        rows.append(
            {
                **record,
                "served_here": market.models.get(model_hash) is not None,
                "announced_by": sorted(peer for peer, _ in market.book.model_sources(model_hash)),
            }
        )
    return rows
