"""The verifier-side agents below the process level: what they sample, check, claim, seal, score and
vote, and one verifier + challenger run over the in-memory market network.

Real compute (torch on CPU), real ledger state machine, real Executor, real market services; the
full cluster (referees, canaries, votes, balances) is tests/test_verification_processes.py. Checked here:
- the verifier's sample grows to a superset of the ledger's when it checks more (one shuffle);
- training items map to the segments that re-check them;
- `first_bad` finds the faked unit of every cheating solver behaviour (inference batches, the first
  training segment), passes honest results, and passes an honest tolerant result with float noise
  inside the spec's bounds while failing noise outside them;
- canaries: a real one opens under the ledger's rule, a decoy opens with nothing; reveal timing;
  which settled jobs teach an answer;
- the voter's score and evidence, and that its commit/reveal pair is accepted by the ledger and
  moves the subject's reputation in the tally;
- over the in-memory market network (tests/market_net.py): the verifier agent reports a fake-train
  result "bad", opens the dispute with the right claim, and its challenger answers every round
  against the solver's real defender until the game is down to the faked segment.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from compute.datasets import SyntheticClasses, encode_inputs, inputs_hash
from compute.determinism import tensors_hash
from compute.executor import InferenceResult, batch_root, run_inference, run_training
from compute.jobs import InferenceSpec, JobSpec, OptimizerSpec, TrainingSpec
from compute.models import Model, decode_weights, encode_weights
from compute.runner import Executor
from compute.tolerance import Tolerance
from gossip.identity import Identity
from ledger.apply import apply_block
from ledger.canary import canary_commitment
from ledger.disputes import dispute_id_for
from ledger.genesis import Genesis, GenesisValidator, genesis_state
from ledger.params import Params
from ledger.randomness import sample_indices
from ledger.repvote import repvote_commitment, repvote_id_for
from ledger.state import Job, State
from ledger.tx import MAX_EVIDENCE_BYTES, sign_tx
from peer.market import wire
from peer.market.behaviours import SolverBehaviour
from peer.market.bundles import check_result, inference_bundle, training_bundle
from peer.market.canaries import answer_of_settled, make_canary, reveal_height
from peer.market.challenger import Material
from peer.market.checkpoints import CheckpointError, fetch_checkpoint
from peer.market.errors import MarketError
from peer.market.referee import verdict_of
from peer.market.verifier import Verifier, effective_rate, first_bad, sampled_leaves, segments_for
from peer.market.voter import Observations, bonded_stake, evidence_bytes
from tests.market_net import assign, committed, market_net
from tests.training_job import announcement, post_job, train, training_spec
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)

MLP = {"arch": "mlp", "in": 16, "hidden": [32], "out": 4}
JOB_ID = "cd" * 32
CHAIN = "hm-verifier-agents"


class ComputeOnly:
    """The part of a MarketService that `first_bad` uses when no checkpoint must be fetched: its
    Executor (a real one)."""

    def __init__(self) -> None:
        self.executor = Executor(max_concurrent=1)


def _record(result: Any, kind: str) -> dict[str, Any]:
    return {"job_id": JOB_ID, "kind": kind, **result.commitment()}


def _material(spec: JobSpec, model: Model, private: bytes | None, bundle: tuple[bytes, Any]) -> Material:
    data, result = bundle
    record = _record(result, spec.kind)
    return Material(record, spec, model, private, check_result(data, record, spec))


def _inference(mode: str = "strict", n: int = 40, batch: int = 8) -> tuple[InferenceSpec, Model, bytes]:
    model = Model.init(MLP, seed=0)
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(1))
    tol = Tolerance("1e-4", "1e-3") if mode == "tolerant" else None
    return InferenceSpec(model.hash, inputs_hash(x), batch, mode=mode, tolerance=tol), model, encode_inputs(x)


def _training(steps: int = 8, every: int = 4) -> tuple[TrainingSpec, Model]:
    model = Model.init(MLP, seed=0)
    spec = TrainingSpec(
        model_hash=model.hash,
        dataset=SyntheticClasses(1, 64, (16,), 4),
        optimizer=OptimizerSpec.sgd("0.1"),
        steps=steps,
        batch_size=16,
        seed=3,
        checkpoint_every=every,
    )
    return spec, model


def _first_bad(m: Material, items: list[int]) -> tuple[int, str] | None:
    async def main() -> tuple[int, str] | None:
        return await first_bad(ComputeOnly(), m, items)  # type: ignore[arg-type]

    return trio.run(main)


# ---- sampling -----------------------------------------------------------------------------------


def test_a_higher_rate_samples_a_superset_of_the_ledgers_sample() -> None:
    rng = random.Random(5)
    for _ in range(200):
        seed, n = rng.randbytes(32), rng.randint(1, 60)
        low = rng.randint(1, 10_000)
        high = effective_rate(low, rng.randint(1, 10_000))
        assert high >= low
        assert set(sample_indices(seed, JOB_ID, n, low)) <= set(sample_indices(seed, JOB_ID, n, high))
    assert effective_rate(2_750, 0) == 2_750 and effective_rate(100, 20_000) == 10_000


def test_verifiers_sample_independently_and_training_samples_whole_segments() -> None:
    rng = random.Random(7)
    differ = 0
    for _ in range(100):
        seed, n = rng.randbytes(32), rng.randint(2, 200)
        a = sampled_leaves(seed, JOB_ID, "verifier-a", True, n, 1_000)
        b = sampled_leaves(seed, JOB_ID, "verifier-b", True, n, 1_000)
        assert a == sampled_leaves(seed, JOB_ID, "verifier-a", True, n, 1_000)  # deterministic
        assert all(1 <= leaf < n for leaf in a)  # a segment end: leaf 0 is the spec's initial state
        assert len(set(segments_for(a))) == len(a)  # no two picks re-run the same segment
        differ += a != b
        assert all(0 <= leaf < n for leaf in sampled_leaves(seed, JOB_ID, "v", False, n, 1_000))
    assert differ > 50


def test_training_items_map_to_the_segments_that_recheck_them() -> None:
    assert segments_for([0]) == [(0, 1)]
    assert segments_for([0, 1, 3]) == [(0, 1), (2, 3)]
    assert segments_for([4, 2, 1]) == [(0, 1), (1, 2), (3, 4)]


# ---- re-execution ---------------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["lazy", "wrong", "swap-model"])
def test_first_bad_finds_a_cheating_inference_batch(behaviour: str) -> None:
    spec, model, inputs = _inference()
    result, faked = SolverBehaviour(behaviour, fraction=0.3).infer(spec, model, inputs, job_id=JOB_ID)
    assert faked
    m = _material(spec, model, inputs, inference_bundle(JOB_ID, result))
    every = list(range(len(m.leaves)))
    bad = _first_bad(m, every)
    assert bad is not None and bad[0] == min(faked)
    honest = run_inference(spec, model, inputs, batches=[bad[0]])
    assert bad[1] == honest.batch_hashes[0]  # the claim carries the hash an honest run gives
    clean = [i for i in every if i not in faked]
    if clean:
        assert _first_bad(m, clean) is None  # only the faked batches fail


def test_first_bad_passes_an_honest_inference_result() -> None:
    spec, model, inputs = _inference()
    m = _material(spec, model, inputs, inference_bundle(JOB_ID, run_inference(spec, model, inputs)))
    assert _first_bad(m, list(range(len(m.leaves)))) is None
    assert _first_bad(m, []) is None


def _noisy(spec: InferenceSpec, model: Model, inputs: bytes, scale: float) -> InferenceResult:
    """An honest tolerant run whose outputs carry float noise of relative size `scale` (as another
    device would give), re-bundled with its own batch hashes."""
    honest = run_inference(spec, model, inputs)
    y = decode_weights(honest.outputs)["y"]
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)) * scale * y.abs()
    noisy = encode_weights({"y": y + noise})
    b = spec.batch_size
    hashes = tuple(tensors_hash({"y": (y + noise)[i : i + b]}) for i in range(0, y.shape[0], b))
    return InferenceResult(noisy, tensors_hash({"y": y + noise}), honest.batches, hashes, batch_root(hashes))


def test_tolerant_noise_inside_the_bounds_passes_and_outside_fails() -> None:
    spec, model, inputs = _inference("tolerant")
    inside = _material(spec, model, inputs, inference_bundle(JOB_ID, _noisy(spec, model, inputs, 1e-6)))
    every = list(range(len(inside.leaves)))
    assert inside.result.output_hash != run_inference(spec, model, inputs).outputs_hash  # not bitwise
    assert _first_bad(inside, every) is None
    outside = _material(spec, model, inputs, inference_bundle(JOB_ID, _noisy(spec, model, inputs, 1e-1)))
    bad = _first_bad(outside, every)
    assert bad is not None and bad[0] == 0


@pytest.mark.parametrize("behaviour", ["lazy", "swap-model"])
def test_first_bad_catches_a_faked_first_training_segment(behaviour: str) -> None:
    spec, model = _training()
    weights, trace, faked = SolverBehaviour(behaviour).train(spec, model, None, job_id=JOB_ID)
    assert 0 in faked
    m = _material(spec, model, None, training_bundle(JOB_ID, weights, trace))
    bad = _first_bad(m, [0])
    assert bad is not None and bad[0] == 1
    _, honest_trace = run_training(spec, model)
    assert bad[1] == honest_trace.checkpoints[1][1]


def test_first_bad_passes_an_honest_training_segment() -> None:
    spec, model = _training()
    weights, trace = run_training(spec, model)
    m = _material(spec, model, None, training_bundle(JOB_ID, weights, trace))
    assert _first_bad(m, [0, 1]) is None


def test_referee_verdicts_name_the_side_one_execution_supports() -> None:
    assert (verdict_of(True), verdict_of(False)) == ("solver", "challenger")


# ---- canaries ---------------------------------------------------------------------------------------


def test_a_real_canary_opens_under_the_ledger_rule_and_a_decoy_with_nothing() -> None:
    expected = hashlib.sha256(b"output").hexdigest()
    real = make_canary(JOB_ID, expected)
    assert real.real and canary_commitment(expected, real.salt) == real.commitment
    assert 16 <= len(real.salt) <= 64
    decoy = make_canary(JOB_ID, None)
    assert not decoy.real and len(decoy.commitment) == 64 and decoy.commitment != real.commitment
    assert make_canary(JOB_ID, expected).commitment != real.commitment  # fresh salt every time


def test_canaries_are_revealed_late_in_the_window_but_after_the_seed() -> None:
    assert reveal_height(100, 20) == 117
    assert reveal_height(100, 4) == 102
    assert reveal_height(100, 20, margin=0) == 120


def test_which_settled_jobs_teach_an_answer() -> None:
    assert answer_of_settled({"v1": "ok"}, False)
    assert not answer_of_settled({}, False)
    assert not answer_of_settled({"v1": "ok", "v2": "bad"}, False)
    assert answer_of_settled({"v2": "bad"}, True)


# ---- voter ------------------------------------------------------------------------------------------

IDS = [Identity.from_seed(hashlib.sha256(b"verifier-agents-%d" % i).digest()) for i in range(4)]
V1, V2, SUBJECT, OPENER = IDS
PARAMS = Params(min_fee=0, registration_burn=10, repvote_commit_blocks=2, repvote_reveal_blocks=2)


def _genesis_state() -> State:
    genesis = Genesis(
        chain_id=CHAIN,
        balances={i.peer_id: 1_000_000 for i in IDS},
        validators=tuple(GenesisValidator(v.peer_id, v.public, 10_000, 0) for v in (V1, V2)),
        params=PARAMS,
        genesis_time_ms=1_000,
    )
    return genesis_state(genesis)


def _apply(state: State, txs: list[tuple[Identity, str, dict[str, Any]]]) -> State:
    nonces = {a.peer_id: acct.nonce for a in IDS if (acct := state.accounts.get(a.peer_id))}
    signed = []
    for who, kind, body in txs:
        nonce = nonces.get(who.peer_id, 0)
        nonces[who.peer_id] = nonce + 1
        signed.append(sign_tx(who, kind, body, nonce=nonce, fee=0, chain_id=CHAIN))
    new, receipts, _ = apply_block(state, state.height + 1, state.time_ms + 1_000, V1.peer_id, signed)
    assert all(r.ok for r in receipts), [r.message for r in receipts]
    return new


def test_scores_follow_observations_around_the_ledger_reputation() -> None:
    state = _genesis_state()
    obs = Observations()
    default = state.params.reputation_default
    assert obs.score_of(state, SUBJECT.peer_id, "solver") == default  # nothing seen: the status quo
    obs.add(SUBJECT.peer_id, "solver", False)
    assert obs.score_of(state, SUBJECT.peer_id, "solver") == default * 2 // 3
    obs.add(SUBJECT.peer_id, "solver", True)
    obs.add(SUBJECT.peer_id, "solver", True)
    assert obs.score_of(state, SUBJECT.peer_id, "solver") == (default * 2 + 20_000) // 5
    state.jobs[JOB_ID] = Job(
        SUBJECT.peer_id, JOB_ID, JOB_ID, "inference", 10, (), 1, 1, 1, 0, "missed", 0,
        solver=V2.peer_id, closed_height=state.height,
    )  # fmt: skip
    obs.last_height = state.height - 1
    obs.from_chain(state)
    assert obs.counts[(V2.peer_id, "solver")] == [0, 1]
    obs.from_chain(state)  # the same closed job is counted once
    assert obs.counts[(V2.peer_id, "solver")] == [0, 1]


def test_evidence_is_short_json_and_only_of_known_kinds() -> None:
    data = evidence_bytes("failed_spot_check", JOB_ID, "x" * 5_000)
    assert len(data) <= MAX_EVIDENCE_BYTES and b'"kind":"failed_spot_check"' in data
    with pytest.raises(MarketError):
        evidence_bytes("gossip", JOB_ID)


def test_the_voters_commit_and_reveal_are_accepted_and_move_the_reputation() -> None:
    state = _genesis_state()
    assert bonded_stake(state, V1.peer_id) == 10_000 and bonded_stake(state, OPENER.peer_id) == 0
    state = _apply(state, [(SUBJECT, "register", {"role": "solver"})])
    body = {"subject": SUBJECT.peer_id, "role": "solver", "evidence": evidence_bytes("dispute_lost", JOB_ID)}
    state = _apply(state, [(V1, "vote_open", body | {"deposit": PARAMS.repvote_min_deposit})])
    vote_id = repvote_id_for(CHAIN, V1.peer_id, 0)
    obs = Observations()
    obs.add(SUBJECT.peer_id, "solver", False)
    salts = {v.peer_id: bytes([i]) * 32 for i, v in enumerate((V1, V2))}
    score = obs.score_of(state, SUBJECT.peer_id, "solver")
    commits = [
        (
            v,
            "vote_commit",
            {
                "vote_id": vote_id,
                "commitment": repvote_commitment(vote_id, v.peer_id, score, salts[v.peer_id]),
            },
        )
        for v in (V1, V2)
    ]
    state = _apply(state, commits)
    while state.height <= state.repvotes[vote_id].commit_end:
        state = _apply(state, [])
    reveals = [
        (v, "vote_reveal", {"vote_id": vote_id, "score": score, "salt": salts[v.peer_id]}) for v in (V1, V2)
    ]
    state = _apply(state, reveals)
    while state.repvotes[vote_id].status == "voting":
        state = _apply(state, [])
    vote = state.repvotes[vote_id]
    assert (vote.status, vote.consensus, vote.tally) == ("tallied", score, score)
    assert state.reputation[(SUBJECT.peer_id, "solver")] < PARAMS.reputation_default


# ---- verifier and challenger over the in-memory market network -------------------------------------


async def test_the_verifier_reports_and_its_challenger_bisects_a_fake_train_job(tmp_path: Path) -> None:
    spec, model = training_spec(16, 1)
    _, honest = run_training(spec, model)
    async with market_net(tmp_path) as net:
        submitter, solver, verifier = net["submitter"], net["solver"], net["verifier"]
        job_id = await post_job(net, spec, model)
        job_note = await announcement(net, job_id, spec, model)
        await assign(net, job_id)
        # the solver keeps and serves every state
        weights, trace, faked = train(solver, job_id, spec, model, SolverBehaviour("fake-train"))
        data, result = training_bundle(job_id, weights, trace)
        result_blob = await solver.put_blob(data)
        notes = [(submitter, job_note), (solver, wire.ResultNote(job_id, result_blob, result.size))]
        # Checks every item (the ledger's sample is a subset), so the faked segment is always in it.
        agent = Verifier(verifier, verifier.challenger, enabled=True, min_rate_bps=10_000, gather_timeout=3.0)
        dispute_id = dispute_id_for(job_id)

        def closed() -> bool:
            d = verifier.ledger.state.disputes.get(dispute_id)
            return d is not None and d.phase == "closed"

        async with trio.open_nursery() as nursery:

            async def announce() -> None:
                while True:
                    for market, note in notes:
                        await market.publish(note)
                    await trio.sleep(1.0)  # pacing: gossip is best effort

            # The submitter (holder of the spec and model) is unreachable when the check starts:
            # the check fails, is retried, and succeeds once the network heals.
            network = verifier.transport.network
            network.partition([submitter.identity.peer_id])
            nursery.start_soon(announce)
            nursery.start_soon(agent.run)
            await solver.ledger.send("job_commit", {"job_id": job_id, **result.commitment()})
            await wait_until(lambda: job_id in agent.checks and agent.checks[job_id].error != "", timeout=60)
            assert agent.checks[job_id].phase == "checking"  # failed once, to be tried again
            network.heal()
            await wait_until(closed, timeout=150)
            nursery.cancel_scope.cancel()

    bad = faked[0] + 1  # the end leaf of the first faked segment
    assert (
        honest.checkpoints[bad - 1] == trace.checkpoints[bad - 1]
        and honest.checkpoints[bad] != trace.checkpoints[bad]
    )
    check = agent.checks[job_id]
    assert (check.verdict, check.phase, check.bad_index) == ("bad", "disputed", bad)
    assert check.items == tuple(range(1, len(trace.checkpoints)))  # every segment, at rate 100%
    d = verifier.ledger.state.disputes[dispute_id]
    assert (d.challenger, d.claim_index, d.claim_hash) == (
        verifier.ledger.address,
        bad,
        honest.checkpoints[bad][1],
    )
    assert (d.lo, d.hi) == (bad - 1, bad)  # the challenger's answers narrowed the game to the faked segment
    assert (
        d.rounds >= (1 if bad > 1 else 0) and verifier.challenger.answered.get(dispute_id, -1) == d.rounds - 1
    )
    assert d.reason == "no_committee"  # the only validator is the solver itself


async def test_a_tolerant_check_waits_for_the_solvers_states_and_gets_them_before_its_ledger_has_the_commit(
    tmp_path: Path,
) -> None:
    """A noisy (honest) tolerant result is judged against the solver's own states. While the solver
    does not serve them, the check raises to be retried instead of accusing, except when the
    verifier must decide (its last attempt). The solver serves them as soon as the trace is
    sealed, even before its own ledger has applied the commit the asker already saw."""
    base, model = training_spec(8, 4)
    spec = replace(base, mode="tolerant", tolerance=Tolerance("1e-5", "1e-4"))
    _, honest = run_training(spec, model)
    async with market_net(tmp_path) as net:
        solver, verifier = net["solver"], net["verifier"]
        job_id = await post_job(net, spec, model)
        await assign(net, job_id)
        weights, trace, _ = train(solver, job_id, spec, model, SolverBehaviour("noisy"))
        assert trace.root != honest.root
        # Not committed yet anywhere: the asker proves the state against the root it will see.
        seen = {**(verifier.ledger.job(job_id) or {}), "trace_root": trace.root}
        assert not (solver.ledger.job(job_id) or {}).get("trace_root")
        served = await fetch_checkpoint(verifier, seen, 1)
        assert served.step == 4 and served.state_hash == trace.checkpoints[1][1]

        data, result = training_bundle(job_id, weights, trace)
        record = await committed(net, job_id, result.commitment())
        m = Material(record, spec, model, None, check_result(data, record, spec))
        assert await first_bad(verifier, m, [1, 2]) is None  # within the bounds, not bitwise

        await solver.in_thread(solver.checkpoints.drop, job_id)  # the states are not served now
        with pytest.raises(CheckpointError):
            await first_bad(verifier, m, [1, 2])
        assert await first_bad(verifier, m, [1, 2], need_states=False) == (1, honest.checkpoints[1][1])
