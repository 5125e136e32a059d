"""The solver agent: bid on announced jobs, run the ones the ledger assigns us, commit and serve results.

One actor task (`run`) owns the solver's bookkeeping (bids in flight, jobs being worked on)
and handles, one at a time: job announcements from the market service, the outcome of its
bid tasks, every newly committed ledger state, and the end of its work tasks. Each work task
owns the `WorkRecord` of its job (the API reads it).

Bidding (`SolverPolicy`): a solver bids only when the agent is enabled, the account holds
the "solver" role (the operator opts in with `hivemesh tx register solver`), fewer than
`max_jobs` assigned jobs are running, and the policy's price fits: price =
ceil(bounty * price_bps / 10_000), at least min_price, at most the bounty and the job's
max_price. The bond is the chain's minimum for that price; the bid carries our X25519
public key. Before bidding we fetch the spec blob and check it is the spec the ledger names;
a submitter briefly unreachable (restarting) is asked again with backoff, at most
SPEC_FETCH_ATTEMPTS times and only while the job is open and its bid window has not closed.

Quotes (quotes.py): a submitter that wants no bid window asks us for a signed quote before it
posts. `quote` decides like bidding (policy, role, price, the spec fetched and checked against
the request, the bond within our balance) and the actor task takes the quote only while the jobs
we run plus our live quotes stay under `max_jobs` (a quote binds us: the job may be awarded
to us without another word), and only for a submitter whose balance covers the bounty and that
holds fewer than MAX_QUOTES_PER_SUBMITTER live quotes of ours (a peer asking for quotes it never
uses would otherwise lock our capacity). A quote lives until its expiry height; the job it wins is worked
on like any job assigned to us.

Work (a job assigned to us, seen in a committed state): fetch the model (checked against its
hash) and, when the job has a private input, get the input the submitter sealed to us (its
gossiped note or, when that does not come, by asking it: inputs.py), open it and check it
against the spec; run it on the Executor (off the event loop) while publishing progress, keeping every
checkpoint state of a training run (and the leaves of an inference trace) in the checkpoint
store (checkpoints.py) until the job is settled and any dispute over it is over; store the result
bundle as a blob; commit {output_hash, trace_root, result_size}; then announce the result
blob until the job is settled. If the job leaves "assigned" before we commit (deadline
missed), the work is cancelled.

Restarts: every job the ledger assigned us is journaled (journal.py,
`<data>/market/solver.json`) with its announcement when its work starts, with the id of its
sealed input blob once fetched (the blob stays in the store; the plaintext is never kept), and
with its result blob once that is stored, before job_commit is sent. Each write adds fields to
the job's record and keeps the others. After a restart the ledger decides: a job still
"assigned" to us (and not past its deadline) is run again with the journaled announcement,
without waiting for the submitter to re-announce it; a job "committed" whose result blob we
journaled is announced again until it settles (the blob itself is served from the store; a
dispute is the defender's, which reloads the job's spec, model and input from the record:
`journaled`). Records are kept while the job is assigned, committed or disputed; those of jobs
that settled, or are no longer ours, are dropped. A training run goes on from the last
checkpoint its interrupted run recorded (checkpoints.py persists the list as it grows; the
result is bitwise that of an uninterrupted run) and its work record says from which step
(`start_step`). A job_commit sent just before the restart may land while the job runs again:
the run then stops and the record shows "committed" (not failed), and the journaled result is
served as above.

`SolverPolicy.behaviour` selects a TEST behaviour (behaviours.py): anything but "honest"
cheats on purpose, to exercise spot checks and disputes on a test net.

Error handling: a failure in one job (a blob no one serves, a bad input, a refused tx) marks
that job's record "failed" and is logged; it never stops the agent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import trio

from compute import worker
from compute.errors import CheckpointError as StateError
from compute.errors import ComputeError
from compute.executor import InferenceResult, Progress
from compute.jobs import InferenceSpec, JobSpec, TrainingSpec
from compute.models import Model
from gossip.blobs import BlobError
from ledger.jobs import jobs_by_status
from ledger.params import BPS
from ledger.payout import min_bond
from ledger.quotes import Quote
from ledger.state import State
from peer.market import wire
from peer.market.behaviours import SolverBehaviour
from peer.market.bundles import Result, inference_bundle, training_bundle
from peer.market.checkpoints import CheckpointStore, prune
from peer.market.errors import MarketError
from peer.market.inputs import InputUnavailable, open_input, request_input
from peer.market.journal import Journal, Record, note_from_json, note_to_json
from peer.market.quotes import QUOTE_BLOCKS, Refused
from peer.market.solving import Solved, solve
from peer.market.writeback import written_in_background

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

INBOX_SIZE = 1024
PROGRESS_INTERVAL_S = 0.5
BID_WAIT_BLOCKS = 3  # how long a lagging ledger may take to show an announced job
SPEC_FETCH_ATTEMPTS = 8  # a submitter restarting within the bid window is asked again...
SPEC_RETRY_FIRST_S = 0.5  # ...after this long, doubling...
SPEC_RETRY_MAX_S = 8.0  # ...up to this
INPUT_ASK_AFTER_S = 2.0  # no input note this long after the work starts: ask the submitter...
INPUT_RETRY_MAX_S = 16.0  # ...and again, waiting twice as long each time, up to this
MAX_QUOTES_PER_SUBMITTER = 2  # live quotes one submitter may hold on us
MAX_RECORDS = 1000  # jobs remembered (bids, work) for the API
JOURNAL_NAME = "solver.json"
LIVE_STATUSES = frozenset({"assigned", "committed", "disputed"})  # a journaled job still matters


@dataclass(frozen=True)
class SolverPolicy:
    """How this peer bids (see the module docstring)."""

    enabled: bool = True
    price_bps: int = 8_000
    min_price: int = 1
    max_jobs: int = 2
    behaviour: str = "honest"  # a TEST behaviour other than "honest" cheats on purpose (behaviours.py)

    def price(self, bounty: int, max_price: int | None) -> int | None:
        """Our price for a job, or None when the job pays less than our floor."""
        cap = bounty if max_price is None else min(bounty, max_price)
        price = min(cap, max(self.min_price, -(-bounty * self.price_bps // BPS)))
        return price if price >= max(1, self.min_price) else None


@dataclass
class WorkRecord:
    """One job this solver bid on or works on; after the bid, only its work task writes it."""

    job_id: str
    phase: str = "bidding"
    price: int = 0
    bond: int = 0
    done: int = 0
    total: int = 0
    start_step: int = 0  # a training run resumed after a restart starts past step 0
    error: str = ""
    result_blob: str = ""
    times: dict[str, float] = field(default_factory=dict)

    def mark(self, phase: str) -> None:
        self.phase = phase
        self.times[phase] = time.time()

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "phase": self.phase,
            "price": self.price,
            "bond": self.bond,
            "progress": {"done": self.done, "total": self.total},
            "start_step": self.start_step,
            "error": self.error,
            "result_blob": self.result_blob,
            "times": dict(self.times),
        }


@dataclass(frozen=True)
class _BidOutcome:
    job_id: str
    price: int = 0
    bond: int = 0
    error: str = ""


@dataclass(frozen=True)
class _Quoting:
    """A quote we are about to sign; the actor replies "" to take it, else why not."""

    note: wire.JobNote
    price: int
    bond: int
    expires: int
    reply: trio.MemorySendChannel[str]


@dataclass(frozen=True)
class _Height:
    state: State


@dataclass(frozen=True)
class _Finished:
    job_id: str


@dataclass(frozen=True)
class _Journaled:
    job_id: str
    fields: Record  # merged into the job's record


@dataclass(frozen=True)
class _Forgotten:
    job_ids: tuple[str, ...]


class Solver:
    """The solver actor of one peer."""

    def __init__(self, market: MarketService, policy: SolverPolicy) -> None:
        self.market = market
        self.policy = policy
        self.behaviour = SolverBehaviour(policy.behaviour)
        self.records: dict[str, WorkRecord] = {}  # job id -> record (bids and work), owned by `run`
        self._working: set[str] = set()
        self._warned_unregistered = False
        self.journal = Journal(market.data_dir / "market" / JOURNAL_NAME)
        self._journaled: dict[str, Record] = {}  # job id -> journal record, owned by `run`
        self._journal_loaded = trio.Event()
        self._forgetting: set[str] = set()
        self._unservable: set[str] = set()  # journaled results that could not be served again
        self._quotes: dict[str, tuple[wire.JobNote, int]] = {}  # job id -> (note, expiry), owned by `run`
        self._send, self._inbox = trio.open_memory_channel[object](INBOX_SIZE)

    def notify(self, note: wire.JobNote) -> None:
        """A job announcement (from the market's inbox task); dropped if the solver is swamped."""
        try:
            self._send.send_nowait(note)
        except trio.WouldBlock:
            log.warning("solver inbox full, dropping a job announcement", job=note.job_id[:16])

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.policy.enabled,
            "registered": self.market.ledger.has_role("solver"),
            "price_bps": self.policy.price_bps,
            "min_price": self.policy.min_price,
            "max_jobs": self.policy.max_jobs,
            "behaviour": self.behaviour.name,
            "working": sorted(self._working),
        }

    async def run(self) -> None:
        self._journaled = await self.market.in_thread(self.journal.load)
        self._journal_loaded.set()
        if self._journaled:
            log.info("solver journal loaded", jobs=len(self._journaled))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_chain)
            async for event in self._inbox:
                match event:
                    case wire.JobNote():
                        self._consider(event, nursery)
                    case _Quoting():
                        event.reply.send_nowait(self._take_quote(event, nursery))
                    case _BidOutcome():
                        self._bid_done(event)
                    case _Height(state=state):
                        self._on_state(state, nursery)
                    case _Finished(job_id=job_id):
                        self._working.discard(job_id)
                    case _Journaled(job_id=job_id, fields=fields):
                        self._journaled[job_id] = {**self._journaled.get(job_id, {}), **fields}
                    case _Forgotten(job_ids=job_ids):
                        for job_id in job_ids:
                            self._journaled.pop(job_id, None)
                            self._forgetting.discard(job_id)

    async def _follow_chain(self) -> None:
        height = 0
        while True:
            state = await self.market.watch.wait_above(height)
            height = state.height
            await self._send.send(_Height(state))

    # ---- bidding ------------------------------------------------------------------------------

    def _consider(self, note: wire.JobNote, nursery: trio.Nursery) -> None:
        me = self.market.ledger.address
        if not self.policy.enabled or note.job_id in self.records or note.submitter == me:
            return
        if not self.market.ledger.has_role("solver"):
            if not self._warned_unregistered:
                log.info(
                    "not bidding: this account is not registered as a solver (hivemesh tx register solver)"
                )
                self._warned_unregistered = True
            return
        if self._busy() >= self.policy.max_jobs:
            log.info("not bidding: at capacity", job=note.job_id[:16], working=len(self._working))
            return
        price = self.policy.price(note.bounty, note.requirements.get("max_price"))
        if price is None:
            log.info("not bidding: the bounty is below our minimum price", job=note.job_id[:16])
            return
        self.records[note.job_id] = WorkRecord(note.job_id, times={"bidding": time.time()})
        nursery.start_soon(self._bid, note, price)

    # ---- quoting (quotes.py) ------------------------------------------------------------------

    async def quote(self, note: wire.JobNote, deadline_blocks: int) -> tuple[Quote, bytes]:
        """Our signed quote for a job about to be posted (the quote protocol's handler calls it).

        Raises Refused, with the reason, when we would not bid on it.
        """
        market = self.market
        if not self.policy.enabled:
            raise Refused("this peer does not take jobs")
        if note.submitter == market.ledger.address:
            raise Refused("a solver does not quote on its own jobs")
        if not market.ledger.has_role("solver"):
            raise Refused("this peer is not registered as a solver")
        price = self.policy.price(note.bounty, note.requirements.get("max_price"))
        if price is None:
            raise Refused("the bounty is below our minimum price")
        if market.ledger.balance(note.submitter) < note.bounty:  # a quote holds one of our slots
            raise Refused("the submitter's balance does not cover the bounty")
        facts = {k: getattr(note, k) for k in ("job_id", "submitter", "spec_hash", "kind", "model_hash")}
        try:
            await market.load_spec(note.spec_blob, facts)
        except MarketError as e:
            raise Refused(str(e)) from None
        bond = min_bond(price, market.ledger.state.params.min_solver_bond_bps)
        if market.ledger.balance() < bond:
            raise Refused(f"our balance is too low for a bond of {bond}")
        expires = market.ledger.height + QUOTE_BLOCKS
        reply_send, reply = trio.open_memory_channel[str](1)
        await self._send.send(_Quoting(note, price, bond, expires, reply_send))
        why_not = await reply.receive()
        if why_not:
            raise Refused(why_not)
        quote = Quote(
            note.job_id, note.spec_hash, deadline_blocks, price, bond, market.encryption_key, expires
        )
        log.info("quote signed", job=note.job_id[:16], price=price, bond=bond, expires=expires)
        return quote, quote.sign(market.identity, market.ledger.chain_id)

    def _take_quote(self, q: _Quoting, nursery: trio.Nursery) -> str:
        """Book a quote unless it would take us past capacity; "" when taken, else why not."""
        job_id = q.note.job_id
        record = self.records.get(job_id)
        if record is not None and record.phase != "quoted":
            return f"job {job_id} is already {record.phase} here"
        if self._busy(but=job_id) >= self.policy.max_jobs:
            return "at capacity"
        height, submitter = self.market.ledger.height, q.note.submitter
        theirs = {j for j, (n, exp) in self._quotes.items() if n.submitter == submitter and exp >= height}
        if len(theirs - {job_id}) >= MAX_QUOTES_PER_SUBMITTER:  # quotes it never uses would lock our slots
            return f"{MAX_QUOTES_PER_SUBMITTER} of our quotes to this submitter are still open"
        if job_id not in self._quotes:
            nursery.start_soon(self._prefetch_model, q.note)  # while the job is being posted
        self._quotes[job_id] = (q.note, q.expires)
        record = WorkRecord(job_id, price=q.price, bond=q.bond)
        record.mark("quoted")
        self.records[job_id] = record
        return ""

    def _busy(self, but: str = "") -> int:
        """Jobs we run plus live quotes (each may win us a job), not counting job `but`."""
        height = self.market.ledger.height
        live = sum(1 for job_id, (_, expires) in self._quotes.items() if expires >= height and job_id != but)
        return len(self._working) + live

    def _prune_quotes(self, state: State) -> None:
        """Drop the quotes that won a job (now worked on) or expired without one."""
        me = self.market.ledger.address
        for job_id, (_, expires) in list(self._quotes.items()):
            job = state.jobs.get(job_id)
            if job is not None and job.solver == me:
                del self._quotes[job_id]
            elif state.height > expires:
                del self._quotes[job_id]
                record = self.records.get(job_id)
                if record is not None and record.phase == "quoted":
                    record.mark("not awarded")

    # ---- bidding ----------------------------------------------------------------------------------

    async def _bid(self, note: wire.JobNote, price: int) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._prefetch_model, note)  # while we bid and the window runs
            try:
                outcome = await self._place_bid(note, price)
            except (MarketError, BlobError, ComputeError, OSError) as e:
                outcome = _BidOutcome(note.job_id, error=str(e))
                nursery.cancel_scope.cancel()  # no bid: no need for the model
            else:
                await self._send.send(outcome)  # the prefetch may go on meanwhile
        if outcome.error:
            await self._send.send(outcome)

    async def _prefetch_model(self, note: wire.JobNote) -> None:
        sources = [peer for peer, _ in self.market.book.model_sources(note.model_hash)]
        try:
            await self.market.fetch_blob(note.model_blob, [note.submitter, *sources])
        except (BlobError, OSError) as e:
            log.info("model prefetch failed", job=note.job_id[:16], error=str(e))

    async def _place_bid(self, note: wire.JobNote, price: int) -> _BidOutcome:
        market = self.market
        known = market.ledger.job(note.job_id)
        if known is not None and known["status"] != "open":  # e.g. awarded at post (quotes.py)
            raise MarketError(f"job {note.job_id} is {known['status']}, not open for bids")
        await self._fetch_spec(note)  # while the job_post is being included
        job, seen_at = market.ledger.job(note.job_id), market.ledger.height
        while job is None and market.ledger.height < seen_at + BID_WAIT_BLOCKS:  # our ledger may lag
            await market.watch.wait_above(market.ledger.height)
            job = market.ledger.job(note.job_id)
        if job is None or job["status"] != "open":
            raise MarketError(f"job {note.job_id} is not open for bids")
        facts = ("spec_hash", "model_hash", "kind", "bounty", "submitter")
        if any(getattr(note, k) != job[k] for k in facts):
            raise MarketError(f"the announcement of job {note.job_id} does not match the ledger")
        await market.load_spec(note.spec_blob, job)  # the spec the ledger names, or we do not bid
        params = market.ledger.state.params
        bond = min_bond(price, params.min_solver_bond_bps)
        if market.ledger.balance() < bond + params.min_fee:
            raise MarketError(f"balance too low for a bond of {bond}")
        body = {"job_id": note.job_id, "price": price, "bond": bond, "encryption_key": market.encryption_key}
        await market.ledger.send("job_bid", body)
        log.info("bid placed", job=note.job_id[:16], price=price, bond=bond)
        return _BidOutcome(note.job_id, price, bond)

    async def _fetch_spec(self, note: wire.JobNote) -> None:
        """Get the spec blob from the submitter, asking again with backoff while bids are open.

        Raises BlobError (the last failure) after SPEC_FETCH_ATTEMPTS, MarketError once bids closed.
        """
        delay = SPEC_RETRY_FIRST_S
        for attempt in range(1, SPEC_FETCH_ATTEMPTS + 1):
            try:
                await self.market.fetch_blob(note.spec_blob, [note.submitter])
                return
            except BlobError as e:
                if attempt == SPEC_FETCH_ATTEMPTS:
                    raise
                error = e
            log.info("spec fetch failed, will retry", job=note.job_id[:16], attempt=attempt, error=str(error))
            await trio.sleep(delay)  # backoff between attempts, not synchronisation
            delay = min(2 * delay, SPEC_RETRY_MAX_S)
            if not self._bids_open(note.job_id):
                raise MarketError(f"bids on job {note.job_id} closed before its spec could be had: {error}")

    def _bids_open(self, job_id: str) -> bool:
        job, height = self.market.ledger.job(job_id), self.market.ledger.height
        if job is None:
            return True  # not in our (lagging) state yet: the attempts bound the wait
        return bool(job["status"] == "open" and height <= job["bids_close"])

    def _bid_done(self, outcome: _BidOutcome) -> None:
        record = self.records.get(outcome.job_id)
        if record is None or record.phase != "bidding":
            return
        if outcome.error:
            log.info("no bid", job=outcome.job_id[:16], reason=outcome.error)
            record.error = outcome.error
            record.mark("no bid")
        else:
            record.price, record.bond = outcome.price, outcome.bond
            record.mark("bid")

    # ---- winning and working ----------------------------------------------------------------------

    def _on_state(self, state: State, nursery: trio.Nursery) -> None:
        me = self.market.ledger.address
        excess = len(self.records) - MAX_RECORDS
        if excess > 0:  # forget the oldest jobs we are done with
            for job_id in [j for j in self.records if j not in self._working][:excess]:
                del self.records[job_id]
        done = prune(self.market, state)
        if done:
            nursery.start_soon(self._drop_checkpoints, done)
        for job_id, record in self.records.items():
            job = state.jobs.get(job_id)
            if record.phase == "bid" and job is not None and job.status != "open" and job.solver != me:
                record.mark("lost")
        self._reconcile(state, nursery)
        for job_id in jobs_by_status(state, "assigned", solver=me):
            if job_id in self._working or (job_id in self.records and self.records[job_id].phase == "failed"):
                continue  # running, or it failed here once: no retry loop until the deadline
            job = state.jobs[job_id]
            if state.height >= job.assigned_height + job.deadline_blocks:
                continue  # too late to commit: the ledger marks it missed
            quoted = self._quotes.get(job_id, (None, 0))[0]
            note = (
                self.market.book.jobs.get((job_id, job.submitter)) or quoted or self._journaled_note(job_id)
            )
            if note is None:
                continue  # the submitter re-announces its jobs until they settle
            record = self.records.get(job_id) or WorkRecord(job_id)
            record.price, record.bond = job.price, job.bond
            record.mark("won")
            self.records[job_id] = record
            self._working.add(job_id)
            nursery.start_soon(self._work, note, record)
        self._prune_quotes(state)

    # ---- the journal (restarts) -----------------------------------------------------------------

    def _reconcile(self, state: State, nursery: trio.Nursery) -> None:
        """Follow the ledger for journaled jobs: drop the settled ones, serve committed results again."""
        me, gone = self.market.ledger.address, []
        for job_id, entry in self._journaled.items():
            job = state.jobs.get(job_id)
            if job_id in self._forgetting or job is None:
                continue  # being dropped, or not in our (lagging) state yet
            if job.solver != me or job.status not in LIVE_STATUSES:
                gone.append(job_id)
            elif job.status == "committed" and job_id not in self._working and entry.get("result_blob"):
                if job_id in self._unservable:
                    continue  # no retry every block
                record = self.records.get(job_id) or WorkRecord(job_id)
                self.records[job_id] = record
                self._working.add(job_id)
                nursery.start_soon(self._serve_again, entry, record)
        if gone:
            self._forgetting.update(gone)
            nursery.start_soon(self._forget, tuple(gone))

    def _journaled_note(self, job_id: str) -> wire.JobNote | None:
        entry = self._journaled.get(job_id)
        if entry is None:
            return None
        try:
            note = note_from_json(entry.get("note"))
        except wire.WireError as e:
            log.error("journaled job announcement is malformed", job=job_id[:16], error=str(e))
            return None
        return note if note.job_id == job_id else None

    async def journaled(self, job_id: str) -> tuple[wire.JobNote, Record] | None:
        """The journaled announcement and a copy of the journal record of a job this peer works on
        or solved (once the journal is loaded), or None (no record, or a malformed announcement):
        what a restarted peer still knows of the job."""
        await self._journal_loaded.wait()
        note = self._journaled_note(job_id)
        return (note, dict(self._journaled[job_id])) if note is not None else None

    async def _journal(self, job_id: str, fields: Record) -> None:
        """Add fields to a job's record and write it (a failure is logged: the job goes on, only a
        restart would lose them)."""
        try:
            await self.market.in_thread(self.journal.merge, job_id, fields)
        except OSError as e:
            log.error("cannot write the solver journal", path=str(self.journal.path), error=str(e))
        await self._send.send(_Journaled(job_id, fields))

    async def _forget(self, job_ids: tuple[str, ...]) -> None:
        try:
            await self.market.in_thread(self.journal.drop, *job_ids)
        except OSError as e:
            log.error("cannot write the solver journal", path=str(self.journal.path), error=str(e))
        await self._send.send(_Forgotten(job_ids))

    async def _serve_again(self, entry: Record, record: WorkRecord) -> None:
        """Announce the journaled result of a job committed before a restart, until it settles."""
        job_id = record.job_id
        try:
            blob, size = str(entry["result_blob"]), int(entry["size"])
            if not await self.market.in_thread(self.market.store.has, blob):
                raise MarketError(f"its result blob {blob[:16]} is not in the blob store")
            record.result_blob = blob
            record.mark("serving")
            log.info("serving a committed result again", job=job_id[:16])
            await self._announce_result(wire.ResultNote(job_id, blob, size), record)
        except (MarketError, KeyError, TypeError, ValueError) as e:
            record.error = f"cannot serve the journaled result: {e}"
            record.mark("failed")
            self._unservable.add(job_id)
            log.error("journaled result cannot be served", job=job_id[:16], error=str(e))
        finally:
            await self._send.send(_Finished(job_id))

    async def _drop_checkpoints(self, job_ids: list[str]) -> None:
        """Forget the checkpoints of settled jobs whose disputes (if any) are over."""
        for job_id in job_ids:
            await self.market.in_thread(self.market.checkpoints.drop, job_id)

    async def _work(self, note: wire.JobNote, record: WorkRecord) -> None:
        try:
            if note.job_id not in self._journaled:  # a resumed job keeps its record (maybe a result)
                await self._journal(note.job_id, {"note": note_to_json(note)})
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as guard:
                    guard.start_soon(self._cancel_if_missed, note.job_id, scope)
                    data, result = await self._solve(note, record)
                    guard.cancel_scope.cancel()
            if scope.cancelled_caught:
                if self._committed_here(note.job_id):
                    record.mark("committed")  # the commit sent before a restart landed: serve it
                    log.info("our commit from before the restart landed, run stopped", job=note.job_id[:16])
                    return
                record.error = "the job left 'assigned' before we committed (deadline missed)"
                record.mark("failed")
                return
            await self._serve(note, record, data, result)
        except (MarketError, BlobError, ComputeError, OSError) as e:
            record.error = str(e)
            record.mark("failed")
            log.warning("job failed", job=note.job_id[:16], error=str(e))
        finally:
            await self._send.send(_Finished(note.job_id))

    def _committed_here(self, job_id: str, commitment: dict[str, Any] | None = None) -> bool:
        """Whether the ledger holds our commit for the job (and it is `commitment`, when given)."""
        job = self.market.ledger.job(job_id)
        if job is None or job["solver"] != self.market.ledger.address or not job.get("output_hash"):
            return False
        return commitment is None or all(job.get(k) == commitment[k] for k in ("output_hash", "trace_root"))

    async def _cancel_if_missed(self, job_id: str, scope: trio.CancelScope) -> None:
        height = 0
        while True:
            state = await self.market.watch.wait_above(height)
            height = state.height
            job = state.jobs.get(job_id)
            if job is None or job.status != "assigned":
                scope.cancel()
                return

    async def _solve(self, note: wire.JobNote, record: WorkRecord) -> tuple[bytes, Result]:
        market = self.market
        job = market.ledger.job(note.job_id)
        assert job is not None
        record.mark("fetching")
        spec = await market.load_spec(note.spec_blob, job)
        model = await market.load_model(note.model_hash, note.model_blob, [note.submitter])
        private: bytes | None = None
        if note.private_input:
            record.mark("waiting for input")
            blob = await self._input_blob(note)
            private = await open_input(market, note.job_id, note.submitter, blob, spec)
            await self._journal(note.job_id, {"input_blob": blob})  # a dispute reopens it
        record.mark("running")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publish_progress, record)
            bundle = await self._execute(note.job_id, spec, model, private, record)
            nursery.cancel_scope.cancel()
        await market.publish(wire.ProgressNote(note.job_id, record.done, record.total))
        return bundle

    async def _input_blob(self, note: wire.JobNote) -> str:
        """The id of the blob holding our sealed input: the submitter's gossiped note, or its answer
        when asked directly (a solver restarted after the note was published may never hear it
        again). Waits for the note, asks, and waits longer between attempts; the work's
        `_cancel_if_missed` ends this once the job leaves "assigned" (deadline missed).

        Raises BadInput when the submitter's answer is malformed."""
        market, key = self.market, (note.job_id, note.submitter)
        delay = INPUT_ASK_AFTER_S
        while True:
            with trio.move_on_after(delay):  # the note, if gossip brings it meanwhile
                return (await market.book.wait_for(lambda: market.book.inputs.get(key))).blob
            try:
                return await request_input(market, note.job_id, note.submitter)
            except InputUnavailable as e:
                log.info("input not handed over yet, will ask again", job=note.job_id[:16], error=str(e))
            delay = min(2 * delay, INPUT_RETRY_MAX_S)

    async def _execute(
        self, job_id: str, spec: JobSpec, model: Model, private: bytes | None, record: WorkRecord
    ) -> tuple[bytes, Result]:
        """Run the job in a compute worker process, on the Executor (one device job at a time);
        record its wall and CPU time there."""

        def progress(done: int, total: int) -> None:
            record.done, record.total = done, total

        behaviour, store = self.behaviour, self.market.checkpoints

        def job(cancel: threading.Event, post: Progress) -> Solved:
            if not isinstance(spec, InferenceSpec):
                return _train(behaviour, store, job_id, spec, model, private, post, cancel)
            args = (behaviour, job_id, spec, model, private, None)
            solved = worker.call(solve, args, cancel=cancel, progress=post)
            out = solved.output
            assert isinstance(out, InferenceResult)
            store.seal_batches(job_id, out.batch_hashes, out.root)  # the leaves a dispute asks for
            return solved

        solved = await self.market.executor.run(job, progress)
        record.start_step = solved.start_step
        record.times["compute_s"], record.times["compute_cpu_s"] = solved.wall_s, solved.cpu_s
        if isinstance(solved.output, InferenceResult):
            return await self.market.in_thread(inference_bundle, job_id, solved.output)
        return await self.market.in_thread(training_bundle, job_id, *solved.output)

    async def _publish_progress(self, record: WorkRecord) -> None:
        sent = (-1, -1)
        while True:
            now = (record.done, record.total)
            if now != sent and record.total:
                await self.market.publish(wire.ProgressNote(record.job_id, *now))
                sent = now
            await trio.sleep(PROGRESS_INTERVAL_S)  # pacing, not synchronisation

    async def _serve(self, note: wire.JobNote, record: WorkRecord, data: bytes, result: Result) -> None:
        market = self.market
        record.mark("committing")
        record.result_blob = await market.put_blob(data)
        entry = {"note": note_to_json(note), "result_blob": record.result_blob, "size": result.size}
        await self._journal(note.job_id, entry)  # before the commit: a restart serves this result
        commitment = result.commitment()
        try:
            await market.ledger.send("job_commit", {"job_id": note.job_id, **commitment})
        except MarketError:
            if not self._committed_here(note.job_id, commitment):
                raise
            log.info("our commit from before the restart landed first", job=note.job_id[:16])
        record.mark("serving")
        log.info("job committed", job=note.job_id[:16], output=result.output_hash[:16])
        await self._announce_result(wire.ResultNote(note.job_id, record.result_blob, result.size), record)

    async def _announce_result(self, announcement: wire.ResultNote, record: WorkRecord) -> None:
        """Announce a committed result every REANNOUNCE_S until the job leaves "committed"."""
        market, height = self.market, 0
        while True:
            await market.publish(announcement)
            with trio.move_on_after(wire.REANNOUNCE_S):
                while True:
                    state = await market.watch.wait_above(height)
                    height = state.height
                    job = state.jobs.get(announcement.job_id)
                    if job is None or job.status != "committed":
                        record.mark(job.status if job is not None else "done")
                        return


def _train(
    behaviour: SolverBehaviour,
    store: CheckpointStore,
    job_id: str,
    spec: TrainingSpec,
    model: Model,
    dataset: bytes | None,
    progress: Progress,
    cancel: threading.Event,
) -> Solved:
    """A training job, run in a compute worker process (blocking: called in the Executor's
    thread): an interrupted honest run goes on from its last recorded checkpoint, anything
    else starts at step 0. Every state the worker sends back is kept in `store` for spot checks
    and disputes (written by a thread of its own: writeback.py), and the trace sealed."""
    resume = store.resume_point(job_id) if behaviour.honest else None  # TEST behaviours start afresh
    solved: Solved | None = None
    if resume is not None:
        log.info("resuming an interrupted training run", job=job_id[:16], step=resume.step)
        try:
            with written_in_background(store.recorder(job_id, resume)) as record:
                args = (behaviour, job_id, spec, model, dataset, resume)
                solved = worker.call(
                    solve, args, cancel=cancel, progress=progress, on_event=lambda e: record(*e)
                )
        except StateError as e:
            log.warning(
                "cannot resume the interrupted run, starting from step 0", job=job_id[:16], error=str(e)
            )
    if solved is None:
        with written_in_background(store.recorder(job_id)) as record:
            args = (behaviour, job_id, spec, model, dataset, None)
            solved = worker.call(solve, args, cancel=cancel, progress=progress, on_event=lambda e: record(*e))
    assert not isinstance(solved.output, InferenceResult)
    store.seal(job_id, solved.output[1])  # every state is written by now
    return solved
