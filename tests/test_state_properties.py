"""Property tests of the ledger: random signed txs (valid and not) across random blocks with evidence.

Checked after every tx and block: supply + burned == minted, nothing negative, delegation sums
match, each sender's charged nonces run 0, 1, 2, ... with no gap or repeat, a failing tx changes
only its sender's fee and nonce (and the block fee pool), an excluded tx changes nothing, stepping
begin/deliver/end gives exactly what apply_block gives, and replaying from genesis gives the same
app hashes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.envelope import packb
from gossip.identity import Identity
from ledger.apply import Receipt, apply_block, begin_block, deliver_tx, end_block
from ledger.errors import InvalidTx
from ledger.genesis import Genesis, genesis_state
from ledger.params import Params
from ledger.slashing import Evidence
from ledger.state import State, app_hash, check_invariants
from ledger.tx import SignedTx, decode_tx, sign_tx

CHAIN = "hm-prop"
N = 5
IDS = [Identity.from_seed(hashlib.sha256(b"acct-%d" % i).digest()) for i in range(N)]
A = [i.peer_id for i in IDS]
PARAMS = Params(
    min_fee=1,
    registration_burn=50,
    max_commission_bps=1_000,
    unbonding_blocks=3,
    max_unbonding_entries=2,
    double_sign_slash_bps=1_000,
    jail_blocks=2,
    evidence_max_age_blocks=3,
    max_validators=2,
    power_reduction=10,
    gov_voting_blocks=2,
    gov_quorum_bps=3_000,
    gov_threshold_bps=5_000,
    gov_deposit=100,
)
GENESIS = Genesis.from_dict(
    {
        "chain_id": CHAIN,
        "balances": {a: 3_000 for a in A},
        "validators": [
            {"address": A[i], "pubkey": IDS[i].public.hex(), "self_stake": 2_000, "commission_bps": 100}
            for i in (0, 1)
        ],
        "params": PARAMS.to_dict(),
    }
)
KINDS = ["transfer", "transfer", "stake", "unstake", "delegate", "undelegate", "register", "unjail"]
KINDS += ["param_change", "vote"]
CHANGES = [{"min_fee": 2}, {"max_validators": 1}, {"unbonding_blocks": 4}, {"evidence_max_age_blocks": 9}]


@dataclass(frozen=True)
class Op:
    kind: str
    sender: int
    target: int
    amount: int
    fee: int
    fault: str | None  # None, "nonce", "sig", "chain"


ops = st.builds(
    Op,
    kind=st.sampled_from(KINDS),
    sender=st.integers(0, N - 1),
    target=st.integers(0, N - 1),
    amount=st.integers(1, 3_500),
    fee=st.sampled_from([0, 1, 1, 1, 2, 2, 50]),
    fault=st.sampled_from([None] * 9 + ["nonce", "sig", "chain"]),
)
blocks = st.lists(
    st.tuples(
        st.lists(ops, max_size=8),
        st.lists(st.tuples(st.integers(0, N - 1), st.integers(0, 4)), max_size=2),
        st.integers(0, N - 1),
    ),
    min_size=1,
    max_size=8,
)


def body_of(op: Op, state: State) -> dict:
    """The op's body; most undelegates and votes aim at something that exists in `state`."""
    if op.kind == "transfer":
        return {"to": A[op.target], "amount": op.amount}
    if op.kind == "stake":  # the commission sometimes differs from the first stake's: CommissionMismatch
        return {"amount": op.amount, "commission_bps": 100 * (op.target % 3)}
    if op.kind == "unstake":
        return {"amount": op.amount}
    if op.kind == "delegate":  # mostly the genesis validators, sometimes anyone
        return {"validator": A[op.target % 2 if op.amount % 4 else op.target], "amount": op.amount // 4 + 1}
    if op.kind == "undelegate":
        mine = [v for (d, v) in sorted(state.delegations) if d == A[op.sender]]
        target = mine[op.target % len(mine)] if mine and op.amount % 4 else A[op.target]
        return {"validator": target, "amount": op.amount // 8 + 1}
    if op.kind == "register":
        return {"role": ["validator", "solver", "validator", "verifier", "model_owner"][op.target]}
    if op.kind == "param_change":
        return {"changes": CHANGES[op.target % len(CHANGES)]}
    if op.kind == "vote":
        open_ids = [pid for pid, p in sorted(state.proposals.items()) if p.status == "voting"]
        pid = open_ids[op.target % len(open_ids)] if open_ids and op.amount % 4 else 1 + op.amount % 3
        return {"proposal": pid, "option": "yes" if op.amount % 3 else "no"}
    return {}


def aimed(op: Op, state: State) -> Op:
    """Most undelegates and votes come from a sender that has something to undelegate or vote with."""
    holders = sorted({A.index(d) for d, _ in state.delegations} | ({0, 1} if op.kind == "vote" else set()))
    if op.kind in ("undelegate", "vote") and holders and op.amount % 4:
        return replace(op, sender=holders[op.sender % len(holders)])
    return op


def build_txs(state: State, block_ops: list[Op]) -> list[SignedTx]:
    """Sign each op with a guessed nonce: the account nonce plus the sender's earlier admissible ops."""
    guess = {a: acct.nonce for a, acct in state.accounts.items()}
    txs = []
    for op in block_ops:
        op = aimed(op, state)
        addr = A[op.sender]
        nonce = guess.get(addr, 0)
        if op.fault == "nonce":
            nonce += 1 + op.amount % 2
        elif op.fault is None and op.fee >= state.params.min_fee:
            guess[addr] = nonce + 1
        chain = "other" if op.fault == "chain" else CHAIN
        stx = sign_tx(IDS[op.sender], op.kind, body_of(op, state), nonce=nonce, fee=op.fee, chain_id=chain)
        if op.fault == "sig":
            stx = SignedTx(stx.tx, bytes(reversed(stx.signature)))
        txs.append(stx)
    return txs


def expected_after_failure(before: State, stx: SignedTx) -> State:
    """The only change a charged-but-failed tx may make: fee out of the sender, nonce + 1."""
    s = before.copy()
    addr = stx.sender_address
    acct = s.accounts[addr]
    s.accounts[addr] = replace(acct, balance=acct.balance - stx.tx.fee, nonce=acct.nonce + 1)
    s.fee_pool += stx.tx.fee
    return s


def step_block(
    state: State, h: int, proposer: str, txs: list[SignedTx], ev: list[Evidence]
) -> tuple[State, list[Receipt]]:
    s = begin_block(state, h, h * 1_000, proposer, ev)
    receipts = []
    for stx in txs:
        before = app_hash(s)
        after, r = deliver_tx(s, stx)
        assert app_hash(s) == before, "deliver_tx must not mutate its input"
        if not r.charged:
            assert after == s, r
        elif not r.ok:
            assert after == expected_after_failure(s, stx), r
        check_invariants(after)
        receipts.append(r)
        s = after
    s, _ = end_block(s)
    return s, receipts


@settings(max_examples=70, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks)
def test_random_blocks_keep_invariants_and_replay(plan):
    state = genesis_state(GENESIS)
    minted = state.minted
    charged_nonces: dict[str, list[int]] = {a: [] for a in A}
    history = []
    for h, (block_ops, ev_spec, proposer_i) in enumerate(plan, start=1):
        txs = build_txs(state, block_ops)
        ev = [Evidence(A[v], h - 1 - age) for v, age in ev_spec]
        proposer = A[proposer_i]
        stepped, receipts = step_block(state, h, proposer, txs, ev)
        new, block_receipts, digest = apply_block(state, h, h * 1_000, proposer, [t.encoded for t in txs], ev)
        assert block_receipts == receipts and new == stepped and digest == app_hash(stepped)

        for stx, op, r in zip(txs, block_ops, receipts, strict=True):
            if op.fault is not None or op.fee == 0:
                assert not r.charged, (op, r)
            if r.charged:
                charged_nonces[stx.sender_address].append(stx.tx.nonce)
        for a in A:
            assert new.accounts[a].nonce == len(charged_nonces[a])
        assert new.minted == minted and new.fee_pool == 0
        check_invariants(new)
        history.append((h, proposer, [t.encoded for t in txs], ev, digest))
        state = new

    for a in A:
        assert charged_nonces[a] == list(range(len(charged_nonces[a])))

    replay = genesis_state(GENESIS)
    for h, proposer, raw, ev, digest in history:
        replay, _, again = apply_block(replay, h, h * 1_000, proposer, raw, ev)
        assert again == digest
    assert replay == state


@settings(max_examples=25, deadline=None)
@given(st.lists(ops, min_size=1, max_size=10))
def test_slashing_and_unbonding_never_mint(block_ops):
    """Many blocks of the same ops with evidence every few blocks: supply only ever goes to burned."""
    state = genesis_state(GENESIS)
    for h in range(1, 9):
        ev = [Evidence(A[h % 2], h - 2)] if h % 3 == 0 else []
        state, receipts, _ = apply_block(state, h, h, A[h % N], build_txs(state, block_ops), ev)
        assert len(receipts) == len(block_ops)
        check_invariants(state)
        assert all(v.self_stake >= 0 and v.delegated >= 0 for v in state.validators.values())
        assert all(amount > 0 for amount in state.delegations.values())


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), inner)
    ),
    max_leaves=8,
)
WIRE = {"body": {"to": A[1], "amount": 5}, "chain": CHAIN, "fee": 1, "nonce": 0}
WIRE |= {"sender": IDS[0].public, "sig": bytes(64), "type": "transfer", "v": 1}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*sorted(WIRE), "body.to", "body.amount", "body.extra"]), msgpack_values)
def test_decode_tx_never_crashes_on_garbage(field: str, value):
    raw = {**WIRE, "body": dict(WIRE["body"])}
    if field.startswith("body."):
        raw["body"][field[5:]] = value
    else:
        raw[field] = value
    data = packb(raw)
    try:
        stx = decode_tx(data)
    except InvalidTx:
        return
    assert stx.encoded == data and decode_tx(stx.encoded) == stx


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_apply_block_survives_random_bytes(data: bytes):
    state = genesis_state(GENESIS)
    new, (r,), _ = apply_block(state, 1, 1, A[0], [data])
    assert not r.charged and new.accounts == state.accounts
