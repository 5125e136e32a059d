"""A deterministic in-process network of consensus cores, driven by a fake clock.

Every node runs a real `ledger.consensus.Core`; this module is the driver. Time is a
priority queue of (time_ms, seq, event); a seeded `random.Random` decides message delays,
drops and the byzantine node's choices, so one seed always replays the same run.

Faults: a drop probability per message, partitions (groups that cannot talk until a heal
time), silent validators (never send), crashes (a node loses everything but its durable
last-signed record and decided blocks, then restarts), and byzantine validators that
equivocate: for every vote they sign a second one for another value (nil, or a value
proposed in that round), for every proposal a second proposal, and either show each peer
one version (a random split) or send both versions in random order.

Block sync is modelled as the real driver would do it: a node that hears of a height above
its own asks the sender for the decided block of its height and feeds the answer to
`Core.on_decided_block`.

The checks (agreement, validity, termination, no honest double sign, persist-before-send)
are recorded on the `SimResult`; tests assert them.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from gossip.envelope import packb
from gossip.identity import Identity
from ledger.consensus import (
    Broadcast,
    ConsensusError,
    Core,
    Decide,
    DecidedBlock,
    DuplicateVoteEvidence,
    Evidence,
    LastSigned,
    PersistLastSigned,
    Proposal,
    ProposedValue,
    RejectedMessage,
    RequestProposal,
    ScheduleTimeout,
    Step,
    Timeout,
    TimeoutConfig,
    Validator,
    ValidatorSet,
    Vote,
    value_id,
    verify_commit,
)
from ledger.consensus.types import VOTE_STEP

CHAIN_ID = "hivemesh-sim"
SIM_TIMEOUTS = TimeoutConfig(
    propose_ms=60,
    propose_delta_ms=20,
    prevote_ms=30,
    prevote_delta_ms=10,
    precommit_ms=30,
    precommit_delta_ms=10,
    rebroadcast_ms=100,
    rebroadcast_delta_ms=20,
)
SYNC_RETRY_MS = 30


def sim_identity(index: int) -> Identity:
    return Identity.from_seed(hashlib.sha256(b"hivemesh-sim-validator-%d" % index).digest())


@dataclass
class SimConfig:
    n: int = 4
    powers: list[int] | None = None  # defaults to 1 each
    heights: int = 3  # run until every node that is neither byzantine nor silent decided 1..heights
    seed: int = 0
    drop: float = 0.0
    delay_ms: tuple[int, int] = (1, 10)
    partition: list[set[int]] | None = None  # groups that cannot reach each other ...
    heal_ms: int = 0  # ... until this time
    byzantine: frozenset[int] = frozenset()  # equivocators
    silent: frozenset[int] = frozenset()  # never send anything
    crashes: dict[int, tuple[int, int]] = field(default_factory=dict)  # node -> (down at, back at), ms
    max_time_ms: int = 600_000
    max_events: int = 2_000_000
    timeouts: TimeoutConfig = SIM_TIMEOUTS


@dataclass
class SimNode:
    index: int
    identity: Identity
    core: Core
    decisions: dict[int, bytes] = field(default_factory=dict)
    decide_round: dict[int, int] = field(default_factory=dict)
    decide_time: dict[int, int] = field(default_factory=dict)
    blocks: dict[int, DecidedBlock] = field(default_factory=dict)
    persisted: LastSigned | None = None
    signed: dict[tuple[int, int, Step], Proposal | Vote] = field(default_factory=dict)
    sync_asked: dict[int, int] = field(default_factory=dict)
    down: bool = False
    incarnation: int = 0  # bumped by each restart; older timers are dead
    address: str = field(init=False)

    def __post_init__(self) -> None:
        self.address = self.identity.peer_id


@dataclass
class SimResult:
    config: SimConfig
    nodes: list[SimNode]
    validator_sets: list[ValidatorSet]  # index h -> the set of height h (index 0 unused)
    finished: bool
    time_ms: int
    events: int
    proposed: dict[int, set[bytes]]  # height -> value ids proposed by anyone
    evidence: list[tuple[int, DuplicateVoteEvidence]]  # (reporting node, evidence)
    rejected: list[tuple[int, str, str]]  # (receiving node, message author, error name)
    violations: list[str]  # broken invariants seen while running

    @property
    def correct(self) -> list[SimNode]:
        """Nodes running the protocol as written (silent and crashed ones included)."""
        return [n for n in self.nodes if n.index not in self.config.byzantine]

    def agreement_violations(self) -> list[str]:
        out = []
        heights = sorted({h for n in self.correct for h in n.decisions})
        for h in heights:
            values = {n.decisions[h] for n in self.correct if h in n.decisions}
            if len(values) > 1:
                out.append(f"height {h}: correct nodes decided {len(values)} different values")
        return out

    def validity_violations(self) -> list[str]:
        return [
            f"node {n.index} decided an unproposed value at height {h}"
            for n in self.correct
            for h, v in n.decisions.items()
            if value_id(v) not in self.proposed.get(h, set())
        ]


def _author(msg: Proposal | Vote) -> str:
    return msg.proposer if isinstance(msg, Proposal) else msg.validator


def _step_of(msg: Proposal | Vote) -> Step:
    return Step.PROPOSE if isinstance(msg, Proposal) else VOTE_STEP[msg.vote_type]


class Simulation:
    """Build with a SimConfig, then `run()` once."""

    def __init__(self, config: SimConfig) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        powers = config.powers or [1] * config.n
        assert len(powers) == config.n
        ids = [sim_identity(i) for i in range(config.n)]
        first = ValidatorSet(
            Validator.from_public(ident.public, p) for ident, p in zip(ids, powers, strict=True)
        )
        self.sets = [first, first]
        self.nodes = [SimNode(i, ident, self._new_core(ident, None)) for i, ident in enumerate(ids)]
        self.now = 0
        self.seq = 0
        self.queue: list[tuple[int, int, str, int, Any, int]] = []
        self.proposed: dict[int, set[bytes]] = {}
        self.round_values: dict[tuple[int, int], list[bytes]] = {}  # value ids proposed per (h, r)
        self.evidence: list[tuple[int, DuplicateVoteEvidence]] = []
        self.rejected: list[tuple[int, str, str]] = []
        self.violations: list[str] = []

    # -- plumbing ----------------------------------------------------------------------------

    def validator_set(self, height: int) -> ValidatorSet:
        while len(self.sets) <= height:
            self.sets.append(self.sets[-1].advance(1))
        return self.sets[height]

    def _new_core(self, ident: Identity, last_signed: LastSigned | None) -> Core:
        return Core(
            chain_id=CHAIN_ID,
            address=ident.peer_id,
            sign=ident.sign,
            validate_value=self._validate,
            timeouts=self.cfg.timeouts,
            last_signed=last_signed,
        )

    def _restart(self, node: SimNode) -> None:
        """Back from a crash with only what was durable: the last-signed record and the blocks."""
        node.down, node.incarnation = False, node.incarnation + 1
        node.core = self._new_core(node.identity, node.persisted)
        height = max(node.decisions, default=0) + 1
        self._execute(node, node.core.start_height(height, self.validator_set(height)))

    @staticmethod
    def _validate(height: int, value: bytes) -> bool:
        return value.startswith(b"block:")

    def _push(self, at: int, kind: str, node: int, payload: Any, sender: int = -1) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, node, payload, sender))

    def _reachable(self, a: int, b: int) -> bool:
        if self.cfg.partition is None or self.now >= self.cfg.heal_ms:
            return True
        return any(a in g and b in g for g in self.cfg.partition)

    def _send(self, frm: int, to: int, kind: str, payload: Any) -> None:
        if frm in self.cfg.silent or not self._reachable(frm, to) or self.rng.random() < self.cfg.drop:
            return
        self._push(self.now + self.rng.randint(*self.cfg.delay_ms), kind, to, payload, frm)

    # -- the driver --------------------------------------------------------------------------

    def _execute(self, node: SimNode, effects: list[Any]) -> None:
        work = list(effects)
        while work:
            effect = work.pop(0)
            if isinstance(effect, Broadcast):
                self._broadcast(node, effect.message)
            elif isinstance(effect, PersistLastSigned):
                node.persisted = effect.record
            elif isinstance(effect, ScheduleTimeout):
                self._push(self.now + effect.duration_ms, "timeout", node.index, (effect, node.incarnation))
            elif isinstance(effect, RequestProposal):
                value = b"block:" + packb([effect.height, effect.round, node.index, self.rng.getrandbits(32)])
                work[:0] = node.core.handle(ProposedValue(effect.height, effect.round, value))
            elif isinstance(effect, Evidence):
                self.evidence.append((node.index, effect.evidence))
            elif isinstance(effect, Decide):
                work += self._decided(node, effect)

    def _decided(self, node: SimNode, d: Decide) -> list[Any]:
        if not verify_commit(
            self.validator_set(d.height), d.height, value_id(d.value), d.commit, chain_id=CHAIN_ID
        ):
            self.violations.append(f"node {node.index} decided height {d.height} with an invalid commit")
        node.decisions[d.height] = d.value
        node.decide_round[d.height] = d.round
        node.decide_time[d.height] = self.now
        node.blocks[d.height] = DecidedBlock(d.height, d.value, d.commit)
        return node.core.start_height(d.height + 1, self.validator_set(d.height + 1))

    def _check_own(self, node: SimNode, msg: Proposal | Vote) -> None:
        key = (msg.height, msg.round, _step_of(msg))
        if node.persisted is None or node.persisted.key < (key[0], key[1], int(key[2])):
            self.violations.append(f"node {node.index} sent {key} before persisting it")
        earlier = node.signed.setdefault(key, msg)
        if earlier != msg and node.index not in self.cfg.byzantine:
            self.violations.append(f"honest node {node.index} signed two different messages for {key}")

    def _broadcast(self, node: SimNode, msg: Proposal | Vote) -> None:
        own = _author(msg) == node.address
        if own:
            self._check_own(node, msg)
        if isinstance(msg, Proposal):
            self._note_proposal(msg)
        peers = [p for p in range(self.cfg.n) if p != node.index]
        if not own or node.index not in self.cfg.byzantine:
            for peer in peers:
                self._send(node.index, peer, "deliver", msg)
            return
        twin = self._twin(node, msg)
        if self.rng.random() < 0.5:  # split: each peer sees one version only
            for peer in peers:
                self._send(node.index, peer, "deliver", twin if self.rng.random() < 0.5 else msg)
        else:  # both versions to everyone, in random order
            for peer in peers:
                for m in self.rng.sample([msg, twin], 2):
                    self._send(node.index, peer, "deliver", m)

    def _note_proposal(self, p: Proposal) -> None:
        self.proposed.setdefault(p.height, set()).add(p.value_id)
        values = self.round_values.setdefault((p.height, p.round), [])
        if p.value_id not in values:
            values.append(p.value_id)

    def _twin(self, node: SimNode, msg: Proposal | Vote) -> Proposal | Vote:
        """The byzantine node's conflicting copy of a message it signs: another real value if
        there is one (a second proposal, or a vote for a value proposed in that round)."""
        sign = node.identity.sign
        if isinstance(msg, Proposal):
            value = b"block:evil:" + packb([msg.height, msg.round, self.rng.getrandbits(32)])
            twin = Proposal.create(sign, CHAIN_ID, msg.height, msg.round, value, msg.pol_round, msg.proposer)
            self._note_proposal(twin)
            return twin
        others = [v for v in self.round_values.get((msg.height, msg.round), []) if v != msg.value_id]
        if msg.value_id is not None and (not others or self.rng.random() < 0.5):
            other = None
        elif others:
            other = self.rng.choice(others)
        else:
            other = hashlib.sha256(b"evil" + packb(msg.to_wire())).digest()
        return Vote.create(sign, CHAIN_ID, msg.vote_type, msg.height, msg.round, other, msg.validator)

    def _deliver(self, node: SimNode, msg: Any, sender: int) -> None:
        try:
            effects = node.core.handle(msg)
        except RejectedMessage as e:
            author = _author(msg) if isinstance(msg, Proposal | Vote) else "sync"
            self.rejected.append((node.index, author, type(e).__name__))
            effects = []
        except ConsensusError:
            effects = []
        self._execute(node, effects)
        height = node.core.height
        behind = isinstance(msg, Proposal | Vote) and msg.height > height
        if behind and self.now - node.sync_asked.get(height, -SYNC_RETRY_MS) >= SYNC_RETRY_MS:
            node.sync_asked[height] = self.now  # ask the sender for the block we are missing
            self._send(node.index, sender, "sync_request", height)

    def _serve_sync(self, node: SimNode, height: int, asker: int) -> None:
        block = node.blocks.get(height)
        if block is not None:
            self._send(node.index, asker, "deliver", block)

    def _done(self) -> bool:
        """Every node that can take part (neither byzantine nor silent) decided every height."""
        want = set(range(1, self.cfg.heights + 1))
        faulty = self.cfg.byzantine | self.cfg.silent
        return all(want <= n.decisions.keys() for n in self.nodes if n.index not in faulty)

    def run(self) -> SimResult:
        for node in self.nodes:
            self._execute(node, node.core.start_height(1, self.validator_set(1)))
        for index, (down_at, back_at) in self.cfg.crashes.items():
            self._push(down_at, "crash", index, None)
            self._push(back_at, "restart", index, None)
        events = 0
        while self.queue and not self._done() and events < self.cfg.max_events:
            at, _, kind, index, payload, sender = heapq.heappop(self.queue)
            if at > self.cfg.max_time_ms:
                break
            self.now, events = at, events + 1
            node = self.nodes[index]
            if kind == "crash":
                node.down = True
            elif kind == "restart":
                self._restart(node)
            elif node.down:
                continue  # a crashed node hears nothing and its timers died with it
            elif kind == "deliver":
                self._deliver(node, payload, sender)
            elif kind == "timeout" and payload[1] == node.incarnation:
                t = payload[0]
                self._execute(node, node.core.on_timeout(Timeout(t.kind, t.height, t.round)))
            elif kind == "sync_request":
                self._serve_sync(node, payload, sender)
        return SimResult(
            self.cfg,
            self.nodes,
            self.sets,
            self._done(),
            self.now,
            events,
            self.proposed,
            self.evidence,
            self.rejected,
            self.violations,
        )


def run_sim(**kwargs: Any) -> SimResult:
    return Simulation(SimConfig(**kwargs)).run()
