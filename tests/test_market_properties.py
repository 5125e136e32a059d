"""Property tests of the market: random interleavings of market txs, empty blocks and dispute verdicts.

Checked after every tx, block and dispute step: minted == supply + burned, where supply counts
balances, stake, escrowed bounties, bid and job bonds, the verifier pool and the treasury (so
nothing is created or lost); nothing negative; timers and bids consistent with job statuses
(`check_invariants`); a failing tx changes only its sender's fee and nonce; a job in a final
status never changes again; stepping begin/deliver/end gives what apply_block gives; replaying
the same blocks and verdicts from genesis gives the same app hashes; the state round-trips
through its encoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.identity import Identity
from ledger.apply import apply_block, begin_block, deliver_tx, end_block
from ledger.errors import LedgerError
from ledger.genesis import Genesis, genesis_state
from ledger.jobs import award_job_id, open_dispute, resolve_dispute
from ledger.params import Params
from ledger.payout import min_bond
from ledger.quotes import Quote
from ledger.state import FINAL_STATUSES, State, app_hash, check_invariants, decode_state, encode_state
from ledger.tx import SignedTx, sign_tx

CHAIN = "hm-market-prop"
N = 6
IDS = [Identity.from_seed(hashlib.sha256(b"mprop-%d" % i).digest()) for i in range(N)]
A = [i.peer_id for i in IDS]
SOLVERS = (2, 3, 4, 0)
MODELS = [hashlib.sha256(b"model-%d" % i).hexdigest() for i in range(4)]  # 0, 1 registered at setup
KEY = bytes(32)
PARAMS = Params(
    min_fee=1,
    registration_burn=50,
    max_royalty_bps=1_000,
    job_verifier_share_bps=700,
    job_treasury_share_bps=300,
    min_solver_bond_bps=1_500,
    min_challenge_window_blocks=1,
    max_job_window_blocks=4,
    max_bids_per_job=2,
    job_miss_compensation_bps=3_333,
    reputation_gain_bps=1_000,
    reputation_miss_bps=3_000,
    reputation_dispute_bps=6_000,
)
GENESIS = Genesis.from_dict(
    {
        "chain_id": CHAIN,
        "balances": {a: 20_000 for a in A},
        "validators": [
            {"address": A[0], "pubkey": IDS[0].public.hex(), "self_stake": 3_000, "commission_bps": 0}
        ],
        "params": PARAMS.to_dict(),
    }
)
REQUIREMENTS = [{}, {}, {"max_price": 900}, {"min_reputation": 4_800}, {"min_stake": 2_000}]
KINDS = ["job_post"] * 3 + ["job_bid"] * 4 + ["job_commit"] * 3 + ["job_award"] * 2
KINDS += ["job_cancel", "job_accept", "model_register", "model_transfer", "transfer"]


@dataclass(frozen=True)
class Op:
    kind: str
    sender: int
    pick: int
    amount: int
    extra: int


ops = st.builds(
    Op,
    kind=st.sampled_from(KINDS),
    sender=st.integers(0, N - 1),
    pick=st.integers(0, 30),
    amount=st.integers(1, 25_000),
    extra=st.integers(0, 60),
)
verdicts = st.lists(
    st.tuples(st.sampled_from(["dispute", "honest", "guilty"]), st.integers(0, 30), st.integers(0, 10_000)),
    max_size=1,
)
plans = st.lists(
    st.tuples(st.lists(ops, max_size=8), verdicts, st.integers(0, N - 1)), min_size=1, max_size=16
)


def _with_status(state: State, status: str) -> list[str]:
    return sorted(jid for jid, j in state.jobs.items() if j.status == status)


def _pick_job(state: State, op: Op, status: str) -> str:
    """Mostly a job in `status`; sometimes any job, or one that does not exist.

    Small draws (which hypothesis favours) give the aimed choice; rarer residues give the misses.
    """
    preferred = _with_status(state, status)
    pool = preferred if preferred and op.extra % 5 != 4 else sorted(state.jobs)
    if pool and op.pick % 8 != 7:
        return pool[op.pick % len(pool)]
    return hashlib.sha256(b"no-job-%d" % op.pick).hexdigest()


def _model(op: Op) -> str:
    """One of the two registered models, sometimes one that is not registered (yet)."""
    return MODELS[2 + op.pick % 2 if op.pick % 6 == 5 else op.pick % 2]


def _post_body(op: Op) -> dict:
    return {
        "spec_hash": hashlib.sha256(b"spec-%d" % op.pick).hexdigest(),
        "model_hash": _model(op),
        "kind": ("inference", "training")[op.extra % 2],
        "bounty": op.amount // (1 + op.extra % 20) + 1,
        "bid_window_blocks": 0 if op.extra % 13 == 12 else 1 + op.extra % 4,
        "deadline_blocks": 1 + op.pick % 4,
        "challenge_window_blocks": 1 + op.extra % 4 + (op.pick == 30),
        "requirements": REQUIREMENTS[op.pick % len(REQUIREMENTS)],
    }


def _price_and_bond(op: Op, bounty: int) -> tuple[int, int]:
    """A price around the bounty (sometimes above it) and a bond around the minimum (sometimes below)."""
    price = max(1, bounty * (1 + op.extra % 11) // 10)
    least = min_bond(price, PARAMS.min_solver_bond_bps)
    return price, max(0, least - 1) if op.pick % 5 == 4 else least + op.pick % 5


def _award_body(state: State, op: Op, sender: int, nonce: int, aim: bool) -> dict:
    """A job_award from `sender` (whose tx carries `nonce`) with a quote that is mostly valid:
    sometimes signed by the wrong key, changed after signing, expired, or for an unfit solver."""
    body = {k: v for k, v in _post_body(op).items() if k != "bid_window_blocks"}
    solver = SOLVERS[op.pick % len(SOLVERS)] if aim else op.pick % N
    price, bond = _price_and_bond(op, body["bounty"])
    if op.amount % 17 == 16:
        bond = 20_000 + op.amount  # more than the solver has
    height = state.height + 1  # the block this tx goes into
    body |= {
        "solver": A[solver],
        "price": price,
        "bond": bond,
        "encryption_key": KEY,
        "quote_expires": height - 1 if op.amount % 11 == 10 else height + op.amount % 3,
    }
    quoted = ("spec_hash", "deadline_blocks", "price", "bond", "encryption_key", "quote_expires")
    body |= {"job_salt": hashlib.sha256(b"%d/%d" % (sender, nonce)).digest()[:16], "canary": ""}
    if op.amount % 23 == 22:
        body["canary"] = hashlib.sha256(b"canary").hexdigest()
    quote = Quote(award_job_id(CHAIN, A[sender], body["job_salt"]), *(body[k] for k in quoted))
    signer = solver if op.amount % 13 != 12 else (solver + 1) % N
    body["quote_sig"] = quote.sign(IDS[signer], CHAIN)
    if op.amount % 19 == 18:
        body["price"] += 1  # changed after signing
    return body


def aimed(state: State, op: Op, nonces: dict[str, int]) -> tuple[int, dict]:
    """(sender, body) for `op`: most ops come from the party that can send them and are valid-ish.

    nonces: the nonce each sender's next tx will carry (a job_award's quote signs its job id)."""
    sender, aim = op.sender, op.extra % 4 != 3
    if op.kind == "job_post":
        return sender, _post_body(op)
    if op.kind == "job_award":
        return sender, _award_body(state, op, sender, nonces[A[sender]], aim)
    if op.kind == "job_bid":
        job_id = _pick_job(state, op, "open")
        bounty = state.jobs[job_id].bounty if job_id in state.jobs else 1_000
        price, bond = _price_and_bond(op, bounty)
        sender = SOLVERS[op.sender % len(SOLVERS)] if aim else sender
        return sender, {"job_id": job_id, "price": price, "bond": bond, "encryption_key": KEY}
    if op.kind == "job_commit":
        job_id = _pick_job(state, op, "assigned")
        if job_id in state.jobs and state.jobs[job_id].solver and aim:
            sender = A.index(state.jobs[job_id].solver)
        digest = hashlib.sha256(b"out-%d" % op.amount).hexdigest()
        return sender, {
            "job_id": job_id,
            "output_hash": digest,
            "trace_root": digest,
            "result_size": op.amount,
        }
    if op.kind == "job_accept":
        job_id = _pick_job(state, op, "committed")
        if job_id in state.jobs and aim:
            sender = A.index(state.jobs[job_id].submitter)
        return sender, {"job_id": job_id}
    if op.kind == "job_cancel":
        job_id = _pick_job(state, op, "open")
        if job_id in state.jobs and aim:
            sender = A.index(state.jobs[job_id].submitter)
        return sender, {"job_id": job_id}
    if op.kind in ("model_register", "model_transfer") and aim:
        owner = state.models.get(_model(op))
        sender = A.index(owner.owner) if owner is not None else (1, 5)[op.extra % 2]
    if op.kind == "model_register":
        return sender, {"model_hash": _model(op), "arch": "mlp", "royalty_bps": op.amount % 1_200}
    if op.kind == "model_transfer":
        return sender, {"model_hash": _model(op), "to": A[op.extra % N]}
    return sender, {"to": A[op.pick % N], "amount": op.amount // 10 + 1}


def build_txs(state: State, block_ops: list[Op]) -> list[SignedTx]:
    guess = {a: acct.nonce for a, acct in state.accounts.items()}
    txs = []
    for op in block_ops:
        sender, body = aimed(state, op, guess)
        nonce = guess[A[sender]]
        guess[A[sender]] = nonce + 1
        txs.append(sign_tx(IDS[sender], op.kind, body, nonce=nonce, fee=1 + op.pick % 2, chain_id=CHAIN))
    return txs


def apply_verdict(state: State, verdict: tuple[str, int, int]) -> State:
    """Run one dispute-game outcome through the hook; a refused one leaves the state as it was."""
    action, pick, jackpot = verdict
    wanted = "committed" if action == "dispute" else "disputed"
    candidates = _with_status(state, wanted) or sorted(state.jobs)
    if not candidates:
        return state
    job_id = candidates[pick % len(candidates)]
    challenger = A[5 - pick % 2]
    before = app_hash(state)
    try:
        if action == "dispute":
            new = open_dispute(state, job_id, challenger)
        else:
            new = resolve_dispute(state, job_id, action == "honest", challenger, jackpot)
    except LedgerError:
        new = state
    assert app_hash(state) == before, "the dispute hook must not mutate its input"
    return new


def setup_chain() -> tuple[State, list]:
    """Height 1 registers roles, height 2 registers two models."""
    state = genesis_state(GENESIS)
    roles = [
        (0, "solver"),
        (1, "model_owner"),
        (2, "solver"),
        (3, "solver"),
        (4, "solver"),
        (5, "model_owner"),
    ]
    setup = [
        [sign_tx(IDS[i], "register", {"role": r}, nonce=0, fee=1, chain_id=CHAIN) for i, r in roles],
        [
            sign_tx(
                IDS[i],
                "model_register",
                {"model_hash": MODELS[m], "arch": "mlp", "royalty_bps": 700 + m},
                nonce=1,
                fee=1,
                chain_id=CHAIN,
            )
            for i, m in ((1, 0), (5, 1))
        ],
    ]
    history = []
    for h, txs in enumerate(setup, start=1):
        raw = [t.encoded for t in txs]
        state, receipts, digest = apply_block(state, h, h * 1_000, A[0], raw)
        assert all(r.ok for r in receipts), receipts
        history.append((h, A[0], raw, [], digest))
    return state, history


def step_block(state: State, h: int, proposer: str, txs: list[SignedTx]) -> State:
    s = begin_block(state, h, h * 1_000, proposer)
    for stx in txs:
        after, r = deliver_tx(s, stx)
        if r.charged and not r.ok:
            expected = s.copy()
            acct = expected.accounts[stx.sender_address]
            expected.accounts[stx.sender_address] = replace(
                acct, balance=acct.balance - r.fee, nonce=acct.nonce + 1
            )
            expected.fee_pool += r.fee
            assert after == expected, r
        check_invariants(after)
        s = after
    s, _ = end_block(s)
    return s


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans)
def test_random_market_keeps_supply_and_replays(plan):
    state, history = setup_chain()
    minted = state.minted
    final: dict[str, object] = {}
    for h, (block_ops, block_verdicts, proposer_i) in enumerate(plan, start=3):
        txs = build_txs(state, block_ops)
        raw = [t.encoded for t in txs]
        stepped = step_block(state, h, A[proposer_i], txs)
        new, receipts, digest = apply_block(state, h, h * 1_000, A[proposer_i], raw)
        assert new == stepped and digest == app_hash(new) and len(receipts) == len(txs)
        for verdict in block_verdicts:
            new = apply_verdict(new, verdict)
        check_invariants(new)
        assert new.minted == minted and new.fee_pool == 0
        assert all(a.balance >= 0 for a in new.accounts.values())
        for jid, record in final.items():
            assert new.jobs[jid] == record, f"job {jid} changed after it closed"
        final |= {jid: j for jid, j in new.jobs.items() if j.status in FINAL_STATUSES}
        history.append((h, A[proposer_i], raw, block_verdicts, app_hash(new)))
        state = new

    assert decode_state(encode_state(state)) == state
    replay = genesis_state(GENESIS)
    for h, proposer, raw, block_verdicts, digest in history:
        replay, _, _ = apply_block(replay, h, h * 1_000, proposer, raw)
        for verdict in block_verdicts:
            replay = apply_verdict(replay, verdict)
        assert app_hash(replay) == digest
    assert replay == state


@settings(max_examples=25, deadline=None)
@given(st.lists(ops, min_size=1, max_size=6))
def test_the_same_ops_every_block_drive_jobs_to_the_end(block_ops):
    """Many blocks of the same ops: jobs go through every phase and every token stays accounted for."""
    state, _ = setup_chain()
    for h in range(3, 16):
        state, receipts, _ = apply_block(state, h, h * 1_000, A[h % N], build_txs(state, block_ops))
        assert len(receipts) == len(block_ops)
        check_invariants(state)
    for _ in range(10):  # no new txs: every job runs out its windows and closes
        h = state.height + 1
        state, _, _ = apply_block(state, h, h * 1_000, A[0], [])
    check_invariants(state)
    assert all(j.status in FINAL_STATUSES for j in state.jobs.values())
    assert not state.bids and not state.job_timers
