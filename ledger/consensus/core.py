"""The Tendermint state machine (arXiv 1807.04938, Algorithm 1) as a pure core.

`Core` holds the state of one validator (or observer) and turns events — proposals, votes,
fired timeouts, the driver's proposed value, a decided block from sync — into a list of
effects (effects.py). It does no I/O, reads no clock, draws no randomness and never blocks:
signing goes through the injected `sign` callable (Ed25519 is deterministic) and value
checks through `validate_value`. It can be stepped one message at a time.

Rules are those of Algorithm 1, checked to a fixed point after every event (line numbers
from the paper): 22/28 prevote on a proposal, 34 schedule the prevote timeout, 36 lock and
precommit, 44 precommit nil, 47 schedule the precommit timeout, 49 decide (any round), 55
skip to a higher round on f+1 power, 57/61/65 timeouts. Additions for a lossy network:
every timeout of the current round first re-broadcasts what we signed in it and our votes
of the round before, and a REBROADCAST timeout repeats that periodically (the proposer
also relays the prevotes that justify its pol_round), so no message needs to arrive the
first time.

Double-sign guard: nothing is signed at or below the last signed (height, round, step);
each signature is preceded by a PersistLastSigned effect carrying it and the current lock.
A core restored with that record at the same height starts at the recorded round and keeps
the lock, so a restart can neither sign twice nor forget what it is locked on.

Error handling: bad input raises a subclass of ConsensusError (see errors.py) before any
state changes; a raised error never leaves the core half-updated.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

from gossip.identity import verify
from ledger.consensus.commit import check_commit
from ledger.consensus.config import FUTURE_BUFFER, PROPOSAL_ROUNDS_AHEAD, TimeoutConfig
from ledger.consensus.effects import (
    Broadcast,
    Decide,
    Effect,
    Evidence,
    PersistLastSigned,
    RequestProposal,
    ScheduleTimeout,
)
from ledger.consensus.errors import (
    ConflictingProposal,
    ConsensusError,
    ConsensusStateError,
    DuplicateMessage,
    FutureMessage,
    InvalidSignature,
    MalformedMessage,
    NotRunning,
    StaleMessage,
    WrongProposer,
)
from ledger.consensus.types import (
    MAX_HEIGHT,
    VOTE_STEP,
    Commit,
    DecidedBlock,
    Event,
    LastSigned,
    Proposal,
    ProposedValue,
    Signer,
    Step,
    Timeout,
    TimeoutKind,
    Vote,
    VoteType,
    check_chain_id,
    value_id,
)
from ledger.consensus.validators import ValidatorSet
from ledger.consensus.votekeeper import VoteKeeper


class Core:
    """One node's Tendermint state machine.

    Args:
        chain_id: signed into every message.
        address: our validator address, or None for an observer that never signs.
        sign: signs bytes with our validator key (deterministic Ed25519).
        validate_value: `validate_value(height, value)` -> bool; must not raise.
        timeouts: timeout durations; defaults to TimeoutConfig().
        last_signed: the last PersistLastSigned record made durable, if any.
    """

    def __init__(
        self,
        *,
        chain_id: str,
        address: str | None,
        sign: Signer,
        validate_value: Callable[[int, bytes], bool],
        timeouts: TimeoutConfig | None = None,
        last_signed: LastSigned | None = None,
    ) -> None:
        self.chain_id = check_chain_id(chain_id)
        self.address = address
        self._sign = sign
        self._validate = validate_value
        self.timeouts = timeouts or TimeoutConfig()
        self.last_signed = last_signed
        self.running = False
        self.height = 0
        self._future: dict[Proposal | Vote, None] = {}
        self._reset(0, None)

    def _reset(self, height: int, validator_set: ValidatorSet | None) -> None:
        self.height, self.round, self.step = height, 0, Step.PROPOSE
        self.locked_round: int = -1
        self.locked_value_id: bytes | None = None
        self.valid_round: int = -1
        self.valid_value: bytes | None = None
        self.validator_set = validator_set
        self._votes = VoteKeeper(height, validator_set, self.chain_id) if validator_set is not None else None
        self._proposals: dict[int, Proposal] = {}
        self._proposers: list[str] = []
        self._valid_cache: dict[bytes, bool] = {}
        self._fired: set[tuple[str, int]] = set()
        self._own: dict[tuple[int, Step], Proposal | Vote] = {}

    # -- public API ------------------------------------------------------------------------

    @property
    def decided(self) -> bool:
        return self.running and self.step is Step.COMMIT

    def proposer(self, round: int) -> str:
        """Address of the proposer of `round` at the current height."""
        assert self.validator_set is not None, "start_height first"
        if round >= len(self._proposers):
            self._proposers = self.validator_set.proposers(max(round + 1, 2 * len(self._proposers)))
        return self._proposers[round]

    def start_height(self, height: int, validator_set: ValidatorSet) -> list[Effect]:
        """Begin `height` with its validator set (after Decide of height-1, or at boot).

        Raises:
            ConsensusStateError: `height` is not above the current one, or no ValidatorSet.
        """
        if not isinstance(validator_set, ValidatorSet):
            raise ConsensusStateError(f"expected a ValidatorSet, got {type(validator_set).__name__}")
        if not isinstance(height, int) or isinstance(height, bool) or not 0 <= height < MAX_HEIGHT:
            raise ConsensusStateError(f"bad height {height!r}")
        if self.running and height <= self.height:
            raise ConsensusStateError(f"cannot start height {height}: already at height {self.height}")
        buffered = [m for m in self._future if m.height == height]
        self._future = {}
        self._reset(height, validator_set)
        self.running = True
        first_round = 0
        ls = self.last_signed
        if ls is not None and ls.height == height:  # restarted mid-height: keep the round and lock
            first_round, self.locked_round, self.locked_value_id = (
                ls.round,
                ls.locked_round,
                ls.locked_value_id,
            )
        effects = self._start_round(first_round)
        for msg in buffered:
            with suppress(ConsensusError):
                effects += self.on_proposal(msg) if isinstance(msg, Proposal) else self.on_vote(msg)
        return effects + self._run_rules()

    def handle(self, event: Event) -> list[Effect]:
        """Dispatch any event to its handler."""
        match event:
            case Vote():
                return self.on_vote(event)
            case Proposal():
                return self.on_proposal(event)
            case Timeout():
                return self.on_timeout(event)
            case ProposedValue():
                return self.on_proposed_value(event)
            case DecidedBlock():
                return self.on_decided_block(event)
        raise MalformedMessage(f"not a consensus event: {type(event).__name__}")

    def on_proposal(self, proposal: Proposal) -> list[Effect]:
        """A proposal from the network. Raises a ConsensusError subclass on bad input."""
        if not isinstance(proposal, Proposal):
            raise MalformedMessage(f"expected a Proposal, got {type(proposal).__name__}")
        if not self._route(proposal):
            return []
        if proposal.round > self.round + PROPOSAL_ROUNDS_AHEAD:
            raise FutureMessage(
                f"proposal for round {proposal.round}, we are in round {self.round}",
                proposal.height,
                proposal.round,
            )
        if proposal.proposer != self.proposer(proposal.round):
            raise WrongProposer(f"{proposal.proposer} is not the proposer of {self.height}/{proposal.round}")
        held = self._proposals.get(proposal.round)
        if held == proposal:
            raise DuplicateMessage(f"already hold the proposal for {self.height}/{proposal.round}")
        assert self.validator_set is not None
        proposer = self.validator_set.get(proposal.proposer)
        assert proposer is not None, "proposers are drawn from the set"
        if not verify(proposer.pubkey, proposal.signature, proposal.sign_bytes(self.chain_id)):
            raise InvalidSignature(f"bad proposal signature from {proposal.proposer}")
        if held is not None:
            if (held.value, held.pol_round) == (proposal.value, proposal.pol_round):
                raise DuplicateMessage(f"already hold the proposal for {self.height}/{proposal.round}")
            raise ConflictingProposal(
                f"{proposal.proposer} proposed twice for {self.height}/{proposal.round}"
            )
        self._proposals[proposal.round] = proposal
        return self._run_rules()

    def on_vote(self, vote: Vote) -> list[Effect]:
        """A prevote or precommit from the network. Raises a ConsensusError subclass on bad input."""
        if not isinstance(vote, Vote):
            raise MalformedMessage(f"expected a Vote, got {type(vote).__name__}")
        if not self._route(vote):
            return []
        assert self._votes is not None
        _, evidence = self._votes.add(vote, self.round, known_values=self._known_values())
        effects: list[Effect] = [Evidence(evidence)] if evidence else []
        return effects + self._run_rules()

    def on_timeout(self, timeout: Timeout) -> list[Effect]:
        """A timeout we scheduled has fired; stale ones are ignored (an empty list)."""
        if (
            not self.running
            or self.step is Step.COMMIT
            or (timeout.height, timeout.round) != (self.height, self.round)
        ):
            return []
        effects = self._rebroadcast()
        kind = timeout.kind
        if kind is TimeoutKind.PROPOSE and self.step is Step.PROPOSE:  # line 57
            effects += self._vote(VoteType.PREVOTE, None)
            self.step = Step.PREVOTE
        elif kind is TimeoutKind.PREVOTE and self.step is Step.PREVOTE:  # line 61
            effects += self._vote(VoteType.PRECOMMIT, None)
            self.step = Step.PRECOMMIT
        elif kind is TimeoutKind.PRECOMMIT:  # line 65
            effects += self._start_round(self.round + 1)
        elif kind is TimeoutKind.REBROADCAST:
            effects.append(self._schedule(TimeoutKind.REBROADCAST))
        return effects + self._run_rules()

    def on_proposed_value(self, answer: ProposedValue) -> list[Effect]:
        """The driver's value for our RequestProposal; late or unasked answers are ignored."""
        if not isinstance(answer.value, bytes):
            raise MalformedMessage("a proposed value must be bytes")
        if (
            not self.running
            or self.step is Step.COMMIT
            or (answer.height, answer.round) != (self.height, self.round)
            or self.proposer(self.round) != self.address
        ):
            return []
        return self._propose(answer.value, -1) + self._run_rules()

    def on_decided_block(self, block: DecidedBlock) -> list[Effect]:
        """A decided value for our height (from block sync): verify its commit, then decide.

        Raises:
            InvalidCommit: the commit does not prove the value at this height.
            StaleMessage / FutureMessage / NotRunning: not for the height we are deciding.
        """
        if not isinstance(block, DecidedBlock):
            raise MalformedMessage(f"expected a DecidedBlock, got {type(block).__name__}")
        if not self.running:
            raise NotRunning("start_height was never called")
        if block.height < self.height or (block.height == self.height and self.step is Step.COMMIT):
            raise StaleMessage(f"height {block.height} is already decided here")
        if block.height > self.height:
            raise FutureMessage(f"decided block {block.height}, we are at {self.height}", block.height, 0)
        assert self.validator_set is not None
        check_commit(
            self.validator_set, self.height, value_id(block.value), block.commit, chain_id=self.chain_id
        )
        self.step = Step.COMMIT
        return [Decide(self.height, block.commit.round, block.value, block.commit)]

    # -- routing and signing ---------------------------------------------------------------

    def _route(self, msg: Proposal | Vote) -> bool:
        """True: handle now. False: buffered for the next height. Raises when of no use."""
        if not self.running:
            raise NotRunning("start_height was never called")
        if msg.height < self.height or (msg.height == self.height and self.step is Step.COMMIT):
            raise StaleMessage(f"message for height {msg.height}; height {self.height} is current or decided")
        if msg.height == self.height:
            return True
        if msg.height == self.height + 1 and len(self._future) < FUTURE_BUFFER:
            if msg in self._future:
                raise DuplicateMessage(f"already buffered this message for height {msg.height}")
            self._future[msg] = None
            return False
        raise FutureMessage(
            f"message for height {msg.height}, we are at {self.height}", msg.height, msg.round
        )

    def _may_sign(self, step: Step) -> bool:
        if self.address is None or self.validator_set is None or self.address not in self.validator_set:
            return False
        return self.last_signed is None or (self.height, self.round, int(step)) > self.last_signed.key

    def _persist(self, step: Step) -> PersistLastSigned:
        record = LastSigned(self.height, self.round, step, self.locked_round, self.locked_value_id)
        self.last_signed = record
        return PersistLastSigned(record)

    def _propose(self, value: bytes, pol_round: int) -> list[Effect]:
        if self.round in self._proposals or not self._may_sign(Step.PROPOSE):
            return []
        assert self.address is not None
        proposal = Proposal.create(
            self._sign, self.chain_id, self.height, self.round, value, pol_round, self.address
        )
        self._proposals[self.round] = self._own[(self.round, Step.PROPOSE)] = proposal
        return [self._persist(Step.PROPOSE), Broadcast(proposal), *self._proof_of_lock(proposal)]

    def _vote(self, vote_type: VoteType, vid: bytes | None) -> list[Effect]:
        step = VOTE_STEP[vote_type]
        if not self._may_sign(step):
            return []
        assert self.address is not None and self._votes is not None
        vote = Vote.create(self._sign, self.chain_id, vote_type, self.height, self.round, vid, self.address)
        self._own[(self.round, step)] = vote
        effects: list[Effect] = [self._persist(step), Broadcast(vote)]
        with suppress(DuplicateMessage):
            _, evidence = self._votes.add(vote, self.round, trusted=True)
            if evidence:  # only if a pre-restart vote of ours came back: report it honestly
                effects.append(Evidence(evidence))
        return effects

    def _proof_of_lock(self, proposal: Proposal) -> list[Effect]:
        if proposal.pol_round < 0 or self._votes is None:
            return []
        return [
            Broadcast(v)
            for v in self._votes.votes_for(proposal.pol_round, VoteType.PREVOTE, proposal.value_id)
        ]

    def _rebroadcast(self) -> list[Effect]:
        """Our votes of the previous round, then everything we signed in this one.

        The previous round matters: nodes that saw 2f+1 precommits move on, and without
        their precommits the others could wait forever for the 2f+1 that starts their own
        precommit timeout (fewer than f+1 moved, so the round-skip rule cannot help).
        """
        slots = [(self.round - 1, Step.PREVOTE), (self.round - 1, Step.PRECOMMIT)]
        slots += [(self.round, step) for step in (Step.PROPOSE, Step.PREVOTE, Step.PRECOMMIT)]
        effects: list[Effect] = []
        for slot in slots:
            msg = self._own.get(slot)
            if msg is not None:
                effects.append(Broadcast(msg))
                if isinstance(msg, Proposal):
                    effects += self._proof_of_lock(msg)
        return effects

    def _known_values(self) -> set[bytes]:
        return {p.value_id for p in self._proposals.values()}

    def _schedule(self, kind: TimeoutKind) -> ScheduleTimeout:
        return ScheduleTimeout(kind, self.height, self.round, self.timeouts.duration_ms(kind, self.round))

    def _valid(self, proposal: Proposal) -> bool:
        vid = proposal.value_id
        if vid not in self._valid_cache:
            self._valid_cache[vid] = bool(self._validate(self.height, proposal.value))
        return self._valid_cache[vid]

    # -- the upon-rules ----------------------------------------------------------------------

    def _start_round(self, round: int) -> list[Effect]:
        """StartRound (line 11)."""
        self.round, self.step = round, Step.PROPOSE
        effects: list[Effect] = [self._schedule(TimeoutKind.PROPOSE), self._schedule(TimeoutKind.REBROADCAST)]
        if self.proposer(round) == self.address:
            if self.valid_value is not None:
                effects += self._propose(self.valid_value, self.valid_round)
            elif self._may_sign(Step.PROPOSE):
                effects.append(RequestProposal(self.height, round))
        return effects

    def _run_rules(self) -> list[Effect]:
        effects: list[Effect] = []
        while self.step is not Step.COMMIT:
            fired = self._fire_one_rule()
            if fired is None:
                break
            effects += fired
        return effects

    def _first_time(self, rule: str) -> bool:
        key = (rule, self.round)
        if key in self._fired:
            return False
        self._fired.add(key)
        return True

    def _fire_one_rule(self) -> list[Effect] | None:
        """Apply the first rule whose condition holds; None when none does (a fixed point)."""
        votes = self._votes
        assert votes is not None
        for r in sorted(self._proposals):  # line 49: decide, in any round
            p = self._proposals[r]
            if votes.has_quorum_for(r, VoteType.PRECOMMIT, p.value_id) and self._valid(p):
                return self._decide(r, p)
        skip = votes.skip_round(self.round)  # line 55
        if skip is not None:
            return self._start_round(skip)
        r, step = self.round, self.step
        proposal = self._proposals.get(r)
        if step is Step.PROPOSE and proposal is not None:
            vid, vr = proposal.value_id, proposal.pol_round
            if vr == -1:  # line 22
                ok = self._valid(proposal) and (self.locked_round == -1 or self.locked_value_id == vid)
                return self._prevote(vid if ok else None)
            if votes.has_quorum_for(vr, VoteType.PREVOTE, vid):  # line 28
                ok = self._valid(proposal) and (self.locked_round <= vr or self.locked_value_id == vid)
                return self._prevote(vid if ok else None)
        if (
            step is Step.PREVOTE
            and votes.has_quorum_any(r, VoteType.PREVOTE)
            and self._first_time("prevote_any")
        ):
            return [self._schedule(TimeoutKind.PREVOTE)]  # line 34
        if (
            step in (Step.PREVOTE, Step.PRECOMMIT)
            and proposal is not None
            and votes.has_quorum_for(r, VoteType.PREVOTE, proposal.value_id)
            and self._valid(proposal)
            and self._first_time("lock")
        ):  # line 36
            effects: list[Effect] = []
            if step is Step.PREVOTE:
                self.locked_round, self.locked_value_id = r, proposal.value_id
                effects = self._vote(VoteType.PRECOMMIT, proposal.value_id)
                self.step = Step.PRECOMMIT
            self.valid_round, self.valid_value = r, proposal.value
            return effects
        if step is Step.PREVOTE and votes.has_quorum_for(r, VoteType.PREVOTE, None):  # line 44
            effects = self._vote(VoteType.PRECOMMIT, None)
            self.step = Step.PRECOMMIT
            return effects
        if votes.has_quorum_any(r, VoteType.PRECOMMIT) and self._first_time("precommit_any"):
            return [self._schedule(TimeoutKind.PRECOMMIT)]  # line 47
        return None

    def _prevote(self, vid: bytes | None) -> list[Effect]:
        effects = self._vote(VoteType.PREVOTE, vid)
        self.step = Step.PREVOTE
        return effects

    def _decide(self, round: int, proposal: Proposal) -> list[Effect]:
        assert self._votes is not None
        commit = Commit.from_votes(self._votes.votes_for(round, VoteType.PRECOMMIT, proposal.value_id))
        self.step = Step.COMMIT
        return [Decide(self.height, round, proposal.value, commit)]
