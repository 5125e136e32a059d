"""LedgerNode: the replicated ledger of one peer, running over its GossipNode.

One owner task holds every piece of mutable ledger state — the head of the chain (state,
hashes), the mempool, the consensus core, the evidence pool, commit waiters — and handles
one event at a time from its inbox: gossiped txs and consensus messages, fired timeouts,
submissions, blocks fetched by block sync. Other tasks only send it events and read the
head (an immutable value the owner replaces). Network I/O never runs in the owner except
publishing; SQLite writes and block application run in a worker thread while it waits.

Lifecycle (`serve`): load the state from the store (genesis when empty; the store replays
from its last snapshot), restore the double-sign guard into the core, report started, run
one block-sync round against the connected peers, then join consensus. From then on block
sync runs on hints (messages for heights above ours) and on a slow random poll, so a peer
that was stopped, frozen or partitioned catches up by itself. A LedgerNode serves once.

Gossip: TOPIC_TX carries txs (in batches, ledger.txgossip) and TOPIC_CONSENSUS proposals,
votes and evidence; `ledger.inbound` validates both before anything is forwarded. Proposals
travel compact (ledger.compact): the owner rebuilds each from its mempool and recent blocks,
and when txs are missing a fetch task asks the proposer (then other peers) for them over
TXS_PROTOCOL and hands the answer back to the owner (`Fetched`); a proposal that cannot be
rebuilt never reaches the core. At most MAX_FETCHES fetches run at once. Block
sync and the queries (`block`, `block_info`, `tx_location`) read committed data through a
second connection to the store's file that is only ever read, so they never touch the
writer the owner uses.

Error handling: hostile input is refused by the validators or the core and its sender is
penalised; `submit` raises the mempool's typed LedgerError; `wait_committed` raises
trio.TooSlowError on timeout. A store that refuses a decided block is a broken invariant
and stops the node.
"""

from __future__ import annotations

import cProfile
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
import trio
from prometheus_client import CollectorRegistry

from gossip.envelope import Envelope
from gossip.identity import Identity
from gossip.node import GossipNode
from gossip.topics import TOPIC_CONSENSUS, TOPIC_TX
from gossip.transport import PeerId, Verdict
from ledger.apply import Receipt
from ledger.block import ZERO_HASH, Block
from ledger.blocksync import BLOCKS_PROTOCOL, MAX_REQUEST_BYTES, BlockServer, BlockSync, decode_commit
from ledger.compact import (
    FETCH_PEERS,
    MAX_FETCH_REQUEST,
    TXS_PROTOCOL,
    AssemblyFailed,
    CompactProposal,
    TxServer,
    fetch_txs,
)
from ledger.consensus import ConsensusError, DuplicateVoteEvidence, Proposal, Timeout, TimeoutConfig
from ledger.driver import ConsensusDriver, Head, HeightDue, wall_clock_ms
from ledger.errors import CorruptStore, LedgerError
from ledger.genesis import Genesis, genesis_state
from ledger.inbound import (
    SignatureCache,
    check_consensus_envelope,
    check_tx_envelope,
    parse_consensus,
    txs_of,
)
from ledger.inbox import Fetched, Gossiped, Join, Placed, Submit, SubmitBatch, SyncDone, Synced, Watch, answer
from ledger.mempool import Mempool
from ledger.metrics import LedgerMetrics
from ledger.state import State, app_hash, validator_set_at
from ledger.store import LedgerStore
from ledger.txcache import DecodedTxs
from ledger.txgossip import TxBatcher

SUBMIT_CHUNK = 256  # txs admitted per owner step by submit_many (~25 ms of signature checks)
log = structlog.get_logger(__name__)

INBOX_SIZE = 1024
RECENT_TXS = 20_000  # placements of recently committed txs kept in memory for wait_committed
_PEER_POLL = 0.05
SLOW_EVENT_S = 1.0
IDLE_FACTOR = 4  # empty blocks of a chain with nothing due come this much more slowly
MIN_BLOCK_INTERVAL = 0.5  # seconds: a busy chain still makes block-counted windows last (timeout_commit)
MAX_FETCHES = 4  # compact proposals whose missing txs are being fetched at once
PROFILE_ENV = "HIVEMESH_LEDGER_PROFILE"  # a directory: cProfile the event loop thread into it


@contextmanager
def _profiled(address: str) -> Iterator[None]:
    """With PROFILE_ENV set, profile this thread while the node serves (a benchmark aid)."""
    where = os.environ.get(PROFILE_ENV)
    if not where:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        Path(where).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(Path(where) / f"ledger-{address}.prof"))


class LedgerNode:
    """The ledger of one peer. Build it before the gossip node serves (it subscribes topics).

    Args:
        gossip: the peer's GossipNode, not yet serving.
        identity: the peer's key; it signs consensus messages when it is a validator.
        store: the peer's block store (file-backed); the node is its only writer.
        genesis: the chain's genesis (used when the store is empty, and to check its chain id).
        registry: where metrics go (a private one if None).
        timeouts: consensus round timeouts.
        max_block_txs: most txs in a block we propose.
        empty_block_interval: seconds an idle chain waits before an empty block while the state
            waits on future heights (job or dispute timers, unbonding, a new validator set).
        idle_block_interval: the same when nothing does (default IDLE_FACTOR x the above).
        min_block_interval: seconds from one decision to the next height's start, however many
            txs wait (driver.py): block-counted windows last at least this long per block.
        sync_interval: seconds between block-sync polls of random peers.
        peer_wait: at start, how long to wait for a first connected peer to sync from before
            joining consensus alone (a lone validator, or a peer whose bootstrap is down).
        clock_ms: wall clock for block times (tests inject skew).
    """

    def __init__(
        self,
        gossip: GossipNode,
        identity: Identity,
        store: LedgerStore,
        genesis: Genesis,
        *,
        registry: CollectorRegistry | None = None,
        timeouts: TimeoutConfig | None = None,
        max_block_txs: int = 5000,
        empty_block_interval: float = 1.0,
        idle_block_interval: float | None = None,
        min_block_interval: float = MIN_BLOCK_INTERVAL,
        sync_interval: float = 2.0,
        peer_wait: float = 2.0,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        if gossip.peer_id != identity.peer_id:
            raise ValueError(f"gossip node is {gossip.peer_id} but identity is {identity.peer_id}")
        self.gossip, self.identity, self.store, self.genesis = gossip, identity, store, genesis
        self.address = identity.peer_id
        self.decoded = DecodedTxs()  # every tx is decoded once here (gossip, mempool, blocks)
        self.mempool = Mempool(decode=self.decoded.decode)
        self.metrics = LedgerMetrics(
            registry if registry is not None else CollectorRegistry(), self._mempool_size
        )
        idle = IDLE_FACTOR * empty_block_interval if idle_block_interval is None else idle_block_interval
        self._config = (timeouts, max_block_txs, empty_block_interval, idle, min_block_interval, clock_ms)
        self._peer_wait = peer_wait
        genesis_head = genesis_state(genesis)
        self._head0 = Head(genesis_head, app_hash(genesis_head), ZERO_HASH)
        self.driver: ConsensusDriver | None = None
        self._ready = False
        self._served = False
        self._waiters: dict[bytes, list[trio.MemorySendChannel[Placed]]] = {}
        self._recent: OrderedDict[bytes, Placed] = OrderedDict()
        self._signatures = SignatureCache()
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[object](INBOX_SIZE)
        self._tx_channel = gossip.subscribe(TOPIC_TX, self._validate_tx)
        self._consensus_channel = gossip.subscribe(TOPIC_CONSENSUS, self._validate_consensus)
        self._reader: LedgerStore | None = LedgerStore(store.path)
        self._server = BlockServer(self._reader, self._tip, gossip.penalize, gossip.scores.is_banned)
        gossip.rpc.set_handler(BLOCKS_PROTOCOL, self._server.handle, max_request=MAX_REQUEST_BYTES)
        self._tx_server = TxServer(self._lookup_tx, gossip.penalize)
        gossip.rpc.set_handler(TXS_PROTOCOL, self._tx_server.handle, max_request=MAX_FETCH_REQUEST)
        self._fetching: dict[str, bytes] = {}  # proposer -> value id of its proposal being fetched
        self._nursery: trio.Nursery | None = None
        self._batcher = TxBatcher(gossip)
        self.sync = BlockSync(
            gossip,
            height=lambda: self.height,
            deliver=self._deliver,
            done=self._sync_done,
            poll_interval=sync_interval,
        )

    # -- public API -------------------------------------------------------------------------

    @property
    def head(self) -> Head:
        return self.driver.head if self.driver is not None else self._head0

    @property
    def state(self) -> State:
        """The state after the last committed block (genesis before `serve` has loaded it)."""
        return self.head.state

    @property
    def height(self) -> int:
        return self.head.state.height

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the ledger until cancelled; `started()` once the state is loaded."""
        if self._served:
            raise RuntimeError("a LedgerNode serves once; build a new one to restart")
        self._served = True
        with _profiled(self.address):
            await self._serve(task_status)

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        try:
            self.driver = await self._load()
            async with trio.open_nursery() as nursery:
                self.driver.bind(nursery, self._inbox_send)
                self._nursery = nursery
                nursery.start_soon(self._owner)
                nursery.start_soon(self._pump, TOPIC_TX, self._tx_channel)
                nursery.start_soon(self._pump, TOPIC_CONSENSUS, self._consensus_channel)
                nursery.start_soon(self._batcher.run)
                self._ready = True
                task_status.started()
                with trio.move_on_after(self._peer_wait):
                    while not self.gossip.transport.connected_peers():
                        await trio.sleep(_PEER_POLL)
                await self.sync.sync_round()  # catch up before we sign anything
                await self._inbox_send.send(Join())
                nursery.start_soon(self.sync.run)
        finally:
            self._ready = False
            if self._reader is not None:
                self._reader.close(snapshot=False)
                self._reader = None

    async def submit(self, tx: bytes) -> str:
        """Admit tx to our mempool and queue it for gossip (batched); returns its hash (hex).

        Raises:
            LedgerError: the mempool refused it (InvalidTx, DuplicateTx, BadNonce, ...).
            RuntimeError: the node is not serving.
        """
        self._check_serving()
        reply_send, reply_recv = trio.open_memory_channel[bytes | LedgerError](1)
        await self._inbox_send.send(Submit(bytes(tx), reply_send))
        result = await reply_recv.receive()
        if isinstance(result, LedgerError):
            raise result
        await self._batcher.add(bytes(tx))
        return result.hex()

    async def submit_many(self, txs: list[bytes]) -> list[str | LedgerError]:
        """Admit a batch in one owner step (one round trip, not one per tx); per tx its hash
        (hex) or the mempool's LedgerError, in order. Admitted txs are queued for gossip."""
        self._check_serving()
        results: list[bytes | LedgerError] = []
        for i in range(0, len(txs), SUBMIT_CHUNK):  # bounded owner steps: consensus is not held up
            reply_send, reply_recv = trio.open_memory_channel[list[bytes | LedgerError]](1)
            chunk = tuple(bytes(tx) for tx in txs[i : i + SUBMIT_CHUNK])
            await self._inbox_send.send(SubmitBatch(chunk, reply_send))
            results += await reply_recv.receive()
        out: list[str | LedgerError] = []
        for tx, result in zip(txs, results, strict=True):
            if isinstance(result, LedgerError):
                out.append(result)
            else:
                await self._batcher.add(bytes(tx))
                out.append(result.hex())
        return out

    async def wait_committed(self, tx_hash: str, timeout: float) -> tuple[int, int, Receipt]:
        """(height, index, receipt) of the block that carried tx_hash, waiting up to timeout seconds.

        Raises:
            ValueError: tx_hash is not 64 hex characters.
            trio.TooSlowError: not committed within timeout.
        """
        digest = bytes.fromhex(tx_hash)
        if len(digest) != 32:
            raise ValueError(f"tx hash must be 32 bytes of hex, got {len(digest)} bytes")
        self._check_serving()
        reply_send, reply_recv = trio.open_memory_channel[Placed](1)
        placed: Placed | None = None
        with trio.fail_after(timeout):
            await self._inbox_send.send(Watch(digest, reply_send))
            try:
                placed = await reply_recv.receive()
            finally:
                reply_recv.close()
                if placed is None:  # gave up: let the owner forget the waiter
                    try:
                        self._inbox_send.send_nowait(Watch(digest, reply_send, stop=True))
                    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # then it is dropped when the tx commits (its channel is closed)
        return placed

    def status(self) -> dict[str, Any]:
        head = self.head
        state = head.state
        rows = validator_set_at(state, state.height + 1)
        driver = self.driver
        return {
            "height": state.height,
            "app_hash": head.app_hash.hex(),
            "block_hash": head.block_hash.hex(),
            "time_ms": state.time_ms,
            "is_validator": any(v.address == self.address for v in rows),
            "validators": [{"address": v.address, "power": v.power} for v in rows],
            "mempool": len(self.mempool),
            "syncing": driver is None or not driver.joined or driver.syncing or self.sync.active,
            "round": driver.core.round if driver is not None and driver.core.running else 0,
            "evidence_pending": len(driver.evidence) if driver is not None else 0,
        }

    def block(self, height: int) -> tuple[bytes, bytes] | None:
        """(block bytes, commit bytes) of a committed block, or None if this peer does not hold it."""
        return None if self._reader is None else self._reader.block(height)

    def tx_location(self, tx_hash: bytes) -> tuple[int, int, Receipt] | None:
        """(height, index, receipt) of a committed tx, or None."""
        return None if self._reader is None else self._reader.tx_location(tx_hash)

    def block_info(self, height: int) -> dict[str, Any] | None:
        """Summary of a committed block, or None if this peer does not hold it."""
        stored = self.block(height)
        if stored is None:
            return None
        try:
            block, commit = Block.decode(stored[0]), decode_commit(stored[1])
        except LedgerError as e:
            raise CorruptStore(f"stored block {height} does not decode: {e}") from e
        return {
            "height": block.height,
            "hash": block.hash.hex(),
            "time_ms": block.time_ms,
            "proposer": block.proposer,
            "prev_hash": block.prev_hash.hex(),
            "last_app_hash": block.last_app_hash.hex(),
            "txs": len(block.txs),
            "evidence": len(block.evidence),
            "commit_round": commit.round,
            "signers": [s.validator for s in commit.signatures],
        }

    # -- start-up -----------------------------------------------------------------------------

    async def _load(self) -> ConsensusDriver:
        state = await trio.to_thread.run_sync(self.store.load_state)
        tip = self.store.tip()
        if state is None or tip is None:
            head = self._head0
        elif state.chain_id != self.genesis.chain_id:
            raise CorruptStore(f"store holds chain {state.chain_id!r}, genesis is {self.genesis.chain_id!r}")
        else:
            head = Head(state, tip.app_hash, tip.block_hash)
        self.mempool.update((), head.state)
        timeouts, max_block_txs, empty_interval, idle_interval, min_interval, clock_ms = self._config
        log.info("ledger loaded", height=head.state.height, address=self.address)
        driver = ConsensusDriver(
            identity=self.identity,
            gossip=self.gossip,
            store=self.store,
            mempool=self.mempool,
            head=head,
            metrics=self.metrics,
            timeouts=timeouts,
            empty_block_interval=empty_interval,
            idle_block_interval=idle_interval,
            min_block_interval=min_interval,
            max_block_txs=max_block_txs,
            on_commit=self._committed,
            hint_sync=self.sync.hint,
            clock_ms=clock_ms,
            decode=self.decoded.decode,
        )
        # Deriving proposer priorities after a restart walks the rotation: keep it off the loop.
        await trio.to_thread.run_sync(driver.schedule.at, head.state, head.state.height + 1)
        return driver

    # -- the owner task -----------------------------------------------------------------------

    async def _owner(self) -> None:
        driver = self.driver
        assert driver is not None
        async for event in self._inbox_recv:
            started = trio.current_time()
            await self._handle(driver, event)
            took = trio.current_time() - started
            if took > SLOW_EVENT_S:  # the owner serialises everything: a slow event stalls all
                log.warning("slow ledger event", kind=type(event).__name__, seconds=round(took, 3))

    async def _handle(self, driver: ConsensusDriver, event: object) -> None:
        match event:
            case Gossiped(topic=topic, envelope=envelope):
                await self._on_gossip(driver, topic, envelope)
            case Timeout():
                await driver.on_timeout(event)
            case HeightDue():
                await driver.on_height_due(event)
            case Submit(tx=tx, reply=reply):
                try:
                    answer(reply, self.mempool.add(tx, driver.head.state))
                except LedgerError as e:
                    answer(reply, e)
                await driver.maybe_start()
            case SubmitBatch(txs=txs, reply=reply):
                results: list[bytes | LedgerError] = []
                for tx in txs:
                    try:
                        results.append(self.mempool.add(tx, driver.head.state))
                    except LedgerError as e:
                        results.append(e)
                answer(reply, results)
                await driver.maybe_start()
            case Watch():
                self._on_watch(event)
            case Synced():
                ok = await driver.on_synced(event.peer, event.height, event.block, event.commit, event.more)
                answer(event.reply, ok)
            case SyncDone():
                await driver.on_sync_done()
            case Fetched():
                await self._on_fetched(driver, event)
            case Join():
                await driver.join()

    async def _on_gossip(self, driver: ConsensusDriver, topic: str, envelope: Envelope) -> None:
        if topic == TOPIC_TX:
            admitted = 0
            for raw in txs_of(envelope):  # validated already: well-formed and signed
                try:
                    self.mempool.add(raw, driver.head.state)
                    admitted += 1
                except LedgerError as e:
                    # e.g. a nonce ahead of what we hold: keep it to assemble proposals with
                    driver.recent_txs.add([hashlib.sha256(raw).digest()], [raw])
                    log.debug("gossiped tx not admitted", reason=str(e))
            if admitted:
                await driver.maybe_start()
            return
        try:
            msg = parse_consensus(envelope)
        except (ConsensusError, TypeError, ValueError):
            return  # validated already; nothing else gets here
        if isinstance(msg, DuplicateVoteEvidence):
            await driver.add_evidence(msg, publish=False)
        elif isinstance(msg, CompactProposal):
            await self._on_compact(driver, msg, envelope.author_id)
        else:
            if isinstance(msg, Proposal):
                self.metrics.proposals.labels("full").inc()
            await driver.on_message(msg, envelope.author_id)

    async def _on_compact(self, driver: ConsensusDriver, compact: CompactProposal, author: PeerId) -> None:
        if compact.height <= driver.head.state.height:
            return
        held = driver.block_of(compact.value_id)
        if held is not None:  # ours, or a value re-proposed in a later round: nothing to rebuild
            await driver.on_message(compact.with_block(held), author)
            return
        missing = compact.missing(self._lookup_tx)
        if not missing:
            await self._assembled(driver, compact, author, self._lookup_tx, "compact")
            return
        # One fetch per proposer (a byzantine one cannot hold every slot), MAX_FETCHES in all.
        if compact.proposer in self._fetching or len(self._fetching) >= MAX_FETCHES:
            return  # the proposer re-broadcasts it if it is still needed then
        self._fetching[compact.proposer] = compact.value_id
        assert self._nursery is not None
        self._nursery.start_soon(self._fetch, compact, author, missing)

    async def _fetch(self, compact: CompactProposal, author: PeerId, missing: list[bytes]) -> None:
        g = self.gossip
        connected = g.transport.connected_peers()
        first = [p for p in dict.fromkeys([compact.proposer, author]) if p in connected]
        others = [p for p in connected if p not in first and not g.scores.is_banned(p)]
        peers = first + g.random.sample(others, min(len(others), FETCH_PEERS))
        started = trio.current_time()
        try:
            found = await fetch_txs(g, peers, missing)
            log.info(
                "proposal txs fetched",
                height=compact.height,
                round=compact.round,
                missing=len(missing),
                found=len(found),
                seconds=round(trio.current_time() - started, 3),
            )
            await self._inbox_send.send(Fetched(compact, author, found))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the node is stopping
        finally:
            del self._fetching[compact.proposer]

    async def _on_fetched(self, driver: ConsensusDriver, fetched: Fetched) -> None:
        compact, found = fetched.proposal, fetched.txs
        if compact.height <= driver.head.state.height:
            return

        def lookup(tx_hash: bytes) -> bytes | None:
            return found.get(tx_hash) or self._lookup_tx(tx_hash)

        await self._assembled(driver, compact, fetched.author, lookup, "fetched")

    async def _assembled(
        self,
        driver: ConsensusDriver,
        compact: CompactProposal,
        author: PeerId,
        lookup: Callable[[bytes], bytes | None],
        how: str,
    ) -> None:
        try:
            proposal, block = compact.assemble(lookup)
        except AssemblyFailed as e:
            self.metrics.proposals.labels("failed").inc()
            log.warning("compact proposal not assembled", proposer=compact.proposer, reason=str(e))
            return
        self.metrics.proposals.labels(how).inc()
        driver.recent_txs.add(compact.tx_hashes, block.txs)
        await driver.on_assembled(proposal, block, author)

    def _lookup_tx(self, tx_hash: bytes) -> bytes | None:
        """A tx by hash from our mempool or recent blocks (for assembling and serving proposals)."""
        stx = self.mempool.get(tx_hash)
        if stx is not None:
            return stx.encoded
        return self.driver.recent_txs.get(tx_hash) if self.driver is not None else None

    def _on_watch(self, watch: Watch) -> None:
        if watch.stop:
            waiting = self._waiters.get(watch.tx_hash, [])
            if watch.reply in waiting:
                waiting.remove(watch.reply)
            if not waiting:
                self._waiters.pop(watch.tx_hash, None)
            return
        assert self._reader is not None
        placed = self._recent.get(watch.tx_hash) or self._reader.tx_location(watch.tx_hash)
        if placed is not None:
            answer(watch.reply, placed)
        else:
            self._waiters.setdefault(watch.tx_hash, []).append(watch.reply)

    def _committed(self, block: Block, hashes: list[bytes], receipts: list[Receipt]) -> None:
        for index, (tx_hash, receipt) in enumerate(zip(hashes, receipts, strict=True)):
            placed = (block.height, index, receipt)
            self._recent.setdefault(tx_hash, placed)
            for waiter in self._waiters.pop(tx_hash, ()):
                answer(waiter, placed)
        while len(self._recent) > RECENT_TXS:
            self._recent.popitem(last=False)

    # -- feeding the owner ---------------------------------------------------------------------

    async def _pump(self, topic: str, channel: trio.MemoryReceiveChannel[Envelope]) -> None:
        async with channel:
            async for envelope in channel:
                await self._inbox_send.send(Gossiped(topic, envelope))

    async def _deliver(self, peer: PeerId, height: int, block: bytes, commit: bytes, more: bool) -> bool:
        reply_send, reply_recv = trio.open_memory_channel[bool](1)
        await self._inbox_send.send(Synced(peer, height, block, commit, more, reply_send))
        return await reply_recv.receive()

    async def _sync_done(self) -> None:
        await self._inbox_send.send(SyncDone())

    def _validate_tx(self, envelope: Envelope) -> Verdict:
        if not self._ready:
            return Verdict.IGNORE  # offered again by gossip sync once we are up
        checked = check_tx_envelope(envelope, self.head.state, self.mempool, self.decoded.decode)
        if checked.verdict is Verdict.REJECT:
            log.info("rejected a gossiped tx", author=envelope.author_id, reason=checked.reason)
        return checked.verdict

    def _validate_consensus(self, envelope: Envelope) -> Verdict:
        if not self._ready:
            return Verdict.IGNORE
        checked = check_consensus_envelope(envelope, self.head.state, self._signatures)
        if checked.verdict is Verdict.REJECT:
            log.info("rejected a consensus message", author=envelope.author_id, reason=checked.reason)
        elif checked.far_height:
            self.sync.hint(envelope.author_id, checked.far_height)
        return checked.verdict

    def _tip(self) -> tuple[int, bytes]:
        head = self.head
        return head.state.height, head.block_hash

    def _mempool_size(self) -> int:
        return len(self.mempool)

    def _check_serving(self) -> None:
        if not self._ready:
            raise RuntimeError("the ledger node is not serving")
