"""A solver restarted while its private-input job is assigned still gets the input, from the submitter.

The market network of tests/market_net.py. The solver's market is down when the ledger assigns
it the job and the submitter seals the input to it and gossips the input note; it comes back
deaf to input notes, so its fresh book never hears one. It asks the submitter over the input
protocol instead, runs the job, commits and is paid. Peers other than the assigned solver are
refused the input of an assigned job, and what the solver is handed is sealed to the key of its
winning bid on the ledger, never to a key its request names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peer.market import wire
from peer.market.chain import MarketLedger
from peer.market.inputs import InputUnavailable, make_handler, request_input
from peer.market.sealed import SealError, open_sealed, public_bytes, x25519_key
from tests.market_net import IDS, Net, market_net
from tests.training_job import submit_private_training
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)


async def _assign_while_down(net: Net, job_id: str) -> dict[str, Any]:
    """Bid from the solver's ledger (its market is stopped) until the job is assigned to it."""
    ledger = MarketLedger(net.peers["solver"].ledger)  # what its market would use
    await wait_until(lambda: ledger.job(job_id) is not None, timeout=45)
    key = public_bytes(x25519_key(IDS["solver"]))  # what its market would bid with
    await ledger.send("job_bid", {"job_id": job_id, "price": 100, "bond": 100, "encryption_key": key})
    await wait_until(lambda: (ledger.job(job_id) or {}).get("status") == "assigned", timeout=45)
    return ledger.job(job_id) or {}


async def _solver_gets_it_sealed_to_its_bid_key(
    net: Net, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Had the submitter not sealed the input to the solver yet, the solver's request is answered
    with a blob sealed to the key of its winning bid, whatever key the request names."""
    submitter = net["submitter"]
    handle = make_handler(submitter)
    with monkeypatch.context() as patch:
        patch.setattr(submitter.submitter, "input_sent", lambda _: None)
        outsider_key = public_bytes(x25519_key(IDS["outsider"]))
        reply = await handle(IDS["solver"].peer_id, {"job_id": job_id, "key": outsider_key})
    assert reply["blob"] != submitter.submitter.input_sent(job_id)  # sealed afresh
    sealed, context = await submitter.read_blob(reply["blob"]), job_id.encode()
    assert open_sealed(x25519_key(IDS["solver"]), sealed, context)
    with pytest.raises(SealError):
        open_sealed(x25519_key(IDS["outsider"]), sealed, context)


async def test_a_solver_restarted_before_it_got_the_input_asks_the_submitter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with market_net(tmp_path) as net:
        submitter = net["submitter"]
        me = submitter.ledger.address
        job_id = await submit_private_training(net, tmp_path, 8, 2)
        await net.stop("solver")  # down before it could start the job (kill -9)
        job = await _assign_while_down(net, job_id)
        await wait_until(lambda: (job_id, me) in submitter.book.inputs, timeout=45)  # sealed, gossiped
        sent = submitter.submitter.input_sent(job_id)
        assert sent is not None and submitter.book.inputs[(job_id, me)].blob == sent

        # Nobody but the assigned solver gets the input of an assigned job, verifier role or not.
        for name in ("outsider", "verifier"):
            with pytest.raises(InputUnavailable, match="assigned, not being checked"):
                await request_input(net[name], job_id, me)

        await _solver_gets_it_sealed_to_its_bid_key(net, job_id, monkeypatch)

        net.peers["solver"].deaf_to.add(wire.KIND_INPUT)  # its fresh book never hears the note again
        await net.peers["solver"].start()
        solver = net["solver"]
        await wait_until(lambda: (solver.ledger.job(job_id) or {}).get("status") == "finalized", timeout=120)
        assert (job_id, me) not in solver.book.inputs
        assert solver.store.has(sent)  # the blob the submitter had sealed to it, handed over on request
        record = solver.solver.records[job_id]
        await wait_until(lambda: record.phase == "finalized", timeout=45)  # paid, not slashed
        assert not record.error and "running" in record.times
        final = solver.ledger.job(job_id) or {}
        assert final["solver"] == job["solver"] == solver.ledger.address and final["output_hash"]
        await wait_until(lambda: submitter.submitter.jobs[job_id].verified, timeout=45)  # result checked
        await wait_until(lambda: job_id not in solver.solver.journal.records(), timeout=45)
