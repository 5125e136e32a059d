"""Reputation votes: validators score a peer in a role by commit-reveal; a Yuma-style tally moves it.

vote id = `repvote_id_for(chain id, opener, tx nonce)`. O = the height of the vote_open block,
Tc = params.repvote_commit_blocks, Tr = params.repvote_reveal_blocks.

- vote_open {subject, role, evidence (<= 1024 bytes), deposit} by any address with bonded stake
  (self-stake or delegations): the subject must be registered in the role ("validator" also
  counts a validator record); deposit >= repvote_min_deposit is locked.
- vote_commit {vote_id, commitment} in blocks O .. O + Tc by a validator with bonded stake, not
  the subject; commitment = `repvote_commitment(vote_id, voter, score, salt)` =
  sha256("hivemesh/repvote/v1\\0" || msgpack([vote_id, voter, score, salt])) as hex. Binding the
  vote id and the voter stops one validator from copying another's commitment. A new commit
  replaces the voter's earlier one.
- vote_reveal {vote_id, score (0..10_000), salt} in blocks O + Tc + 1 .. O + Tc + Tr: must open
  the voter's commitment (BadReveal otherwise; the commitment stays, so a corrected reveal can
  follow), once. Unrevealed commitments count as absent.
- Tally at end_block of O + Tc + Tr, with each revealer's bonded stake S_i at that moment
  (revealers with no stake left are dropped) and scores s_i:
    quorum: sum S_i * 10_000 >= repvote_quorum_bps * all bonded stake (and sum S_i > 0);
    without it the deposit is burned ("no_quorum") and nothing else changes. With it:
    consensus C = max{ w : sum_{s_i >= w} S_i * 10_000 >= repvote_kappa_bps * sum S_i }
        (kappa 5_000: the stake-weighted median, as Yuma consensus computes it);
    tally = sum S_i * min(s_i, C) // sum S_i  (scores above the consensus are clipped to it,
        so a minority inflating a score gains nothing over voting the consensus; a minority
        voting low still pulls the tally down in proportion to its stake, as in Yuma's rank);
    the subject's reputation r' = (r * (10_000 - a) + tally * a) // 10_000, a =
    repvote_alpha_bps; each revealer with |s_i - C| > repvote_tolerance loses validator
    reputation (EMA step repvote_penalty_bps towards 0); the deposit is refunded.
  Commitments and reveals are dropped after the tally; the vote record stays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

from gossip.envelope import packb
from ledger.accounts import burn, credit, debit
from ledger.errors import (
    AlreadyVoted,
    BadReveal,
    ConflictOfInterest,
    DepositTooLow,
    NotRegistered,
    NoVotingPower,
    UnknownRepVote,
    WrongVotePhase,
)
from ledger.params import BPS
from ledger.payout import ema, rate, reputation_of
from ledger.records_disputes import RepVote
from ledger.state import Journal, State, total_bonded
from ledger.tx import Tx

REPVOTE_DOMAIN = b"hivemesh/repvote/v1\x00"
_ID_DOMAIN = b"hivemesh/repvote-id/v1\x00"


def repvote_id_for(chain_id: str, opener: str, nonce: int) -> str:
    """The id of the vote opened by `opener`'s tx with `nonce` on `chain_id`."""
    return hashlib.sha256(_ID_DOMAIN + packb([chain_id, opener, nonce])).hexdigest()


def repvote_commitment(vote_id: str, voter: str, score: int, salt: bytes) -> str:
    """The commitment a voter posts in vote_commit (hex sha256)."""
    return hashlib.sha256(REPVOTE_DOMAIN + packb([vote_id, voter, score, salt])).hexdigest()


def stake_weighted_median(entries: Sequence[tuple[int, int]], kappa_bps: int = BPS // 2) -> int:
    """max{w : stake of the scores >= w is at least kappa of all} over (score, stake) pairs.
    Returns 0 for no stake."""
    total = sum(stake for _, stake in entries)
    backing = 0
    for score in sorted({s for s, _ in entries}, reverse=True):
        backing += sum(stake for s, stake in entries if s == score)
        if backing * BPS >= kappa_bps * total and total:
            return score
    return 0


def clipped_tally(entries: Sequence[tuple[int, int]], consensus: int) -> int:
    """Stake-weighted mean of the (score, stake) pairs with scores clipped to `consensus`, floored."""
    total = sum(stake for _, stake in entries)
    return sum(min(score, consensus) * stake for score, stake in entries) // total if total else 0


def _bonded(state: State, address: str) -> int:
    v = state.validators.get(address)
    own = v.self_stake if v is not None else 0
    return own + sum(amount for (d, _), amount in state.delegations.items() if d == address)


def _vote(j: Journal, vote_id: str) -> RepVote:
    v = j.state.repvotes.get(vote_id)
    if v is None:
        raise UnknownRepVote(vote_id)
    return v


# ---- tx handlers ----------------------------------------------------------------------------


def vote_open(j: Journal, tx: Tx, sender: str) -> None:
    b, s = tx.body, j.state
    p = s.params
    if _bonded(s, sender) == 0:
        raise NoVotingPower(sender)
    subject, role = b["subject"], b["role"]
    acct = s.accounts.get(subject)
    registered = acct is not None and acct.has_role(role)
    if not registered and not (role == "validator" and subject in s.validators):
        raise NotRegistered(subject, role)
    if b["deposit"] < p.repvote_min_deposit:
        raise DepositTooLow(p.repvote_min_deposit, b["deposit"])
    debit(j, sender, b["deposit"])
    vote_id = repvote_id_for(tx.chain_id, sender, tx.nonce)
    assert vote_id not in s.repvotes, vote_id
    commit_end = s.height + p.repvote_commit_blocks
    vote = RepVote(
        opener=sender,
        subject=subject,
        role=role,
        evidence=b["evidence"],
        deposit=b["deposit"],
        open_height=s.height,
        commit_end=commit_end,
        reveal_end=commit_end + p.repvote_reveal_blocks,
        status="voting",
    )
    j.put("repvotes", vote_id, vote)
    j.put("game_timers", (vote.reveal_end, "repvote", vote_id), "tally")


def vote_commit(j: Journal, tx: Tx, sender: str) -> None:
    vote_id = tx.body["vote_id"]
    vote, h = _vote(j, vote_id), j.state.height
    if vote.status != "voting" or h > vote.commit_end:
        raise WrongVotePhase(vote_id, "commit", h)
    validator = j.state.validators.get(sender)
    if validator is None or validator.bonded == 0:
        raise NoVotingPower(sender)
    if sender == vote.subject:
        raise ConflictOfInterest(f"the reputation vote {vote_id}", sender)
    j.put("repvote_commits", (vote_id, sender), tx.body["commitment"])


def vote_reveal(j: Journal, tx: Tx, sender: str) -> None:
    b = tx.body
    vote_id = b["vote_id"]
    vote, h = _vote(j, vote_id), j.state.height
    if vote.status != "voting" or not vote.commit_end < h <= vote.reveal_end:
        raise WrongVotePhase(vote_id, "reveal", h)
    commitment = j.state.repvote_commits.get((vote_id, sender))
    if commitment is None:
        raise BadReveal(f"{sender} committed nothing to vote {vote_id}")
    if (vote_id, sender) in j.state.repvote_reveals:
        raise AlreadyVoted(f"the reputation vote {vote_id}", sender)
    if repvote_commitment(vote_id, sender, b["score"], b["salt"]) != commitment:
        raise BadReveal("score and salt do not hash to the committed value")
    j.put("repvote_reveals", (vote_id, sender), b["score"])


# ---- end_block ------------------------------------------------------------------------------


def _tally(j: Journal, vote_id: str, vote: RepVote) -> None:
    s = j.state
    p = s.params
    revealed = sorted((voter, score) for (vid, voter), score in s.repvote_reveals.items() if vid == vote_id)
    weighted = [(voter, score, _bonded(s, voter)) for voter, score in revealed]
    weighted = [w for w in weighted if w[2] > 0]
    entries = [(score, stake) for _, score, stake in weighted]
    stake = sum(st for _, st in entries)
    for table in ("repvote_commits", "repvote_reveals"):
        for key in sorted(k for k in getattr(s, table) if k[0] == vote_id):
            j.delete(table, key)
    if stake == 0 or stake * BPS < p.repvote_quorum_bps * total_bonded(s):
        burn(j, vote.deposit)
        j.put("repvotes", vote_id, replace(vote, status="no_quorum", deposit=0, revealed_stake=stake))
        return
    consensus = stake_weighted_median(entries, p.repvote_kappa_bps)
    tally = clipped_tally(entries, consensus)
    new = ema(reputation_of(s, vote.subject, vote.role), tally, p.repvote_alpha_bps)
    j.put("reputation", (vote.subject, vote.role), new)
    for voter, score, _ in weighted:
        if abs(score - consensus) > p.repvote_tolerance:
            rate(j, voter, "validator", up=False, alpha_bps=p.repvote_penalty_bps)
    credit(j, vote.opener, vote.deposit)
    done = replace(
        vote,
        status="tallied",
        deposit=0,
        consensus=consensus,
        tally=tally,
        revealed_stake=stake,
        new_reputation=new,
    )
    j.put("repvotes", vote_id, done)


def process_due(j: Journal) -> list[str]:
    """end_block step: tally every vote whose reveal phase ends at this height. Returns their ids."""
    s = j.state
    due = sorted(k for k in s.game_timers if k[1] == "repvote" and k[0] <= s.height)
    for key in due:
        j.delete("game_timers", key)
        _tally(j, key[2], s.repvotes[key[2]])
    return [k[2] for k in due]


# ---- queries (pure, read-only) ------------------------------------------------------------


def repvote(state: State, vote_id: str) -> dict[str, Any]:
    """One vote as a plain dict, with its phase at the current height and its commit/reveal counts."""
    v = state.repvotes.get(vote_id)
    if v is None:
        raise UnknownRepVote(vote_id)
    out: dict[str, Any] = {"vote_id": vote_id} | {f.name: getattr(v, f.name) for f in fields(v)}
    out["evidence"] = v.evidence.hex()
    h = state.height
    out["phase"] = v.status if v.status != "voting" else ("commit" if h <= v.commit_end else "reveal")
    out["commits"] = sorted(voter for vid, voter in state.repvote_commits if vid == vote_id)
    out["reveals"] = sorted(voter for vid, voter in state.repvote_reveals if vid == vote_id)
    return out


def open_votes(state: State) -> list[str]:
    """Ids of the votes still open, oldest first."""
    return [
        vid
        for _, vid in sorted(
            (v.open_height, vid) for vid, v in state.repvotes.items() if v.status == "voting"
        )
    ]
