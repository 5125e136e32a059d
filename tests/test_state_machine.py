"""Unit tests of the ledger state machine: tx encoding, admission, every tx type, blocks, genesis."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from gossip.envelope import packb
from gossip.identity import Identity
from ledger import errors
from ledger.apply import HANDLERS, Receipt, apply_block, begin_block, check_tx, deliver_tx, end_block
from ledger.genesis import Genesis, genesis_state
from ledger.params import Params
from ledger.slashing import Evidence
from ledger.state import (
    State,
    account,
    app_hash,
    balance,
    check_invariants,
    decode_state,
    delegations,
    encode_state,
    total_supply,
    unbondings,
    validator_set_at,
    validators,
)
from ledger.tx import BODY_SCHEMAS, MAX_TX_BYTES, SignedTx, decode_tx, sign_tx, verify_tx

CHAIN = "hm-test"
IDS = [Identity.from_seed(hashlib.sha256(b"acct-%d" % i).digest()) for i in range(6)]
A = [i.peer_id for i in IDS]
PARAMS = Params(
    min_fee=2,
    registration_burn=100,
    max_commission_bps=2_000,
    unbonding_blocks=5,
    max_unbonding_entries=2,
    double_sign_slash_bps=1_000,
    jail_blocks=3,
    evidence_max_age_blocks=5,
    max_validators=3,
    power_reduction=10,
    gov_voting_blocks=3,
    gov_quorum_bps=5_000,
    gov_threshold_bps=5_000,
    gov_deposit=500,
)
START = 100_000


def make_genesis(
    params: Params = PARAMS, vals: tuple[tuple[int, int], ...] = ((0, 5_000), (1, 3_000))
) -> Genesis:
    return Genesis.from_dict(
        {
            "chain_id": CHAIN,
            "balances": {a: START for a in A},
            "validators": [
                {"address": A[i], "pubkey": IDS[i].public.hex(), "self_stake": s, "commission_bps": 1_000}
                for i, s in vals
            ],
            "params": params.to_dict(),
        }
    )


class Chain:
    """A ledger driven block by block; the proposer of every block is account 5 unless told."""

    def __init__(self, genesis: Genesis | None = None) -> None:
        self.state = genesis_state(genesis or make_genesis())

    def tx(
        self, i: int, tx_type: str, body: dict[str, Any], *, nonce: int | None = None, fee: int = 2
    ) -> SignedTx:
        if nonce is None:
            nonce = self.state.accounts[A[i]].nonce
        return sign_tx(IDS[i], tx_type, body, nonce=nonce, fee=fee, chain_id=CHAIN)

    def block(
        self, *txs: SignedTx | bytes, evidence: tuple[Evidence, ...] = (), proposer: int = 5
    ) -> list[Receipt]:
        before = app_hash(self.state)
        h = self.state.height + 1
        new, receipts, digest = apply_block(self.state, h, h * 1000, A[proposer], list(txs), evidence)
        assert app_hash(self.state) == before, "apply_block must not mutate its input"
        assert digest == app_hash(new)
        check_invariants(new)
        self.state = new
        return receipts

    def run(self, i: int, tx_type: str, body: dict[str, Any], **kw: Any) -> Receipt:
        return self.block(self.tx(i, tx_type, body, **kw))[0]

    def skip(self, n: int) -> None:
        for _ in range(n):
            self.block()


def assert_failed(r: Receipt, err: type[errors.LedgerError], *, charged: bool = True) -> None:
    assert (r.ok, r.code, r.charged) == (False, err.code, charged), r


# ---- encoding ------------------------------------------------------------------------------


def test_encode_decode_roundtrip_and_hash():
    stx = sign_tx(IDS[0], "transfer", {"amount": 5, "to": A[1]}, nonce=3, fee=2, chain_id=CHAIN)
    again = decode_tx(stx.encoded)
    assert again == stx and again.hash == stx.hash == hashlib.sha256(stx.encoded).digest()
    verify_tx(again)
    assert stx.sender_address == A[0]


def wire(stx: SignedTx, **override: Any) -> dict[str, Any]:
    t = stx.tx
    raw = {"body": dict(t.body), "chain": t.chain_id, "fee": t.fee, "nonce": t.nonce}
    raw |= {"sender": t.sender, "sig": stx.signature, "type": t.type, "v": 1}
    return raw | override


GOOD = sign_tx(IDS[0], "transfer", {"to": A[1], "amount": 5}, nonce=0, fee=2, chain_id=CHAIN)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\xc1junk", "malformed"),
        (b"\x00" * (MAX_TX_BYTES + 1), "exceeds"),
        (packb([1, 2]), "exactly the fields"),
        (packb({k: v for k, v in wire(GOOD).items() if k != "fee"}), "exactly the fields"),
        (packb(wire(GOOD, extra=1)), "exactly the fields"),
        (packb(wire(GOOD, v=2)), "version"),
        (packb(wire(GOOD, sig=b"short")), "64 bytes"),
        (packb(wire(GOOD, type="mint")), "unknown tx type"),
        (packb(wire(GOOD, body={"to": A[1], "amount": 5, "memo": "x"})), "exactly the fields"),
        (packb(wire(GOOD, body={"to": A[1]})), "exactly the fields"),
        (packb(wire(GOOD, body={"to": A[1], "amount": True})), "positive"),
        (packb(wire(GOOD, body={"to": A[1], "amount": 0})), "positive"),
        (packb(wire(GOOD, body={"to": A[1], "amount": -5})), "positive"),
        (packb(wire(GOOD, body={"to": "QmNotAPeer", "amount": 5})), "peer id"),
        (packb(wire(GOOD, fee=1.5)), "fee"),
        (packb(wire(GOOD, sender=b"\x01" * 31)), "32-byte"),
        (packb(wire(GOOD, chain="")), "chain id"),
        (packb(dict(reversed(wire(GOOD).items()))), "canonical"),
    ],
)
def test_decode_rejects_malformed(data: bytes, needle: str):
    with pytest.raises(errors.InvalidTx, match=needle):
        decode_tx(data)


def test_bad_signatures_are_detected():
    forged = SignedTx(GOOD.tx, bytes(64))
    with pytest.raises(errors.BadSignature):
        verify_tx(decode_tx(forged.encoded))
    stolen = SignedTx(replace(GOOD.tx, sender=IDS[1].public), GOOD.signature)
    with pytest.raises(errors.BadSignature):
        verify_tx(stolen)


def test_sign_tx_refuses_bad_body():
    with pytest.raises(errors.InvalidTx, match="role"):
        sign_tx(IDS[0], "register", {"role": "king"}, nonce=0, fee=2, chain_id=CHAIN)


def test_every_tx_type_has_a_handler():
    assert set(HANDLERS) == set(BODY_SCHEMAS)


# ---- admission, fees and nonces ---------------------------------------------------------------


def inadmissible(c: Chain, case: str) -> SignedTx:
    body = {"to": A[3], "amount": 1}
    stranger = Identity.from_seed(bytes(32))
    return {
        "wrong_chain": lambda: sign_tx(IDS[2], "transfer", body, nonce=0, fee=2, chain_id="other"),
        "bad_signature": lambda: SignedTx(c.tx(2, "transfer", body).tx, bytes(64)),
        "unknown_account": lambda: sign_tx(stranger, "transfer", body, nonce=0, fee=2, chain_id=CHAIN),
        "bad_nonce": lambda: c.tx(2, "transfer", body, nonce=1),
        "fee_too_low": lambda: c.tx(2, "transfer", body, fee=1),
        "insufficient_balance": lambda: c.tx(2, "transfer", body, fee=START + 1),
    }[case]()


@pytest.mark.parametrize(
    "err",
    [
        errors.WrongChain,
        errors.BadSignature,
        errors.UnknownAccount,
        errors.BadNonce,
        errors.FeeTooLow,
        errors.InsufficientBalance,
    ],
)
def test_inadmissible_tx_is_excluded_without_fee(err: type[errors.LedgerError]):
    c = Chain()
    stx = inadmissible(c, err.code)
    with pytest.raises(err):
        check_tx(c.state, stx)
    before = dict(c.state.accounts)
    (r,) = c.block(stx)
    assert_failed(r, err, charged=False)
    assert r.fee == 0 and c.state.accounts == before


def test_failed_tx_pays_fee_bumps_nonce_and_rolls_back_the_rest():
    c = Chain()
    r = c.run(2, "register", {"role": "solver"}, fee=START - 50)  # fee fits, the burn does not
    assert_failed(r, errors.InsufficientBalance)
    acct = account(c.state, A[2])
    assert (acct.balance, acct.nonce, acct.roles) == (50, 1, ())
    assert c.state.burned == 0
    assert balance(c.state, A[5]) == 2 * START - 50  # the proposer got the fee


def test_fees_go_to_the_proposer_and_nonces_run_in_order():
    c = Chain()
    t0 = c.tx(2, "transfer", {"to": A[3], "amount": 10}, fee=3)
    t1 = c.tx(2, "transfer", {"to": A[3], "amount": 10}, nonce=1, fee=4)
    receipts = c.block(t0, t1, proposer=4)
    assert [r.ok for r in receipts] == [True, True]
    assert balance(c.state, A[4]) == START + 7
    assert balance(c.state, A[2]) == START - 27 and account(c.state, A[2]).nonce == 2
    assert c.state.fee_pool == 0
    assert_failed(c.block(t0)[0], errors.BadNonce, charged=False)  # a replay is refused


def test_verified_cache_skips_signature_check():
    c = Chain()
    unsigned = SignedTx(c.tx(2, "transfer", {"to": A[3], "amount": 1}).tx, bytes(64))
    h = c.state.height + 1
    _, (r,), _ = apply_block(c.state, h, h, A[5], [unsigned], verified={unsigned.hash})
    assert r.ok
    check_tx(c.state, unsigned, verified={unsigned.hash})


def test_check_tx_accepts_a_pipelined_nonce():
    c = Chain()
    check_tx(c.state, c.tx(2, "transfer", {"to": A[3], "amount": 1}, nonce=4), nonce=4)


# ---- transfer and register -----------------------------------------------------------------------


def test_transfer_creates_the_recipient():
    c = Chain()
    new = Identity.from_seed(hashlib.sha256(b"fresh").digest()).peer_id
    assert c.run(2, "transfer", {"to": new, "amount": 700}).ok
    assert balance(c.state, new) == 700 and balance(c.state, A[2]) == START - 702


def test_transfer_insufficient_balance_and_self_transfer():
    c = Chain()
    r = c.run(2, "transfer", {"to": A[3], "amount": START})
    assert_failed(r, errors.InsufficientBalance)
    assert "needs 100000 but the balance is 99998" in r.message
    assert c.run(3, "transfer", {"to": A[3], "amount": 10}).ok
    assert balance(c.state, A[3]) == START - 2


def test_register_burns_and_records_role():
    c = Chain()
    assert c.run(2, "register", {"role": "solver"}).ok
    assert account(c.state, A[2]).roles == (("solver", 1),)
    assert c.state.burned == 100 and balance(c.state, A[2]) == START - 102
    assert_failed(c.run(2, "register", {"role": "solver"}), errors.AlreadyRegistered)
    assert c.run(2, "register", {"role": "model_owner"}).ok
    assert account(c.state, A[2]).roles == (("model_owner", 3), ("solver", 1))


# ---- staking ---------------------------------------------------------------------------------


def test_stake_requires_registration_and_fixes_commission():
    c = Chain()
    assert_failed(c.run(2, "stake", {"amount": 100, "commission_bps": 0}), errors.NotRegistered)
    assert c.run(2, "register", {"role": "validator"}).ok
    assert_failed(c.run(2, "stake", {"amount": 100, "commission_bps": 2_001}), errors.CommissionTooHigh)
    assert_failed(c.run(2, "stake", {"amount": START, "commission_bps": 300}), errors.InsufficientBalance)
    assert A[2] not in dict(validators(c.state))
    assert c.run(2, "stake", {"amount": 4_000, "commission_bps": 300}).ok
    assert_failed(c.run(2, "stake", {"amount": 1, "commission_bps": 301}), errors.CommissionMismatch)
    assert c.run(2, "stake", {"amount": 1_000, "commission_bps": 300}).ok
    v = c.state.validators[A[2]]
    assert (v.self_stake, v.commission_bps, v.pubkey) == (5_000, 300, IDS[2].public)


def test_validator_set_changes_take_effect_at_h_plus_2():
    c = Chain()
    c.run(2, "register", {"role": "validator"})
    r = c.run(2, "stake", {"amount": 9_000, "commission_bps": 0})
    assert r.ok
    h = c.state.height
    old = [(v.address, v.power) for v in validator_set_at(c.state, h + 1)]
    new = [(v.address, v.power) for v in validator_set_at(c.state, h + 2)]
    assert old == [(A[0], 500), (A[1], 300)]
    assert new == [(A[2], 900), (A[0], 500), (A[1], 300)]
    c.block()
    assert [v.address for v in c.state.validator_set] == [A[0], A[1]]
    c.block()
    assert [v.address for v in c.state.validator_set] == [A[2], A[0], A[1]] and not c.state.pending_sets


def test_validator_set_keeps_top_n_and_drops_zero_power():
    tied = min(A[1], A[2])  # equal stake: the smaller address wins
    c = Chain(make_genesis(replace(PARAMS, max_validators=2), vals=((0, 5_000), (1, 3_000), (2, 3_000))))
    assert [(v.address, v.power) for v in c.state.validator_set] == [(A[0], 500), (tied, 300)]
    c = Chain(make_genesis(vals=((0, 5_000), (1, 3_000), (3, 9))))  # 9 // power_reduction 10 == 0
    assert [(v.address, v.power) for v in c.state.validator_set] == [(A[0], 500), (A[1], 300)]


def test_unstake_unbonds_then_releases():
    c = Chain()
    assert_failed(c.run(2, "unstake", {"amount": 1}), errors.UnknownValidator)
    assert_failed(c.run(0, "unstake", {"amount": 5_001}), errors.InsufficientStake)
    assert c.run(0, "unstake", {"amount": 1_000}).ok
    created = c.state.height
    assert [(o, v, e.amount, e.release_height) for o, v, e in unbondings(c.state)] == [
        (A[0], A[0], 1_000, created + 5)
    ]
    assert c.state.validators[A[0]].self_stake == 4_000
    before = balance(c.state, A[0])
    c.skip(4)
    assert balance(c.state, A[0]) == before and unbondings(c.state)
    c.skip(1)
    assert balance(c.state, A[0]) == before + 1_000 and not unbondings(c.state)


def test_unbonding_entries_are_limited():
    c = Chain()
    assert c.run(0, "unstake", {"amount": 1}).ok
    assert c.run(0, "unstake", {"amount": 1}).ok
    assert_failed(c.run(0, "unstake", {"amount": 1}), errors.TooManyUnbondings)
    assert c.state.validators[A[0]].self_stake == 4_998


def test_delegate_and_undelegate():
    c = Chain()
    assert_failed(c.run(3, "delegate", {"validator": A[2], "amount": 1}), errors.UnknownValidator)
    assert_failed(c.run(0, "delegate", {"validator": A[0], "amount": 1}), errors.SelfDelegation)
    assert_failed(c.run(3, "delegate", {"validator": A[0], "amount": START}), errors.InsufficientBalance)
    assert c.run(3, "delegate", {"validator": A[0], "amount": 2_000}).ok
    assert delegations(c.state, delegator=A[3]) == [(A[3], A[0], 2_000)]
    assert c.state.validators[A[0]].delegated == 2_000
    assert_failed(c.run(3, "undelegate", {"validator": A[1], "amount": 1}), errors.UnknownDelegation)
    assert_failed(c.run(3, "undelegate", {"validator": A[0], "amount": 2_001}), errors.InsufficientStake)
    assert c.run(3, "undelegate", {"validator": A[0], "amount": 500}).ok
    assert c.run(3, "undelegate", {"validator": A[0], "amount": 1_500}).ok
    assert delegations(c.state) == [] and c.state.validators[A[0]].delegated == 0
    assert [e.amount for _, _, e in unbondings(c.state, A[3])] == [500, 1_500]


# ---- evidence, jail, unjail ----------------------------------------------------------------------


def test_double_sign_slashes_stake_delegations_and_young_unbondings():
    c = Chain()
    c.run(3, "delegate", {"validator": A[0], "amount": 2_005})
    c.run(4, "delegate", {"validator": A[0], "amount": 1_000})
    c.run(4, "undelegate", {"validator": A[0], "amount": 400})  # unbonding before the infraction: kept whole
    infraction = c.state.height + 1
    c.block()
    c.run(3, "undelegate", {"validator": A[0], "amount": 5})  # after it: slashed
    burned, supply = c.state.burned, total_supply(c.state)
    c.block(evidence=(Evidence(A[0], infraction),))
    v = c.state.validators[A[0]]
    assert (v.self_stake, v.delegated) == (4_500, 1_800 + 540)
    assert (v.jailed, v.jailed_until) == (True, c.state.height + 3)
    assert [e.amount for _, _, e in unbondings(c.state, A[3])] == [5]  # 5 * 10% rounds down to 0
    assert [e.amount for _, _, e in unbondings(c.state, A[4])] == [400]
    assert c.state.burned - burned == 500 + 200 + 60 == supply - total_supply(c.state)
    assert (A[0], infraction) in c.state.tombstones
    c.block(evidence=(Evidence(A[0], infraction),))  # the same evidence again: no second slash
    assert c.state.validators[A[0]].self_stake == 4_500
    assert [v.address for v in validator_set_at(c.state, c.state.height + 2)] == [A[1]]


@pytest.mark.parametrize("offset", [0, 6, -1])
def test_evidence_out_of_range_or_unknown_is_ignored(offset: int):
    c = Chain()
    c.skip(7)
    c.block(evidence=(Evidence(A[0], c.state.height + 1 - offset),))
    c.block(evidence=(Evidence(A[3], c.state.height),))
    assert not c.state.tombstones and c.state.burned == 0


def test_unjail_after_jail_period():
    c = Chain()
    assert_failed(c.run(3, "unjail", {}), errors.UnknownValidator)
    assert_failed(c.run(1, "unjail", {}), errors.NotJailed)
    c.block(evidence=(Evidence(A[1], c.state.height),))
    until = c.state.validators[A[1]].jailed_until
    r = c.run(1, "unjail", {})
    assert_failed(r, errors.StillJailed)
    assert f"until height {until}" in r.message
    c.skip(until - c.state.height - 1)
    assert c.run(1, "unjail", {}).ok and not c.state.validators[A[1]].jailed


def test_empty_validator_set_is_never_scheduled():
    c = Chain(make_genesis(vals=((0, 5_000),)))
    c.block(evidence=(Evidence(A[0], c.state.height),))
    assert c.state.validators[A[0]].jailed
    assert [v.address for v in validator_set_at(c.state, c.state.height + 2)] == [A[0]]


# ---- governance --------------------------------------------------------------------------------


def test_param_change_passes_with_quorum_and_applies():
    c = Chain()
    assert c.run(2, "param_change", {"changes": {"min_fee": 3, "max_validators": 7}}).ok
    assert balance(c.state, A[2]) == START - 502 and c.state.proposals[1].status == "voting"
    assert c.run(0, "vote", {"proposal": 1, "option": "no"}).ok
    assert c.run(0, "vote", {"proposal": 1, "option": "yes"}).ok  # a new vote replaces the old one
    assert c.state.proposals[1].status == "voting" and c.state.params.min_fee == 2
    c.run(1, "vote", {"proposal": 1, "option": "no"})
    p = c.state.proposals[1]
    assert (p.status, p.yes, p.no, p.deposit) == ("passed", 5_000, 3_000, 0)
    assert (c.state.params.min_fee, c.state.params.max_validators) == (3, 7)
    assert balance(c.state, A[2]) == START - 2 and not c.state.votes
    assert_failed(c.run(0, "vote", {"proposal": 1, "option": "yes"}, fee=3), errors.ProposalClosed)


def test_param_change_rejected_and_no_quorum():
    c = Chain()
    c.run(2, "param_change", {"changes": {"jail_blocks": 9}})
    c.run(0, "vote", {"proposal": 1, "option": "no"})
    c.skip(2)
    assert c.state.proposals[1].status == "rejected" and balance(c.state, A[2]) == START - 2
    c.run(2, "param_change", {"changes": {"jail_blocks": 9}})
    c.run(1, "vote", {"proposal": 2, "option": "yes"})  # 3_000 of 8_000 bonded: under 50% quorum
    c.skip(2)
    assert c.state.proposals[2].status == "no_quorum" and c.state.burned == 500
    assert c.state.params.jail_blocks == 3


def test_governance_errors():
    c = Chain()
    r = c.run(2, "param_change", {"changes": {"evidence_max_age_blocks": 6}})  # > unbonding_blocks
    assert_failed(r, errors.InvalidParams)
    assert balance(c.state, A[2]) == START - 2 and not c.state.proposals
    assert_failed(c.run(0, "vote", {"proposal": 9, "option": "yes"}), errors.UnknownProposal)
    c.run(2, "param_change", {"changes": {"min_fee": 3}})
    assert_failed(c.run(3, "vote", {"proposal": 1, "option": "yes"}), errors.NoVotingPower)


# ---- blocks, state encoding, genesis -----------------------------------------------------------


def test_block_level_errors():
    s = Chain().state
    with pytest.raises(errors.InvalidBlock, match="height"):
        begin_block(s, 2, 0, A[0])
    s1 = begin_block(s, 1, 50, A[0])
    s1, _ = end_block(s1)
    with pytest.raises(errors.InvalidBlock, match="time"):
        begin_block(s1, 2, 49, A[0])
    with pytest.raises(errors.InvalidBlock, match="proposer"):
        begin_block(s1, 2, 60, "nobody")
    with pytest.raises(errors.InvalidBlock, match="evidence"):
        begin_block(s1, 2, 60, A[0], [("x", 1)])  # type: ignore[list-item]


def test_step_functions_match_apply_block():
    c = Chain()
    txs = [c.tx(2, "transfer", {"to": A[3], "amount": 9}), c.tx(3, "unjail", {}), b"junk"]
    whole, receipts, digest = apply_block(c.state, 1, 10, A[4], txs, [Evidence(A[1], 0)])
    s = begin_block(c.state, 1, 10, A[4], [Evidence(A[1], 0)])
    stepped = []
    for tx in txs:
        s, r = deliver_tx(s, tx)
        stepped.append(r)
    s, _ = end_block(s)
    assert stepped == receipts and app_hash(s) == digest and s == whole
    assert [Receipt.from_wire(r.to_wire()) for r in receipts] == receipts
    with pytest.raises(ValueError, match="not a receipt"):
        Receipt.from_wire([b"", "yes", "ok", "", True, 0])


def test_state_encoding_roundtrip_and_hash_sensitivity():
    c = Chain()
    c.run(2, "param_change", {"changes": {"min_fee": 3}})
    c.run(0, "vote", {"proposal": 1, "option": "yes"})
    c.run(3, "delegate", {"validator": A[0], "amount": 10})
    c.run(3, "undelegate", {"validator": A[0], "amount": 5})
    c.block(evidence=(Evidence(A[1], c.state.height),))
    s = c.state
    assert decode_state(encode_state(s)) == s
    assert app_hash(replace(s.copy(), burned=s.burned + 1)) != app_hash(s)
    with pytest.raises(ValueError, match="corrupt"):
        decode_state(b"\x93\x01\x02")


def test_genesis_state_and_roundtrip():
    g = make_genesis()
    assert Genesis.from_dict(g.to_dict()) == g
    s = genesis_state(g)
    assert s.minted == 6 * START + 8_000 and total_supply(s) == s.minted and s.height == 0
    assert account(s, A[0]).roles == (("validator", 0),)
    assert isinstance(s, State) and [v.power for v in s.validator_set] == [500, 300]
    with pytest.raises(errors.UnknownAccount):
        account(s, Identity.from_seed(bytes(32)).peer_id)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        (lambda d: d | {"extra": 1}, "only the keys"),
        (lambda d: d | {"chain_id": ""}, "chain_id"),
        (lambda d: d | {"params": {"min_fee": -1}}, "min_fee"),
        (lambda d: d | {"params": {"gas": 1}}, "unknown params"),
        (lambda d: d | {"balances": {"nobody": 1}}, "peer id"),
        (lambda d: d | {"balances": {A[0]: 2**63}}, "exceeds"),
        (lambda d: d | {"validators": [d["validators"][0]] * 2}, "twice"),
        (lambda d: d | {"validators": [d["validators"][0] | {"pubkey": IDS[1].public.hex()}]}, "pubkey"),
        (lambda d: d | {"validators": [d["validators"][0] | {"self_stake": 9}]}, "voting power"),
        (lambda d: d | {"validators": [d["validators"][0] | {"commission_bps": 2_001}]}, "commission"),
    ],
)
def test_genesis_rejects(patch, needle: str):
    with pytest.raises(errors.InvalidGenesis, match=needle):
        Genesis.from_dict(patch(make_genesis().to_dict()))
