"""Jobs awarded at post time to a solver's quote, and results accepted by their submitter.

The market network of tests/market_net.py with the solver agent of "solver" enabled. A job
submitted with no bid window asks the registered solvers for quotes over the quote protocol
(peer/market/quotes.py) and is posted as a job_award: assigned in the block that posts it, its
input sealed to the quote's key, its canary sealed by the same tx. The submitter spot-checks the
result itself and, when asked to, accepts it: the job finalizes long before its challenge window
would end.
Also: what a hostile or careless requester gets from the quote handler, quotes that do not check
out, and the fallback to a bid window when no solver quotes or the quote expired before the award
landed.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from compute.datasets import decode_inputs, encode_inputs
from compute.executor import run_inference
from compute.jobs import InferenceSpec, decode_job
from compute.models import Model
from ledger.payout import min_bond
from peer.market import quotes, wire
from peer.market.service import MarketService
from peer.market.solver import SolverPolicy
from tests.market_net import IDS, MLP, Net, market_net
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)

CHALLENGE_WINDOW = 500  # blocks: a job finalized well before this was accepted by its submitter


async def _model(net: Net, tmp_path: Path) -> Model:
    model = Model.init(MLP, seed=0)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(model.weights)
    await net["submitter"].register_model(MLP, str(weights), 0)
    return model


def _inputs(tmp_path: Path, n: int = 40) -> Path:
    path = tmp_path / "x.safetensors"
    path.write_bytes(encode_inputs(torch.randn(n, 16, generator=torch.Generator().manual_seed(5))))
    return path


def _request(model: Model, inputs: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model_hash": model.hash,
        "kind": "inference",
        "bounty": 1_000,
        "spec": {"batch_size": 8},
        "inputs_path": str(inputs),
        "bid_window_blocks": 0,
        "challenge_window_blocks": CHALLENGE_WINDOW,
    } | extra


async def _finalized(market: MarketService, job_id: str) -> dict[str, Any]:
    await wait_until(lambda: (market.ledger.job(job_id) or {}).get("status") == "finalized", timeout=120)
    return market.ledger.job(job_id) or {}


async def test_an_awarded_inference_job_is_accepted_and_finalized_at_once(tmp_path: Path) -> None:
    policy = SolverPolicy(max_jobs=2)
    async with market_net(tmp_path, {"solver": policy}) as net:
        submitter, solver = net["submitter"], net["solver"]
        model = await _model(net, tmp_path)
        inputs = _inputs(tmp_path)
        view = await submitter.submitter.submit(_request(model, inputs, accept=True))
        job_id = view["job_id"]

        # Awarded in the block that posted it: no bid window, the quote's terms on the ledger.
        assert view["status"] == "assigned" and view["bid_window_blocks"] == 0
        assert view["solver"] == solver.ledger.address
        assert view["assigned_height"] == view["post_height"]
        price = policy.price(1_000, None)
        assert price is not None
        assert (view["price"], view["bond"]) == (price, min_bond(price, 1_000))
        assert view["encryption_key"] == solver.encryption_key.hex()
        audit = submitter.ledger.state.audits.get(job_id)
        assert audit is not None and audit.canary  # sealed by the job_award itself

        final = await _finalized(submitter, job_id)
        assert final["closed_height"] < final["commit_height"] + CHALLENGE_WINDOW
        assert final["closed_height"] - final["post_height"] <= 4  # commit, then the submitter's accept
        local = submitter.submitter.jobs.get(job_id)
        assert local is not None and local.verified
        await wait_until(lambda: local.accepted == "sent", timeout=10)  # the tx that finalized it
        spec = local.spec
        assert isinstance(spec, InferenceSpec)
        expected = run_inference(spec, model, decode_inputs(inputs.read_bytes()))
        assert final["output_hash"] == expected.outputs_hash
        assert solver.solver.records[job_id].phase in ("serving", "done", "finalized")


async def test_a_result_is_not_accepted_unless_asked(tmp_path: Path) -> None:
    async with market_net(tmp_path, {"solver": SolverPolicy()}) as net:
        submitter = net["submitter"]
        model = await _model(net, tmp_path)
        request = {
            "model_hash": model.hash,
            "kind": "training",
            "bounty": 1_000,
            "spec": {
                "dataset": {
                    "kind": "classes",
                    "seed": 1,
                    "size": 64,
                    "shape": [16],
                    "classes": 4,
                    "noise": "1/2",
                },
                "optimizer": {"name": "sgd", "lr": "1/10", "momentum": "0", "weight_decay": "0"},
                "steps": 6,
                "batch_size": 16,
            },
            "bid_window_blocks": 0,
            "challenge_window_blocks": 4,
        }
        view = await submitter.submitter.submit(request)
        job_id = view["job_id"]
        assert view["status"] == "assigned"
        final = await _finalized(submitter, job_id)
        assert final["closed_height"] == final["commit_height"] + 4  # the window ran out: no accept
        local = submitter.submitter.jobs.get(job_id)
        assert local is not None and not local.accept and local.accepted == ""


async def _note(submitter: MarketService, model: Model, inputs: Path, job_id: str) -> wire.JobNote:
    """The announcement of a job about to be posted, its spec stored at the submitter."""
    from peer.market.specs import build_spec

    spec, _ = build_spec(model, "inference", {"batch_size": 8}, inputs.read_bytes())
    blob = await submitter.put_blob(spec.encode())
    model_blob = submitter.models.get(model.hash)
    assert model_blob is not None
    return wire.JobNote(
        job_id, spec.hash, blob, model.hash, model_blob["blob"], "inference", 1_000, {},
        submitter.ledger.address, True,
    )  # fmt: skip


async def test_quote_requests_are_checked_and_capacity_is_kept(tmp_path: Path) -> None:
    async with market_net(tmp_path, {"solver": SolverPolicy(max_jobs=1)}) as net:
        submitter, solver = net["submitter"], net["solver"]
        model = await _model(net, tmp_path)
        inputs = _inputs(tmp_path)
        handle = quotes.make_handler(solver)
        me = submitter.ledger.address
        note = await _note(submitter, model, inputs, secrets.token_hex(32))
        body = quotes.request_body(note, 50)

        for bad in (
            {},
            "x",
            {"job": {}, "deadline_blocks": 5},
            {**body, "deadline_blocks": 0},
            {**body, "x": 1},
        ):
            with pytest.raises(quotes.Refused):
                await handle(me, bad)
        with pytest.raises(quotes.Refused, match="only a job's submitter"):
            await handle(IDS["outsider"].peer_id, body)  # somebody else asks on the submitter's behalf
        other_spec = replace(note, spec_hash="ab" * 32)
        with pytest.raises(quotes.Refused, match="not the spec"):
            await handle(me, quotes.request_body(other_spec, 50))

        reply = await handle(me, body)
        state = submitter.ledger.state
        chain = submitter.ledger.chain_id
        signed = quotes.check_response(state, note, 50, solver.ledger.address, reply, chain)
        assert signed.quote.price == reply["price"] and reply["expires"] > state.height
        assert signed.quote.encryption_key == solver.encryption_key

        # Terms changed after signing, or signed by another key, are dropped by the submitter.
        for changed in (
            {"price": reply["price"] - 1},
            {"bond": reply["bond"] + 1},
            {"expires": reply["expires"] + 1},
        ):
            with pytest.raises(ValueError, match="signature"):
                quotes.check_response(state, note, 50, solver.ledger.address, reply | changed, chain)
        with pytest.raises(ValueError, match="signature"):
            quotes.check_response(state, note, 51, solver.ledger.address, reply, chain)  # another deadline
        with pytest.raises(ValueError, match="signature"):
            quotes.check_response(state, note, 50, IDS["verifier"].peer_id, reply, chain)

        # One job at a time: a live quote takes the solver's only slot until it expires.
        second = await _note(submitter, model, inputs, secrets.token_hex(32))
        with pytest.raises(quotes.Refused, match="at capacity"):
            await handle(me, quotes.request_body(second, 50))
        await wait_until(lambda: solver.ledger.height > reply["expires"], timeout=60)
        later = submitter.ledger.state
        with pytest.raises(ValueError, match="expires"):
            quotes.check_response(later, note, 50, solver.ledger.address, reply, chain)
        assert (
            quotes.check_response(
                submitter.ledger.state,
                second,
                50,
                solver.ledger.address,
                await handle(me, quotes.request_body(second, 50)),
                chain,
            ).quote.job_id
            == second.job_id
        )
        await wait_until(lambda: solver.solver.records[note.job_id].phase == "not awarded", timeout=30)


async def test_without_quotes_the_job_gets_a_bid_window(tmp_path: Path) -> None:
    async with market_net(tmp_path) as net:  # the only solver takes no jobs: nobody quotes
        submitter = net["submitter"]
        model = await _model(net, tmp_path)
        view = await submitter.submitter.submit(_request(model, _inputs(tmp_path)))
        assert view["status"] == "open" and view["bid_window_blocks"] == 3
        spec = decode_job(
            await submitter.read_blob(
                submitter.book.jobs[(view["job_id"], submitter.ledger.address)].spec_blob
            )
        )
        assert spec.hash == view["spec_hash"]


async def test_a_submitter_cannot_lock_a_solver_with_quotes_it_never_uses(tmp_path: Path) -> None:
    async with market_net(tmp_path, {"solver": SolverPolicy(max_jobs=4)}) as net:
        submitter, solver = net["submitter"], net["solver"]
        model = await _model(net, tmp_path)
        inputs = _inputs(tmp_path)
        handle, me = quotes.make_handler(solver), submitter.ledger.address
        rich = replace(await _note(submitter, model, inputs, secrets.token_hex(32)), bounty=10**12)
        with pytest.raises(quotes.Refused, match="balance does not cover the bounty"):
            await handle(me, quotes.request_body(rich, 50))
        notes = [await _note(submitter, model, inputs, secrets.token_hex(32)) for _ in range(3)]
        for note in notes[:2]:
            await handle(me, quotes.request_body(note, 50))
        await handle(me, quotes.request_body(notes[0], 50))  # asked again: the same slot
        with pytest.raises(quotes.Refused, match="quotes to this submitter are still open"):
            await handle(me, quotes.request_body(notes[2], 50))
        assert sorted(j for j, r in solver.solver.records.items() if r.phase == "quoted") == sorted(
            n.job_id for n in notes[:2]
        )


async def test_a_wrong_result_is_not_accepted_but_disputed(tmp_path: Path) -> None:
    cheat = SolverPolicy(behaviour="swap-model")  # TEST behaviour: every batch from another model
    async with market_net(tmp_path, {"solver": cheat}) as net:
        submitter = net["submitter"]
        await submitter.ledger.send("register", {"role": "verifier"})  # so it may open the dispute
        model = await _model(net, tmp_path)
        view = await submitter.submitter.submit(_request(model, _inputs(tmp_path), accept=True))
        job_id = view["job_id"]
        local = submitter.submitter.jobs[job_id]
        await wait_until(lambda: local.accepted.startswith("not accepted"), timeout=120)
        assert "recomputed leaf" in local.accepted
        await wait_until(lambda: (submitter.ledger.job(job_id) or {}).get("status") == "disputed", timeout=60)
        job = submitter.ledger.job(job_id) or {}
        assert job["challenger"] == submitter.ledger.address and local.accepted.endswith("; disputed")


async def test_a_quote_that_expires_before_the_award_lands_falls_back_to_a_bid_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with market_net(tmp_path, {"solver": SolverPolicy()}) as net:
        submitter = net["submitter"]
        model = await _model(net, tmp_path)
        real_ask = quotes.ask

        async def slow_ask(*args: Any) -> list[quotes.SignedQuote]:
            got = await real_ask(*args)  # a real quote from the solver...
            assert got
            expires = max(q.quote.expires for q in got)
            await wait_until(lambda: submitter.ledger.height >= expires, timeout=120)  # ...that expires
            return got

        monkeypatch.setattr(quotes, "ask", slow_ask)
        view = await submitter.submitter.submit(_request(model, _inputs(tmp_path)))
        assert view["status"] == "open" and view["bid_window_blocks"] == 3  # posted for bids instead
        assert list(submitter.canaries.canaries) in ([], [view["job_id"]])  # the award's canary dropped
