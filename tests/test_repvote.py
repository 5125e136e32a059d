"""Reputation votes: commit-reveal, the Yuma-style median with clipping, the EMA update, quorum."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ledger import errors
from ledger.payout import ema
from ledger.repvote import (
    clipped_tally,
    open_votes,
    repvote,
    repvote_commitment,
    repvote_id_for,
    stake_weighted_median,
)
from ledger.state import check_invariants, decode_state, encode_state
from tests.trust_chain import CHAIN, CHALLENGER, PARAMS, SOLVER, STAKES, START, A, TrustChain

DEPOSIT = 300
VOTE_PARAMS = replace(PARAMS, repvote_commit_blocks=10, repvote_reveal_blocks=10)


def salt(i: int) -> bytes:
    return bytes([i]) * 16


# ---- pure tally -----------------------------------------------------------------------------------


def test_stake_weighted_median():
    assert stake_weighted_median([(7_000, 1)]) == 7_000
    assert stake_weighted_median([(1_000, 3), (9_000, 2)]) == 1_000
    assert stake_weighted_median([(1_000, 2), (9_000, 3)]) == 9_000
    assert stake_weighted_median([(1_000, 1), (9_000, 1)]) == 9_000, "half the stake backing is enough"
    assert stake_weighted_median([(1_000, 1), (5_000, 1), (9_000, 1)]) == 5_000
    assert stake_weighted_median([(2_000, 5), (2_000, 5), (8_000, 1)]) == 2_000
    assert stake_weighted_median([(1_000, 1), (5_000, 1), (9_000, 1)], kappa_bps=3_000) == 9_000
    assert stake_weighted_median([(1_000, 1), (5_000, 1), (9_000, 1)], kappa_bps=9_000) == 1_000
    assert stake_weighted_median([]) == 0


def test_clipping_defeats_a_minority_of_extreme_high_scores():
    honest = [(6_000, 5_000), (6_200, 4_000), (5_800, 3_000)]
    for extreme in (6_500, 10_000):
        entries = [*honest, (extreme, 2_000), (extreme, 1_000)]
        consensus = stake_weighted_median(entries)
        assert consensus == 6_000
        # the inflating minority counts as if it had voted the consensus, however high it went
        assert clipped_tally(entries, consensus) == clipped_tally([*honest, (6_000, 3_000)], 6_000)
    assert clipped_tally(honest, 6_000) < 6_000 and clipped_tally([(5, 0)], 0) == 0


# ---- on chain ---------------------------------------------------------------------------------------


def open_vote(c: TrustChain, opener: int = 0, subject: int = SOLVER, role: str = "solver") -> str:
    vote_id = repvote_id_for(CHAIN, A[opener], c.state.accounts[A[opener]].nonce)
    body = {"subject": A[subject], "role": role, "evidence": b"job 1234 was late", "deposit": DEPOSIT}
    c.ok(opener, "vote_open", body)
    return vote_id


def commit(c: TrustChain, i: int, vote_id: str, score: int):
    return c.run(
        i,
        "vote_commit",
        {"vote_id": vote_id, "commitment": repvote_commitment(vote_id, A[i], score, salt(i))},
    )


def reveal(c: TrustChain, i: int, vote_id: str, score: int, s: bytes | None = None):
    return c.run(i, "vote_reveal", {"vote_id": vote_id, "score": score, "salt": s or salt(i)})


def test_full_vote_moves_reputation_by_ema_and_penalises_outliers():
    c = TrustChain(VOTE_PARAMS)
    vote_id = open_vote(c)
    assert c.bal(0) == START - DEPOSIT and open_votes(c.state) == [vote_id]
    v = c.state.repvotes[vote_id]
    scores = {0: 2_000, 1: 2_400, 2: 2_200, 3: 9_000, 4: 10_000}  # stakes 5000..1000
    for i, score in scores.items():
        assert commit(c, i, vote_id, score).ok
    assert repvote(c.state, vote_id)["phase"] == "commit" and len(repvote(c.state, vote_id)["commits"]) == 5
    c.skip_to(v.commit_end)
    for i, score in scores.items():
        assert reveal(c, i, vote_id, score).ok
    assert c.state.height <= v.reveal_end
    c.skip_to(v.reveal_end)
    v = c.state.repvotes[vote_id]
    entries = [(scores[i], STAKES[i]) for i in scores]
    assert v.status == "tallied" and v.consensus == stake_weighted_median(entries) == 2_200
    assert v.tally == clipped_tally(entries, 2_200) == (2_000 * 5_000 + 2_200 * 10_000) // 15_000
    assert c.rep(SOLVER, "solver") == v.new_reputation == ema(5_000, v.tally, 5_000)
    assert [c.rep(i, "validator") for i in range(5)] == [5_000, 5_000, 5_000, 4_500, 4_500]
    assert c.bal(0) == START and v.deposit == 0 and v.revealed_stake == sum(STAKES)
    assert not c.state.repvote_commits and not c.state.repvote_reveals and not c.state.game_timers
    assert open_votes(c.state) == []


def test_bad_reveal_is_rejected_and_a_correct_one_can_follow():
    c = TrustChain(VOTE_PARAMS)
    vote_id = open_vote(c)
    assert commit(c, 1, vote_id, 7_000).ok
    assert reveal(c, 1, vote_id, 7_000).code == errors.WrongVotePhase.code, "no reveal in the commit phase"
    c.skip_to(c.state.repvotes[vote_id].commit_end)
    assert commit(c, 2, vote_id, 7_000).code == errors.WrongVotePhase.code, "no commit in the reveal phase"
    assert reveal(c, 1, vote_id, 7_001).code == errors.BadReveal.code
    assert reveal(c, 1, vote_id, 7_000, salt(9)).code == errors.BadReveal.code
    assert reveal(c, 2, vote_id, 7_000).code == errors.BadReveal.code, "nothing committed"
    assert reveal(c, 1, vote_id, 7_000).ok
    assert reveal(c, 1, vote_id, 7_000).code == errors.AlreadyVoted.code


def test_copied_commitment_cannot_be_revealed_by_the_copier():
    c = TrustChain(VOTE_PARAMS)
    vote_id = open_vote(c)
    original = repvote_commitment(vote_id, A[0], 8_000, salt(0))
    c.ok(0, "vote_commit", {"vote_id": vote_id, "commitment": original})
    c.ok(1, "vote_commit", {"vote_id": vote_id, "commitment": original})
    c.skip_to(c.state.repvotes[vote_id].commit_end)
    assert reveal(c, 0, vote_id, 8_000).ok
    assert reveal(c, 1, vote_id, 8_000, salt(0)).code == errors.BadReveal.code


def test_unrevealed_commitments_count_as_absent_and_quorum_is_needed():
    c = TrustChain(VOTE_PARAMS)
    vote_id = open_vote(c)
    for i in range(5):
        assert commit(c, i, vote_id, 1_000).ok
    v = c.state.repvotes[vote_id]
    c.skip_to(v.commit_end)
    assert reveal(c, 4, vote_id, 1_000).ok and reveal(c, 3, vote_id, 1_000).ok  # 3000 of 15000 stake
    burned = c.state.burned
    c.skip_to(v.reveal_end)
    v = c.state.repvotes[vote_id]
    assert (v.status, v.revealed_stake, v.deposit) == ("no_quorum", 3_000, 0)
    assert c.state.burned == burned + DEPOSIT and c.rep(SOLVER, "solver") == 5_000

    vote_id = open_vote(c)
    for i in (0, 1, 2):
        assert commit(c, i, vote_id, 9_000).ok
    v = c.state.repvotes[vote_id]
    c.skip_to(v.commit_end)
    assert reveal(c, 0, vote_id, 9_000).ok and reveal(c, 1, vote_id, 9_000).ok  # 2 is silent: absent
    c.skip_to(v.reveal_end)
    v = c.state.repvotes[vote_id]
    assert (v.status, v.revealed_stake, v.tally) == ("tallied", 9_000, 9_000)
    assert c.rep(2, "validator") == 5_000, "an absent voter is not scored"


def test_vote_errors():
    c = TrustChain(VOTE_PARAMS)
    body = {"subject": A[SOLVER], "role": "solver", "evidence": b"", "deposit": DEPOSIT}
    assert c.run(CHALLENGER, "vote_open", body).code == errors.NoVotingPower.code
    assert c.run(0, "vote_open", body | {"deposit": 199}).code == errors.DepositTooLow.code
    assert c.run(0, "vote_open", body | {"role": "model_owner"}).code == errors.NotRegistered.code
    with pytest.raises(errors.InvalidTx, match="evidence"):
        c.tx(0, "vote_open", body | {"evidence": b"x" * 1025})
    vote_id = open_vote(c, subject=1, role="validator")
    assert commit(c, 1, vote_id, 5_000).code == errors.ConflictOfInterest.code
    assert commit(c, CHALLENGER, vote_id, 5_000).code == errors.NoVotingPower.code
    assert (
        c.run(0, "vote_commit", {"vote_id": "ab" * 32, "commitment": "cd" * 32}).code
        == errors.UnknownRepVote.code
    )
    assert commit(c, 0, vote_id, 5_000).ok and commit(c, 0, vote_id, 6_000).ok, (
        "a new commit replaces the old"
    )
    c.skip_to(c.state.repvotes[vote_id].commit_end)
    assert reveal(c, 0, vote_id, 5_000).code == errors.BadReveal.code and reveal(c, 0, vote_id, 6_000).ok
    with pytest.raises(errors.InvalidTx, match="score"):
        c.tx(0, "vote_reveal", {"vote_id": vote_id, "score": 10_001, "salt": salt(0)})
    again = decode_state(encode_state(c.state))
    assert again == c.state
    check_invariants(c.state)
    broken = c.state.copy()
    broken.repvotes[vote_id] = replace(broken.repvotes[vote_id], status="tallied")
    with pytest.raises(AssertionError, match="invariants"):
        check_invariants(broken)
    assert PARAMS.repvote_min_deposit == 200
