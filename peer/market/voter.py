"""The voter agent: open reputation votes on evidence, and commit and reveal scores as a validator.

Observations (`Observations`): what this peer saw, per (subject, role): good and bad outcomes.
From the committed chain: a job of a solver finalized (good), reversed or missed (bad). First
hand, from the other agents (`evidence`): a spot check of ours that failed, a canary of ours
that caught the solver, a dispute of ours that the solver lost. The score of (subject, role)
is its current ledger reputation weighted PRIOR_WEIGHT times, averaged with 10_000 per good
and 0 per bad observation (`score_of`): no observation means voting the status quo.

Opening (`vote_open`): a peer with bonded stake (self-stake or delegations) opens one vote on
(subject, role) for each piece of first-hand evidence, at most one open vote per subject and
role, with the chain's minimum deposit; the evidence is a short JSON record (kind, job id).

Voting: while this peer is a validator with bonded stake, for every open vote not about itself
it commits score + fresh salt in the commit phase (blocks open .. commit_end) and reveals it in
the reveal phase (commit_end + 1 .. reveal_end). The salts live in memory only: a restart in
the middle of a vote loses its reveal (the commitment then counts as absent).

Error handling: refused txs (phase over, a lagging view, no stake) are logged and skipped.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from ledger.params import BPS
from ledger.payout import reputation_of
from ledger.repvote import open_votes, repvote_commitment, repvote_id_for
from ledger.state import State
from ledger.tx import MAX_EVIDENCE_BYTES
from peer.market.errors import MarketError

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

PRIOR_WEIGHT = 2
SALT_BYTES = 32
EVIDENCE_KINDS = ("failed_spot_check", "canary_failed", "dispute_lost", "deadline_missed")
MAX_PENDING = 256


@dataclass
class Observations:
    """Good and bad outcomes seen per (subject, role)."""

    counts: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # key -> [good, bad]
    last_height: int = 0

    def add(self, subject: str, role: str, good: bool) -> None:
        pair = self.counts.setdefault((subject, role), [0, 0])
        pair[0 if good else 1] += 1

    def from_chain(self, state: State) -> None:
        """Count the solver outcomes of the jobs closed since the last state seen."""
        for job in state.jobs.values():
            if self.last_height < job.closed_height <= state.height and job.solver:
                if job.status == "finalized":
                    self.add(job.solver, "solver", True)
                elif job.status in ("reversed", "missed"):
                    self.add(job.solver, "solver", False)
        self.last_height = state.height

    def score_of(self, state: State, subject: str, role: str) -> int:
        """The score this peer votes for (subject, role) (module docstring)."""
        good, bad = self.counts.get((subject, role), (0, 0))
        prior = reputation_of(state, subject, role)
        return (prior * PRIOR_WEIGHT + BPS * good) // (PRIOR_WEIGHT + good + bad)


def bonded_stake(state: State, address: str) -> int:
    """Stake that lets `address` open a vote: its own validator stake plus what it delegated."""
    v = state.validators.get(address)
    own = v.self_stake if v is not None else 0
    return own + sum(amount for (d, _), amount in state.delegations.items() if d == address)


def evidence_bytes(kind: str, job_id: str, detail: str = "") -> bytes:
    """The evidence field of a vote_open: compact JSON, cut to the ledger's limit."""
    if kind not in EVIDENCE_KINDS:
        raise MarketError(f"unknown evidence kind {kind!r}; one of {', '.join(EVIDENCE_KINDS)}")
    record = {"kind": kind, "job_id": job_id, "detail": detail[:200]}
    data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return data[:MAX_EVIDENCE_BYTES]


@dataclass(frozen=True)
class _Evidence:
    subject: str
    role: str
    data: bytes


class Voter:
    """The voter actor of one peer (see the module docstring)."""

    def __init__(self, market: MarketService) -> None:
        self.market = market
        self.observations = Observations()
        self._pending: list[_Evidence] = []
        self._committed: dict[str, tuple[int, bytes]] = {}  # vote id -> (score, salt)
        self._revealed: set[str] = set()
        self.opened: list[str] = []  # ids of the votes this peer opened (for the API)

    def evidence(self, subject: str, role: str, kind: str, job_id: str, detail: str = "") -> None:
        """First-hand evidence against (subject, role) from another agent: a bad observation and,
        when this peer has stake, a vote to open."""
        self.observations.add(subject, role, False)
        if len(self._pending) < MAX_PENDING:
            self._pending.append(_Evidence(subject, role, evidence_bytes(kind, job_id, detail)))

    def status(self) -> dict[str, Any]:
        return {
            "committed": sorted(self._committed),
            "revealed": sorted(self._revealed),
            "opened": list(self.opened),
            "pending_evidence": len(self._pending),
        }

    async def run(self) -> None:
        height = 0
        while True:
            state = await self.market.watch.wait_above(height)
            height = state.height
            self.observations.from_chain(state)
            await self._open_votes(state)
            await self._vote(state)

    async def _open_votes(self, state: State) -> None:
        me = self.market.ledger.address
        if not self._pending or bonded_stake(state, me) == 0:
            self._pending.clear()  # no stake, no vote: the observation is kept all the same
            return
        pending, self._pending = self._pending, []
        voting = {(state.repvotes[v].subject, state.repvotes[v].role) for v in open_votes(state)}
        deposit = state.params.repvote_min_deposit
        for ev in pending:
            if (ev.subject, ev.role) in voting or ev.subject == me:
                continue
            if self.market.ledger.balance() < deposit + state.params.min_fee:
                log.info("no reputation vote: balance below the deposit", subject=ev.subject[:16])
                continue
            body = {"subject": ev.subject, "role": ev.role, "evidence": ev.data, "deposit": deposit}
            try:
                sent = await self.market.ledger.send("vote_open", body)
            except MarketError as e:
                log.info("vote_open refused", subject=ev.subject[:16], error=str(e))
                continue
            voting.add((ev.subject, ev.role))
            vote_id = repvote_id_for(self.market.ledger.chain_id, me, sent["nonce"])
            self.opened.append(vote_id)
            log.info("reputation vote opened", vote=vote_id[:16], subject=ev.subject[:16], role=ev.role)

    async def _vote(self, state: State) -> None:
        me = self.market.ledger.address
        validator = state.validators.get(me)
        if validator is None or validator.bonded == 0:
            return
        for vote_id in open_votes(state):
            vote = state.repvotes[vote_id]
            if vote.subject == me:
                continue
            if state.height <= vote.commit_end and vote_id not in self._committed:
                await self._commit(state, vote_id, vote.subject, vote.role)
            elif vote.commit_end < state.height <= vote.reveal_end and vote_id in self._committed:
                if vote_id not in self._revealed:
                    await self._reveal(vote_id)
        live = set(open_votes(state))
        for vote_id in [v for v in self._committed if v not in live]:
            self._committed.pop(vote_id)
            self._revealed.discard(vote_id)

    async def _commit(self, state: State, vote_id: str, subject: str, role: str) -> None:
        me = self.market.ledger.address
        score = self.observations.score_of(state, subject, role)
        salt = secrets.token_bytes(SALT_BYTES)
        self._committed[vote_id] = (score, salt)
        body = {"vote_id": vote_id, "commitment": repvote_commitment(vote_id, me, score, salt)}
        try:
            await self.market.ledger.send("vote_commit", body)
        except MarketError as e:
            log.info("vote_commit refused", vote=vote_id[:16], error=str(e))
            return
        log.info("reputation vote committed", vote=vote_id[:16], subject=subject[:16], score=score)

    async def _reveal(self, vote_id: str) -> None:
        score, salt = self._committed[vote_id]
        self._revealed.add(vote_id)
        try:
            await self.market.ledger.send("vote_reveal", {"vote_id": vote_id, "score": score, "salt": salt})
        except MarketError as e:
            log.info("vote_reveal refused", vote=vote_id[:16], error=str(e))
            return
        log.info("reputation vote revealed", vote=vote_id[:16], score=score)
