"""The consensus core stepped message by message, and its building blocks.

Validators are four fixed Ed25519 keys with power 1 each unless a test says otherwise;
"us" is a validator that is not the proposer of round 0, so the tests feed it the proposal.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.identity import Identity
from ledger.consensus import (
    Broadcast,
    Commit,
    ConflictingProposal,
    ConsensusError,
    ConsensusStateError,
    Core,
    Decide,
    DecidedBlock,
    DuplicateMessage,
    DuplicateVoteEvidence,
    Evidence,
    FutureMessage,
    InvalidCommit,
    InvalidEvidence,
    InvalidSignature,
    InvalidValidatorSet,
    LastSigned,
    MalformedMessage,
    NotRunning,
    PersistLastSigned,
    Proposal,
    ProposedValue,
    RequestProposal,
    ScheduleTimeout,
    StaleMessage,
    Step,
    Timeout,
    TimeoutConfig,
    TimeoutKind,
    UnknownValidator,
    Validator,
    ValidatorSet,
    Vote,
    VoteKeeper,
    VoteType,
    WrongProposer,
    check_commit,
    decode_message,
    value_id,
    verify_commit,
    verify_evidence,
)
from ledger.consensus.votekeeper import Added

CHAIN = "test-chain"
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(4)]
KEYS = {i.peer_id: i for i in IDS}
VSET = ValidatorSet(Validator.from_public(i.public, 1) for i in IDS)
ADDRS = [v.address for v in VSET]
P0, P1 = VSET.proposer(0), VSET.proposer(1)
US = VSET.proposer(3)  # proposes only in round 3
OTHERS = [a for a in ADDRS if a != US]
A, B = b"block:A", b"block:B"
TIMEOUTS = TimeoutConfig(100, 10, 50, 5, 50, 5, 200, 20)
PV, PC = VoteType.PREVOTE, VoteType.PRECOMMIT


def vote(addr: str, vt: VoteType, value: bytes | None, h: int = 1, r: int = 0, chain: str = CHAIN) -> Vote:
    return Vote.create(KEYS[addr].sign, chain, vt, h, r, None if value is None else value_id(value), addr)


def proposal(value: bytes, r: int = 0, pol: int = -1, h: int = 1, by: str | None = None) -> Proposal:
    by = by or VSET.proposer(r)
    return Proposal.create(KEYS[by].sign, CHAIN, h, r, value, pol, by)


def make_core(addr: str | None = US, **kw: object) -> tuple[Core, list]:
    ident = KEYS[addr] if addr else IDS[0]
    core = Core(
        chain_id=CHAIN,
        address=addr,
        sign=ident.sign,
        validate_value=lambda h, v: v.startswith(b"block:"),
        timeouts=TIMEOUTS,
        **kw,  # type: ignore[arg-type]
    )
    return core, core.start_height(1, VSET)


def sent(effects: list) -> list:
    return [e.message for e in effects if isinstance(e, Broadcast)]


def own_votes(effects: list) -> list[tuple[VoteType, bytes | None]]:
    return [(m.vote_type, m.value_id) for m in sent(effects) if isinstance(m, Vote)]


def state(core: Core) -> tuple:
    votes = core._votes
    assert votes is not None
    tallies = tuple(votes.total_power(r, t) for r in range(3) for t in VoteType)
    return (
        core.height,
        core.round,
        core.step,
        core.locked_round,
        core.valid_round,
        core.last_signed,
        tallies,
    )


def assert_persisted_first(effects: list, address: str) -> None:
    """The first broadcast of each message we sign comes right after its PersistLastSigned."""
    previous, broadcast = None, set()
    for e in effects:
        if (
            isinstance(e, Broadcast)
            and getattr(e.message, "validator", getattr(e.message, "proposer", "")) == address
        ):
            m = e.message
            key = (
                m.height,
                m.round,
                int(Step.PROPOSE if isinstance(m, Proposal) else Step(int(m.vote_type))),
            )
            if key not in broadcast:
                assert isinstance(previous, PersistLastSigned) and previous.record.key == key, "persist first"
                broadcast.add(key)
        previous = e


# -- validator sets ------------------------------------------------------------------------


def test_thresholds_are_strict_integer_fractions() -> None:
    four = VSET
    assert [four.is_quorum(p) for p in range(5)] == [False, False, False, True, True]
    assert [four.is_one_third(p) for p in range(5)] == [False, False, True, True, True]
    three = ValidatorSet(Validator.from_public(i.public, 1) for i in IDS[:3])
    assert not three.is_quorum(2) and three.is_quorum(3)  # exactly 2/3 is not enough
    assert not three.is_one_third(1) and three.is_one_third(2)  # exactly 1/3 is not enough


def test_weighted_round_robin_is_proportional_and_ties_go_to_smaller_address() -> None:
    weighted = ValidatorSet(
        Validator.from_public(i.public, p) for i, p in zip(IDS, [1, 2, 3, 4], strict=True)
    )
    counts = Counter(weighted.proposers(1000))
    assert [counts[v.address] for v in weighted] == [100 * v.power for v in weighted]
    assert VSET.proposers(8) == sorted(ADDRS) * 2  # equal power: round robin in address order
    assert VSET.advance(3).proposer(0) == VSET.proposer(3)
    assert ValidatorSet.from_wire(weighted.advance(7).to_wire()) == weighted.advance(7)  # priorities kept
    with pytest.raises(InvalidValidatorSet):
        ValidatorSet.from_wire([[ADDRS[0], b"\0" * 32, 1, 0]])  # address is not the key's peer id


def test_validator_set_rejects_bad_rows_and_update_keeps_newcomers_waiting() -> None:
    v = [Validator.from_public(i.public, 1) for i in IDS]
    for rows in (
        [],
        [v[0], v[0]],
        [Validator(v[0].address, v[0].pubkey, 0)],
        [Validator(v[1].address, v[0].pubkey, 1)],
    ):
        with pytest.raises(InvalidValidatorSet):
            ValidatorSet(rows)
    with pytest.raises(InvalidValidatorSet):
        ValidatorSet([Validator(v[0].address, v[0].pubkey, True)])  # type: ignore[arg-type]
    three = ValidatorSet(v[:3])
    newcomer = IDS[3]
    grown = three.update({newcomer.peer_id: (newcomer.public, 1), v[0].address: (v[0].pubkey, 0)})
    assert {x.address for x in grown} == {v[1].address, v[2].address, newcomer.peer_id}
    assert grown.proposer(0) != newcomer.peer_id and grown.proposer(1) != newcomer.peer_id
    assert abs(sum(grown.priority(x.address) for x in grown)) < len(grown)  # centred


# -- the happy path, step by step --------------------------------------------------------


def test_follower_prevotes_locks_precommits_and_decides() -> None:
    core, effects = make_core()
    assert [e.kind for e in effects if isinstance(e, ScheduleTimeout)] == [
        TimeoutKind.PROPOSE,
        TimeoutKind.REBROADCAST,
    ]
    effects = core.on_proposal(proposal(A))
    assert own_votes(effects) == [(PV, value_id(A))] and core.step is Step.PREVOTE
    assert_persisted_first(effects, US)
    assert core.on_vote(vote(OTHERS[0], PV, A)) == []
    effects = core.on_vote(vote(OTHERS[1], PV, A))  # 3 of 4: quorum for A
    assert own_votes(effects) == [(PC, value_id(A))]
    assert (core.locked_round, core.locked_value_id, core.valid_round) == (0, value_id(A), 0)
    assert [e.kind for e in effects if isinstance(e, ScheduleTimeout)] == [TimeoutKind.PREVOTE]
    assert core.on_vote(vote(OTHERS[0], PC, A)) == []
    effects = core.on_vote(vote(OTHERS[1], PC, A))
    [decide] = [e for e in effects if isinstance(e, Decide)]
    assert (decide.height, decide.round, decide.value) == (1, 0, A) and core.decided
    assert len(decide.commit.signatures) == 3
    assert verify_commit(VSET, 1, value_id(A), decide.commit, chain_id=CHAIN)
    with pytest.raises(StaleMessage):
        core.on_vote(vote(OTHERS[2], PC, A))


def test_proposer_asks_for_a_value_then_proposes_and_prevotes_it() -> None:
    core, effects = make_core(P0)
    assert RequestProposal(1, 0) in effects
    assert core.on_proposed_value(ProposedValue(1, 5, A)) == []  # not our round: ignored
    effects = core.on_proposed_value(ProposedValue(1, 0, A))
    msgs = sent(effects)
    assert isinstance(msgs[0], Proposal) and msgs[0].value == A and msgs[0].pol_round == -1
    assert (msgs[1].vote_type, msgs[1].value_id) == (PV, value_id(A))
    assert_persisted_first(effects, P0)
    assert core.on_proposed_value(ProposedValue(1, 0, B)) == []  # never two proposals per round


def test_invalid_value_gets_a_nil_prevote_and_timeouts_move_the_round() -> None:
    core, _ = make_core()
    assert own_votes(core.on_proposal(proposal(b"junk"))) == [(PV, None)]
    assert core.on_vote(vote(OTHERS[0], PV, None)) == []
    effects = core.on_vote(vote(OTHERS[1], PV, A))  # 2f+1 prevotes, no quorum for one value
    assert effects == [ScheduleTimeout(TimeoutKind.PREVOTE, 1, 0, 50)]  # line 34
    effects = core.on_timeout(Timeout(TimeoutKind.PREVOTE, 1, 0))  # line 61
    assert own_votes(effects) == [(PV, None), (PC, None)]  # our prevote re-broadcast, then precommit nil
    for a in OTHERS[:2]:
        effects = core.on_vote(vote(a, PC, None))
    assert ScheduleTimeout(TimeoutKind.PRECOMMIT, 1, 0, 50) in effects  # line 47
    effects = core.on_timeout(Timeout(TimeoutKind.PRECOMMIT, 1, 0))  # line 65
    assert own_votes(effects) == [(PV, None), (PC, None)]  # our round-0 votes, re-broadcast first
    assert (core.round, core.step) == (1, Step.PROPOSE)
    assert ScheduleTimeout(TimeoutKind.PROPOSE, 1, 1, 110) in effects  # init + round * delta
    assert core.on_timeout(Timeout(TimeoutKind.PROPOSE, 1, 0)) == []  # stale
    effects = core.on_timeout(Timeout(TimeoutKind.PROPOSE, 1, 1))  # line 57
    assert [(m.round, m.vote_type) for m in sent(effects)] == [(0, PV), (0, PC), (1, PV)]  # round 0 repeated
    for a in OTHERS[:2]:
        effects = core.on_vote(vote(a, PV, None, r=1))
    assert own_votes(effects) == [(PC, None)]  # line 44: 2f+1 nil prevotes


def test_rebroadcast_timeout_repeats_own_votes_and_reschedules() -> None:
    core, _ = make_core()
    prevote = sent(core.on_proposal(proposal(A)))[0]
    effects = core.on_timeout(Timeout(TimeoutKind.REBROADCAST, 1, 0))
    assert effects == [Broadcast(prevote), ScheduleTimeout(TimeoutKind.REBROADCAST, 1, 0, 200)]


def lock_on_a_in_round_0(core: Core) -> None:
    core.on_proposal(proposal(A))
    for a in OTHERS[:2]:
        core.on_vote(vote(a, PV, A))
    for a in OTHERS[:2]:
        core.on_vote(vote(a, PC, None))
    core.on_timeout(Timeout(TimeoutKind.PRECOMMIT, 1, 0))
    assert (core.round, core.locked_round, core.locked_value_id) == (1, 0, value_id(A))


def test_locked_validator_rejects_other_values_unless_a_newer_polka_unlocks_it() -> None:
    core, _ = make_core()
    lock_on_a_in_round_0(core)
    assert own_votes(core.on_proposal(proposal(B, r=1))) == [(PV, None)]  # line 22: locked on A
    core2, _ = make_core()
    lock_on_a_in_round_0(core2)
    assert own_votes(core2.on_proposal(proposal(A, r=1, pol=0))) == [(PV, value_id(A))]  # line 28: our lock


def test_proposal_with_pol_round_waits_for_the_polka_then_unlocks() -> None:
    core, _ = make_core()
    lock_on_a_in_round_0(core)
    core.on_timeout(Timeout(TimeoutKind.PROPOSE, 1, 1))
    for a in OTHERS[:2]:
        core.on_vote(vote(a, PC, None, r=1))
    core.on_timeout(Timeout(TimeoutKind.PRECOMMIT, 1, 1))
    assert core.round == 2
    prop = proposal(B, r=2, pol=1)
    assert core.on_proposal(prop) == []  # no 2f+1 prevotes for B in round 1 yet
    for a in OTHERS[:2]:
        effects = core.on_vote(vote(a, PV, B, r=1))
    assert own_votes(effects) == [] and core.step is Step.PROPOSE
    effects = core.on_vote(vote(OTHERS[2], PV, B, r=1))  # 3 of 4 (we voted nil in round 1)
    assert own_votes(effects) == [(PV, value_id(B))]  # lockedRound 0 <= vr 1: unlocked


def test_f_plus_one_votes_in_a_higher_round_skip_to_it() -> None:
    core, _ = make_core()
    assert core.on_vote(vote(OTHERS[0], PV, None, r=7)) == []
    assert core.round == 0  # 1 of 4 is not more than 1/3
    effects = core.on_vote(vote(OTHERS[1], PC, None, r=9))  # reached rounds 7 and 9: skip to 7
    assert core.round == 7 and ScheduleTimeout(TimeoutKind.PROPOSE, 1, 7, 170) in effects


def test_decide_in_an_earlier_round_and_from_a_decided_block() -> None:
    core, _ = make_core()
    core.on_proposal(proposal(A))
    for a in OTHERS[:2]:
        core.on_vote(vote(a, PV, None, r=1))  # f+1 in round 1: skip there
    assert core.round == 1
    effects = []
    for a in OTHERS:
        effects += core.on_vote(vote(a, PC, A, r=0))  # late round-0 precommits: line 49
    assert [(e.round, e.value) for e in effects if isinstance(e, Decide)] == [(0, A)]

    follower, _ = make_core()
    commit = Commit.from_votes([vote(a, PC, A) for a in OTHERS])
    bad = Commit.from_votes([vote(a, PC, A) for a in OTHERS[:2]])
    before = state(follower)
    with pytest.raises(InvalidCommit):
        follower.on_decided_block(DecidedBlock(1, A, bad))
    with pytest.raises(InvalidCommit):
        follower.on_decided_block(DecidedBlock(1, B, commit))
    assert state(follower) == before
    with pytest.raises(FutureMessage):
        follower.on_decided_block(DecidedBlock(2, A, commit))
    assert follower.on_decided_block(DecidedBlock(1, A, commit)) == [Decide(1, 0, A, commit)]


def test_next_height_messages_are_buffered_and_replayed() -> None:
    core, _ = make_core()
    early = proposal(B, h=2, by=VSET.advance(1).proposer(0))
    assert core.on_proposal(early) == []
    with pytest.raises(DuplicateMessage):
        core.on_proposal(early)
    with pytest.raises(FutureMessage):
        core.on_vote(vote(OTHERS[0], PV, B, h=3))
    core.on_decided_block(DecidedBlock(1, A, Commit.from_votes([vote(a, PC, A) for a in OTHERS])))
    effects = core.start_height(2, VSET.advance(1))
    assert own_votes(effects) == [(PV, value_id(B))]
    with pytest.raises(ConsensusStateError):
        core.start_height(2, VSET.advance(1))


def test_observer_decides_without_signing() -> None:
    core, effects = make_core(None)
    effects += core.on_proposal(proposal(A))
    for a in ADDRS[:3]:
        effects += core.on_vote(vote(a, PV, A)) + core.on_vote(vote(a, PC, A))
    assert sent(effects) == [] and [e.value for e in effects if isinstance(e, Decide)] == [A]


# -- the double-sign guard -----------------------------------------------------------------


def test_restored_core_never_signs_at_or_below_the_last_signed_step() -> None:
    core, _ = make_core(last_signed=LastSigned(1, 0, Step.PREVOTE))
    assert own_votes(core.on_proposal(proposal(B))) == []  # already prevoted in round 0
    for a in OTHERS[:3]:
        effects = core.on_vote(vote(a, PV, B))
    assert own_votes(effects) == [(PC, value_id(B))]  # the precommit is a later step: allowed


def test_restored_lock_survives_a_restart() -> None:
    record = LastSigned(1, 0, Step.PRECOMMIT, 0, value_id(A))
    core, effects = make_core(last_signed=record)
    assert (core.round, core.locked_round) == (0, 0) and sent(effects) == []
    core.on_timeout(Timeout(TimeoutKind.PROPOSE, 1, 0))
    for a in OTHERS:
        core.on_vote(vote(a, PC, None))
    assert sent(core.on_timeout(Timeout(TimeoutKind.PRECOMMIT, 1, 0))) == []  # nothing signed in round 0
    assert own_votes(core.on_proposal(proposal(B, r=1))) == [(PV, None)]  # still locked on A
    assert LastSigned.from_wire(record.to_wire()) == record


# -- hostile input -------------------------------------------------------------------------


def test_hostile_votes_and_proposals_are_rejected_without_changing_state() -> None:
    core, _ = make_core()
    core.on_proposal(proposal(A))
    good = vote(OTHERS[0], PV, A)
    core.on_vote(good)
    before = state(core)
    stranger = Identity.from_seed(b"\x99" * 32)
    forged = Vote(PV, 1, 0, value_id(A), OTHERS[1], good.signature)
    cases = [
        (forged, InvalidSignature),
        (vote(OTHERS[1], PV, A, chain="other-chain"), InvalidSignature),
        (Vote.create(stranger.sign, CHAIN, PV, 1, 0, None, stranger.peer_id), UnknownValidator),
        (good, DuplicateMessage),
        (vote(OTHERS[1], PV, A, h=0), StaleMessage),
        (vote(OTHERS[1], PV, A, h=9), FutureMessage),
        (proposal(A), DuplicateMessage),
        (proposal(B), ConflictingProposal),
        (proposal(A, by=P1), WrongProposer),
        (proposal(A, r=5), FutureMessage),
        (Proposal(1, 0, B, -1, P0, b"\x00" * 64), InvalidSignature),
    ]
    for msg, error in cases:
        with pytest.raises(error):
            core.handle(msg)
        assert state(core) == before, f"{error.__name__} changed the state"
    with pytest.raises(MalformedMessage):
        core.on_vote(proposal(A))  # type: ignore[arg-type]
    with pytest.raises(NotRunning):
        Core(chain_id=CHAIN, address=US, sign=KEYS[US].sign, validate_value=bool).on_vote(good)


def test_equivocation_yields_verifiable_evidence_and_is_not_counted() -> None:
    core, _ = make_core()
    first, second = vote(OTHERS[0], PV, A), vote(OTHERS[0], PV, B)
    core.on_vote(first)
    [effect] = core.on_vote(second)
    assert isinstance(effect, Evidence)
    ev = effect.evidence
    verify_evidence(ev, VSET, chain_id=CHAIN)
    assert ev.validator == OTHERS[0] and {ev.vote_a, ev.vote_b} == {first, second}
    assert DuplicateVoteEvidence.from_wire(ev.to_wire()) == ev
    keeper = core._votes
    assert keeper is not None and keeper.power_for(0, PV, value_id(B)) == 0  # no proposal for B: not counted
    assert core.on_vote(vote(OTHERS[0], PV, None)) == []  # reported once per slot; nil can matter: counted
    assert keeper.power_for(0, PV, None) == 1 and keeper.total_power(0, PV) == 1
    core.on_proposal(proposal(b"block:C"))
    with pytest.raises(DuplicateMessage):
        core.on_vote(vote(OTHERS[0], PV, b"block:D"))  # a value that cannot matter: dropped
    core.on_vote(vote(OTHERS[0], PV, b"block:C"))
    assert keeper.power_for(0, PV, value_id(b"block:C")) == 2  # with our own prevote for C
    other = vote(OTHERS[1], PV, B)
    bogus = [
        DuplicateVoteEvidence.of(first, other),  # two validators
        DuplicateVoteEvidence.of(first, vote(OTHERS[0], PV, B, r=1)),  # two rounds
        DuplicateVoteEvidence.of(first, vote(OTHERS[0], PC, B)),  # two types
        DuplicateVoteEvidence.of(
            first, Vote(PV, 1, 0, value_id(B), OTHERS[0], first.signature)
        ),  # bad signature
    ]
    for evidence in bogus:
        with pytest.raises(InvalidEvidence):
            verify_evidence(evidence, VSET, chain_id=CHAIN)
    with pytest.raises(InvalidEvidence):
        verify_evidence(ev, ValidatorSet([Validator.from_public(IDS[0].public, 1)]), chain_id=CHAIN)
    with pytest.raises(MalformedMessage):
        DuplicateVoteEvidence(first, first)


def test_verify_commit_needs_more_than_two_thirds_of_valid_precommits() -> None:
    votes = [vote(a, PC, A) for a in ADDRS[:3]]
    commit = Commit.from_votes(votes)
    assert check_commit(VSET, 1, value_id(A), commit, chain_id=CHAIN) == 3
    assert not verify_commit(VSET, 2, value_id(A), commit, chain_id=CHAIN)
    assert not verify_commit(VSET, 1, value_id(B), commit, chain_id=CHAIN)
    assert not verify_commit(VSET, 1, value_id(A), commit, chain_id="other-chain")
    assert not verify_commit(VSET, 1, value_id(A), Commit.from_votes(votes[:2]), chain_id=CHAIN)
    tampered = Commit(
        1, 0, value_id(A), (*commit.signatures[:2], type(commit.signatures[0])(ADDRS[2], b"\1" * 64))
    )
    assert not verify_commit(VSET, 1, value_id(A), tampered, chain_id=CHAIN)
    heavy = ValidatorSet(Validator(v.address, v.pubkey, 10 if v.address == ADDRS[3] else 1) for v in VSET)
    assert not verify_commit(heavy, 1, value_id(A), commit, chain_id=CHAIN)  # 3 of 13
    assert Commit.from_wire(commit.to_wire()) == commit


def test_votekeeper_stores_only_a_few_rounds_ahead() -> None:
    keeper = VoteKeeper(1, VSET, CHAIN, rounds_ahead=2)
    assert keeper.add(vote(ADDRS[0], PV, A, r=2), 0) == (Added.STORED, None)
    assert keeper.add(vote(ADDRS[0], PV, A, r=3), 0) == (Added.ROUND_HINT, None)
    assert keeper.total_power(3, PV) == 0 and keeper.skip_round(0) is None
    keeper.add(vote(ADDRS[1], PC, None, r=50), 0)
    assert keeper.skip_round(0) == 3  # more than 1/3 of the power has reached round 3


LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.sampled_from([0, 1, 2, -1, 32])
    | st.binary(max_size=70)
    | st.sampled_from([b"\0" * 32, b"\0" * 64, US])
    | st.text(max_size=8)
)
ANY = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=8), max_leaves=30)
TAGGED = st.builds(
    lambda tag, rest: [tag, *rest],
    st.sampled_from(["vote", "proposal", "decided"]),
    st.lists(ANY, max_size=7),
)


@settings(max_examples=200, deadline=None)
@given(ANY | TAGGED)
def test_decode_message_fuzz_raises_only_malformed(obj: object) -> None:
    try:
        decode_message(obj)
    except MalformedMessage:
        pass


def test_wire_round_trip_and_well_formed_examples() -> None:
    msgs = [
        proposal(A, r=1, pol=0),
        vote(US, PC, None),
        DecidedBlock(1, A, Commit.from_votes([vote(US, PC, A)])),
    ]
    for msg in msgs:
        assert decode_message(msg.to_wire()) == msg
    bad = [["vote", 3, 1, 0, None, US, b"\0" * 64], ["vote", 1, -1, 0, None, US, b"\0" * 64]]
    bad += [["vote", True, 1, 0, None, US, b"\0" * 64], ["proposal", 1, 0, A, 0, P0, b"\0" * 64]]
    for obj in bad:
        with pytest.raises(MalformedMessage):
            decode_message(obj)


EVENT = st.one_of(
    st.tuples(
        st.just("vote"), st.sampled_from(OTHERS), st.sampled_from([PV, PC]), st.sampled_from([A, B, None])
    ),
    st.tuples(st.just("proposal"), st.sampled_from([A, B, b"junk"]), st.integers(-1, 2)),
    st.tuples(st.just("timeout"), st.sampled_from(list(TimeoutKind))),
).flatmap(lambda e: st.tuples(st.just(e), st.integers(0, 3)))


@settings(max_examples=150, deadline=None)
@given(st.lists(EVENT, max_size=60))
def test_random_message_orders_never_make_the_core_sign_twice(events: list) -> None:
    core, effects = make_core()
    signed: dict[tuple[int, int, int], object] = {}
    for (kind, *args), r in events:
        try:
            if kind == "vote":
                addr, vt, value = args
                effects += core.on_vote(vote(addr, vt, value, r=r))
            elif kind == "proposal":
                value, pol = args
                effects += core.on_proposal(proposal(value, r=r, pol=min(pol, r - 1)))
            else:
                effects += core.on_timeout(Timeout(args[0], 1, core.round))
        except (ConsensusError, MalformedMessage):
            pass
        assert -1 <= core.locked_round <= core.valid_round <= core.round
    assert_persisted_first(effects, US)
    for m in sent(effects):
        if getattr(m, "validator", getattr(m, "proposer", None)) == US:
            key = (m.height, m.round, int(getattr(m, "vote_type", 0)))
            assert signed.setdefault(key, m) == m, f"signed two different messages for {key}"
