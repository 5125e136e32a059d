"""The consensus driver: runs the Tendermint core over the ledger and executes its effects.

Everything here is called from the ledger node's owner task only (node.py): the core, the
head of the chain, the mempool and the evidence pool have that one owner, so nothing is
locked. The effects of one core call are executed in order:

* PersistLastSigned -> `store.save_last_signed` (fsync'd, in a worker thread), finished
  before the Broadcast that follows it is published;
* Broadcast -> publish on TOPIC_CONSENSUS (best effort: the core re-broadcasts on timeouts);
  a proposal goes out compact (header and tx hashes, ledger.compact), never with its txs;
* ScheduleTimeout -> a timer task on trio's clock that sends the Timeout back to the owner;
* RequestProposal -> reap the mempool and build a block on the head (time from the wall
  clock, always after the previous block's) with pending evidence, answer ProposedValue.
  A block holds at most as many txs as this node applies in APPLY_BUDGET_S (measured on
  its recent blocks), so a backlog never yields a block whose application outlasts the
  round timeouts (a stall that would grow the backlog further);
* Decide -> apply the block and commit it with its commit certificate to the store (one
  transaction, in a worker thread), update the mempool, tell the node;
* Evidence -> keep it for the next block we propose (the state machine slashes), gossip it.

Starting the next height: after a decision the driver starts height h+1 at once when txs or
includable evidence are waiting or a message for h+1 arrives (someone started it), and after
an interval otherwise, so an idle chain makes one empty block per interval instead of
spinning: `empty_block_interval` while the state waits on future heights (job and dispute
timers, unbonding, a scheduled validator set: deadlines counted in blocks), the longer
`idle_block_interval` when nothing does (each empty block costs every peer of the mesh a
proposal and 2 votes per validator). Every node follows the same rule on the same state, so
no propose timeout runs while a proposer holds back. However busy the chain, a height starts
no sooner than `min_block_interval` after the previous decision of a block with txs
(Tendermint's timeout_commit): windows the state counts in blocks (bids, challenges, disputes)
then last a predictable minimum of wall time, and the txs that arrive meanwhile fill one bigger
block. After an empty block a tx starts the next height at once: there is nothing to batch,
and the empty block came at least an empty-block interval after the one before it.

Blocks built or assembled here are kept by value id for the height in progress, so checking
and committing a proposed block does not decode it again.

The consensus validator set of each height, proposer priorities included, comes from
`ledger.proposers.ProposerSchedule`.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
import trio

from gossip.envelope import packb, unpackb
from gossip.errors import GossipError
from gossip.identity import Identity
from gossip.node import GossipNode
from gossip.topics import TOPIC_CONSENSUS
from gossip.transport import MAX_GOSSIP_BYTES, PeerId, Verdict
from ledger.apply import Receipt
from ledger.block import (
    HASH_BYTES,
    MAX_BLOCK_TX_BYTES,
    MAX_BLOCK_TXS,
    Block,
    apply_decided_block,
    build_block,
    decode_evidence,
    validate_block_shape,
)
from ledger.blocksync import SyncRejected, encode_commit, verify_synced
from ledger.compact import CompactProposal, RecentTxs
from ledger.consensus import (
    Broadcast,
    Commit,
    ConsensusError,
    Core,
    Decide,
    DuplicateVoteEvidence,
    Effect,
    Evidence,
    IgnoredMessage,
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
    Vote,
)
from ledger.errors import CorruptStore, LedgerError
from ledger.inbound import body_of, check_evidence, evidence_includable
from ledger.mempool import Mempool
from ledger.metrics import LedgerMetrics
from ledger.proposers import ProposerSchedule
from ledger.state import State
from ledger.store import LedgerStore
from ledger.tx import SignedTx, decode_tx

log = structlog.get_logger(__name__)

# A compact proposal (header, evidence, tx hashes) travels in one envelope. Kept within yamux's
# initial 256 KiB stream window: py-libp2p mishandles big messages under load
# (notes/libp2p-measurements.md).
MAX_PROPOSAL_BYTES = min(MAX_GOSSIP_BYTES, 256 * 1024) - 16 * 1024
_HASH_COST = HASH_BYTES + 3  # one tx hash in a compact proposal, msgpack framing included
MAX_EVIDENCE_PER_BLOCK = 8
MAX_PENDING_EVIDENCE = 256
MAX_CLOCK_SKEW_MS = 10_000  # a proposed block may be this far ahead of our wall clock
_BLOCK_OVERHEAD = 2048  # header and msgpack framing of a block, besides its txs' bytes
APPLY_BUDGET_S = 0.5  # seconds of apply-and-store a proposed block may cost here
MIN_BLOCK_TXS = 200  # the apply budget never cuts a block below this
FIRST_BLOCK_TXS = 1000  # until this node has measured its apply rate
_RATE_SAMPLE_TXS = 100  # blocks this large update the measured apply rate


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Head:
    """The chain as this node has committed it: the state after the last block, its hashes."""

    state: State
    app_hash: bytes
    block_hash: bytes
    decided_at: float | None = None  # trio time, when decided live here (None: synced or loaded)


@dataclass(frozen=True, slots=True)
class HeightDue:
    """Event: the empty-block interval before `height` has passed."""

    height: int


def awaits_heights(state: State) -> bool:
    """Does anything in the state fall due at a future height (so empty blocks should come often)?"""
    return bool(state.job_timers or state.game_timers or state.unbonding or state.pending_sets)


def restore_last_signed(store: LedgerStore) -> LastSigned | None:
    """The double-sign guard saved by a previous run (with its lock). Raises CorruptStore."""
    key = store.last_signed()
    if key is None:
        return None
    data = store.last_signed_data()
    try:
        record = LastSigned.from_wire(unpackb(data)) if data else LastSigned(key[0], key[1], Step(key[2]))
    except (GossipError, ConsensusError, ValueError, TypeError) as e:
        raise CorruptStore(f"last signed record {key} does not decode: {e}") from e
    if record.key != key:
        raise CorruptStore(f"last signed record {record.key} does not match its key {key}")
    return record


class ConsensusDriver:
    """Core + effects + the head of the chain, for one ledger node. See the module docstring.

    Args:
        on_commit: (block, tx hashes, receipts) after each block is durably committed.
        hint_sync: (peer, height): peer sent a message for height; block sync checks we have height - 1.
        clock_ms: the wall clock used for block times (injectable to test skew).
        decode: decodes tx bytes (the node's caching decoder: each tx is decoded once).
    """

    def __init__(
        self,
        *,
        identity: Identity,
        gossip: GossipNode,
        store: LedgerStore,
        mempool: Mempool,
        head: Head,
        metrics: LedgerMetrics,
        timeouts: TimeoutConfig | None,
        empty_block_interval: float,
        max_block_txs: int,
        idle_block_interval: float | None = None,
        min_block_interval: float = 0.0,
        on_commit: Callable[[Block, list[bytes], list[Receipt]], None],
        hint_sync: Callable[[PeerId | None, int], None],
        clock_ms: Callable[[], int] = wall_clock_ms,
        decode: Callable[[bytes], SignedTx] = decode_tx,
    ) -> None:
        if not 1 <= max_block_txs <= MAX_BLOCK_TXS:
            raise ValueError(f"max_block_txs must be in [1, {MAX_BLOCK_TXS}], got {max_block_txs}")
        self.gossip, self.store, self.mempool, self.head, self.metrics = gossip, store, mempool, head, metrics
        self.address = identity.peer_id
        self.empty_block_interval, self.max_block_txs = empty_block_interval, max_block_txs
        idle = idle_block_interval
        self.idle_block_interval = empty_block_interval if idle is None else idle
        self.min_block_interval = min_block_interval
        self._on_commit, self._hint_sync, self._clock_ms = on_commit, hint_sync, clock_ms
        self._decode = decode
        self.core = Core(
            chain_id=head.state.chain_id,
            address=identity.peer_id,
            sign=identity.sign,
            validate_value=self.validate_value,
            timeouts=timeouts,
            last_signed=restore_last_signed(store),
        )
        self.schedule = ProposerSchedule()
        self.recent_txs = RecentTxs()  # txs of recent blocks, served to peers assembling a proposal
        self._blocks: dict[bytes, Block] = {}  # blocks of the height in progress, by value id
        self.evidence: dict[bytes, DuplicateVoteEvidence] = {}
        self.joined = False  # initial block sync is over; consensus may run
        self.syncing = False  # block sync is delivering a run of blocks: do not start heights
        self._due: float | None = None  # when the next height starts even with nothing to do
        self._earliest = 0.0  # when the next height may start at all (min_block_interval)
        self._apply_rate: float | None = None  # txs per second of apply-and-store here (EWMA)
        self._timers_for: set[tuple[int, str]] = set()  # (height, "earliest" | "due") scheduled
        self._last_round: tuple[int, int] | None = None
        self._nursery: trio.Nursery | None = None
        self._events: trio.MemorySendChannel[object] | None = None

    def bind(self, nursery: trio.Nursery, events: trio.MemorySendChannel[object]) -> None:
        """Where timer tasks run, and the owner's inbox they report to."""
        self._nursery, self._events = nursery, events

    # -- events from the owner task ---------------------------------------------------------

    async def join(self) -> None:
        self.joined = True
        await self.maybe_start(force=True)

    async def on_message(self, msg: Proposal | Vote, author: PeerId) -> None:
        """A proposal or vote that passed gossip validation."""
        next_height = self.head.state.height + 1
        if msg.height == next_height:
            await self.maybe_start(force=True)  # someone started it: no reason to hold back
        elif msg.height > next_height:
            self._hint_sync(author, msg.height)  # we missed at least one decision
        try:
            effects = self.core.handle(msg)
        except RejectedMessage as e:
            self.gossip.penalize(author, f"consensus message rejected: {e}")
            return
        except IgnoredMessage:
            return
        await self._execute(effects)

    def block_of(self, value_id: bytes) -> Block | None:
        """A block of the height in progress that we built or assembled, by its hash."""
        return self._blocks.get(value_id)

    async def on_assembled(self, proposal: Proposal, block: Block, author: PeerId) -> None:
        """A compact proposal rebuilt into its full block (ledger.compact)."""
        if block.height == self.head.state.height + 1:
            self._blocks[block.hash] = block
        await self.on_message(proposal, author)

    async def on_timeout(self, timeout: Timeout) -> None:
        effects = self.core.on_timeout(timeout)
        if effects:  # it was current (stale timeouts do nothing)
            self.metrics.timeouts.labels(timeout.kind.name.lower()).inc()
        await self._execute(effects)

    async def on_height_due(self, due: HeightDue) -> None:
        if due.height == self.head.state.height + 1:
            await self.maybe_start()

    async def add_evidence(self, evidence: DuplicateVoteEvidence, *, publish: bool) -> None:
        """Keep a verified double sign for our next proposal (and gossip it if it is news here)."""
        eid = evidence.evidence_id()
        state = self.head.state
        if eid in self.evidence or len(self.evidence) >= MAX_PENDING_EVIDENCE:
            return
        if (evidence.validator, evidence.height) in state.tombstones:
            return
        self.evidence[eid] = evidence
        self.metrics.evidence.inc()
        log.warning("double sign seen", validator=evidence.validator, height=evidence.height)
        if publish:
            await self._publish(evidence)
        await self.maybe_start()

    async def on_synced(
        self, peer: PeerId, height: int, block_bytes: bytes, commit: bytes, more: bool
    ) -> bool:
        """A block fetched by block sync: verify, apply, commit. False (peer penalised) if bad."""
        head = self.head
        if height <= head.state.height:
            return True
        if height != head.state.height + 1:
            return False
        try:
            block, cert, txs = verify_synced(
                head.state, head.block_hash, head.app_hash, height, block_bytes, commit
            )
        except SyncRejected as e:
            log.warning("rejected a synced block", peer=peer, height=height, reason=str(e))
            self.gossip.penalize(peer, str(e))
            return False
        self.syncing = more
        await self._commit(block, cert, txs, live=False)
        self.metrics.blocks_synced.inc()
        if not more:
            await self.maybe_start()
        return True

    async def on_sync_done(self) -> None:
        self.syncing = False
        await self.maybe_start()

    async def maybe_start(self, *, force: bool = False) -> None:
        """Start the next height if it is time (see the module docstring)."""
        height = self.head.state.height + 1
        if not self.joined or self.syncing or (self.core.running and self.core.height >= height):
            return
        now = trio.current_time()
        if not force and now < self._earliest:
            self._wake(height, "earliest", self._earliest - now)
        elif force or self._due is None or now >= self._due or len(self.mempool) or self._includable(height):
            await self._execute(self.core.start_height(height, self.schedule.at(self.head.state, height)))
        else:
            self._wake(height, "due", self._due - now)

    def _wake(self, height: int, why: str, delay: float) -> None:
        """One HeightDue timer per (height, reason): maybe_start runs again then."""
        if (height, why) not in self._timers_for:
            self._timers_for.add((height, why))
            self._timer(delay, HeightDue(height))

    # -- the value check the core calls -------------------------------------------------------

    def validate_value(self, height: int, value: bytes) -> bool:
        """Is `value` a block that may follow our head? Never raises."""
        head = self.head
        if height != head.state.height + 1:
            return False
        try:
            block = self._blocks.get(hashlib.sha256(value).digest()) or Block.decode(value)
            validate_block_shape(
                block,
                head.state,
                head.block_hash,
                state_app_hash=head.app_hash,
                now_ms=self._clock_ms(),
                max_future_ms=MAX_CLOCK_SKEW_MS,
                decode=self._decode,
            )
            for item in block.evidence:
                if check_evidence(decode_evidence(item), head.state).verdict is Verdict.REJECT:
                    return False
        except LedgerError as e:
            log.info("proposed block refused", height=height, reason=str(e))
            return False
        return True

    # -- effects ------------------------------------------------------------------------------

    async def _execute(self, effects: Sequence[Effect]) -> None:
        work = deque(effects)
        while work:
            effect = work.popleft()
            if isinstance(effect, PersistLastSigned):
                record = effect.record
                data = packb(record.to_wire())
                await trio.to_thread.run_sync(
                    self.store.save_last_signed, record.height, record.round, int(record.step), data
                )
            elif isinstance(effect, Broadcast):
                await self._publish(effect.message)
            elif isinstance(effect, ScheduleTimeout):
                self._timer(effect.duration_ms / 1000, Timeout(effect.kind, effect.height, effect.round))
            elif isinstance(effect, RequestProposal):
                work.extendleft(reversed(self._propose(effect)))
            elif isinstance(effect, Decide):
                await self._decided(effect)
            elif isinstance(effect, Evidence):
                await self.add_evidence(effect.evidence, publish=True)
        self._count_round()

    def _count_round(self) -> None:
        if self.core.running:
            now = (self.core.height, self.core.round)
            if now != self._last_round:
                self._last_round = now
                self.metrics.rounds.inc()

    async def _publish(self, msg: Proposal | Vote | DuplicateVoteEvidence) -> None:
        if isinstance(msg, Proposal):
            try:
                block = self._blocks.get(msg.value_id) or Block.decode(msg.value)
            except LedgerError as e:  # a broken invariant: we only sign blocks we built or checked
                raise AssertionError(f"we proposed a value that is not a block: {e}") from e
            kind, body = body_of(CompactProposal.of(msg, block))
        else:
            kind, body = body_of(msg)
        try:
            await self.gossip.publish(TOPIC_CONSENSUS, kind, body)
        except GossipError as e:  # e.g. a re-broadcast for a height we have since committed
            log.debug("consensus publish failed", kind=kind, error=str(e))

    def _timer(self, delay: float, event: object) -> None:
        assert self._nursery is not None and self._events is not None, "bind() first"
        self._nursery.start_soon(self._fire, max(0.0, delay), event, self._events)

    @staticmethod
    async def _fire(delay: float, event: object, events: trio.MemorySendChannel[object]) -> None:
        await trio.sleep(delay)
        try:
            await events.send(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the node is stopping

    def _includable(self, height: int) -> list[DuplicateVoteEvidence]:
        state = self.head.state
        return [ev for _, ev in sorted(self.evidence.items()) if evidence_includable(ev, state, height)]

    def _propose(self, request: RequestProposal) -> list[Effect]:
        head = self.head
        if request.height != head.state.height + 1:
            return []
        evidence = self._includable(request.height)[:MAX_EVIDENCE_PER_BLOCK]
        evidence_bytes = sum(len(packb(ev.to_wire())) + 8 for ev in evidence)
        # The compact proposal (header, evidence, 35 bytes per tx) must fit one gossip message.
        count = min(self.max_block_txs, (MAX_PROPOSAL_BYTES - _BLOCK_OVERHEAD - evidence_bytes) // _HASH_COST)
        rate = self._apply_rate
        budget = FIRST_BLOCK_TXS if rate is None else max(MIN_BLOCK_TXS, int(rate * APPLY_BUDGET_S))
        count = min(count, budget)
        txs = self.mempool.reap(count, MAX_BLOCK_TX_BYTES - evidence_bytes)
        block = self._build(head, txs, evidence)
        self._blocks[block.hash] = block
        log.debug(
            "proposing", height=request.height, round=request.round, txs=len(txs), evidence=len(evidence)
        )
        return self.core.on_proposed_value(ProposedValue(request.height, request.round, block.encoded))

    def _build(self, head: Head, txs: list[bytes], evidence: list[DuplicateVoteEvidence]) -> Block:
        return build_block(
            head.state,
            head.block_hash,
            self.address,
            self._clock_ms(),
            txs,
            evidence,
            state_app_hash=head.app_hash,
        )

    async def _decided(self, decide: Decide) -> None:
        if decide.height <= self.head.state.height:
            return  # block sync committed it while the core was still deciding
        block = self._blocks.get(hashlib.sha256(decide.value).digest()) or Block.decode(decide.value)
        try:  # decoded already when the block was checked: these are cache hits
            txs: list[SignedTx] | None = [self._decode(raw) for raw in block.txs]
        except LedgerError:
            txs = None  # then apply reports what is wrong with each tx in its receipt
        await self._commit(block, decide.commit, txs, live=True)
        await self.maybe_start()

    async def _commit(self, block: Block, commit: Commit, txs: list[SignedTx] | None, *, live: bool) -> None:
        """Apply and durably store a decided block, then move the head and the mempool on."""
        head = self.head
        hashes = [t.hash for t in txs] if txs is not None else [hashlib.sha256(t).digest() for t in block.txs]
        known = self.mempool.verified
        verified = frozenset(h for h in hashes if h in known)
        commit_bytes = encode_commit(commit)

        def apply_and_store() -> tuple[State, list[Receipt], bytes]:
            state, receipts, app = apply_decided_block(head.state, block, verified=verified, txs=txs)
            self.store.commit_block(block.encoded, commit_bytes, state, receipts, state_app_hash=app)
            return state, receipts, app

        started = trio.current_time()
        state, receipts, app = await trio.to_thread.run_sync(apply_and_store)
        now = trio.current_time()
        if len(hashes) >= _RATE_SAMPLE_TXS:
            rate = len(hashes) / max(now - started, 1e-3)
            self._apply_rate = rate if self._apply_rate is None else 0.7 * self._apply_rate + 0.3 * rate
        if live and head.decided_at is not None:
            self.metrics.block_interval.observe(now - head.decided_at)
        self.head = Head(state, app, block.hash, now if live else None)
        self._blocks.clear()
        self.recent_txs.add(hashes, block.txs)
        self._due = now + (self.empty_block_interval if awaits_heights(state) else self.idle_block_interval)
        # Only a block with txs holds the next one back: after an empty block there is nothing
        # to batch, and the empty one itself came an empty-block interval after its predecessor.
        self._earliest = now + self.min_block_interval if live and hashes else now
        self._timers_for.clear()
        self.mempool.update(hashes, state)
        self._prune_evidence()
        self.metrics.height.set(state.height)
        self.metrics.txs_committed.inc(len(hashes))
        self._on_commit(block, hashes, receipts)

    def _prune_evidence(self) -> None:
        state = self.head.state
        oldest = state.height + 1 - state.params.evidence_max_age_blocks
        for eid, ev in list(self.evidence.items()):
            if (
                ev.validator not in state.validators
                or (ev.validator, ev.height) in state.tombstones
                or ev.height < oldest
            ):
                del self.evidence[eid]
