"""The submitter agent: post jobs, announce them, seal inputs to the winner, fetch and check results.

`submit` (POST /market/jobs) runs in the request's task: it checks the request (registered
model, well-formed spec that fits the model, bounty within the balance), stores the spec
blob, sends job_post (the bounty goes into escrow) and hands the new `SubmittedJob` to the
actor task (`run`), which owns the table of jobs and starts one follow task per job; from
then on only that task writes the job's record.

A follow task, on every committed state: re-announces the job (every REANNOUNCE_S) until it
settles; once the ledger assigns it, seals the private input (if any) to the winner's X25519
key, stores that envelope as a blob and announces it; once the solver commits, fetches the
result blob from the solver and checks it against the commitment (bundles.check_result). The
ledger itself finalizes the job (or refunds it) in end_block; the record notes the height and
time of each status.

The private input is sealed to our own key as soon as the job_post is signed, and only that
sealed blob is kept (it is also what verifiers get, inputs.py). Each job is journaled
(journal.py, `<data>/market/submitter.json`): its announcement, the sealed input blobs and
the checked result, rewritten whenever one of them changes. On start, `run` reloads the
journal and follows every unsettled job again, the ledger deciding where it stands: it
re-announces it, seals the input to the winner if that was not done, fetches and checks the
result, and serves the input to verifiers and to a solver that missed the input note
(inputs.py). A job whose follow task ends (settled, result handled) leaves the journal; so
does a job the ledger never learned of (its job_post was never committed) after ORPHAN_BLOCKS.

What the API shows of a job (`view`) is the ledger's record plus the phase the CLI renders
(posted -> bidding -> assigned -> running -> committed -> finalized, or expired / missed /
cancelled / reversed), the solver's last progress report and this peer's own record.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import trio

from compute.errors import ComputeError
from compute.jobs import InferenceSpec, JobSpec, decode_job
from gossip.blobs import BlobError
from ledger.jobs import award_job_id, job_id_for, jobs_by_status
from peer.market import quotes, wire
from peer.market.bundles import Result, check_result
from peer.market.challenger import Material
from peer.market.errors import BadRequest, MarketError, NotFound, TxFailed, Unavailable
from peer.market.journal import Journal, note_from_json, note_to_json
from peer.market.models import model_blob_for_job
from peer.market.sealed import SealError, open_sealed, seal
from peer.market.specs import build_spec
from peer.market.verifier import first_bad, sampled_leaves

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

FINAL = frozenset({"finalized", "expired", "missed", "cancelled", "reversed"})
DEFAULT_BID_WINDOW = 3
DEFAULT_DEADLINE = 100
RESULT_ATTEMPTS = 10
RESULT_RETRY_S = 2.0
RESULT_WAIT_S = 300.0  # how long a settled job's follow task may still wait for the result
ORPHAN_BLOCKS = 100  # a journaled job the ledger still does not know this many blocks later was never posted
JOURNAL_NAME = "submitter.json"
AWARD_SALT_BYTES = 16  # a job_award's job id is derived from a fresh salt (ledger.jobs.award_job_id)
ACCEPT_CHECK_BPS = 1_000  # share of a result's items we re-run before accepting it (at least one)
# What restoring a journaled job may raise: a malformed record (wire.WireError is a ValueError),
# a missing or unreadable blob, a spec that no longer decodes.
_UNUSABLE = (MarketError, BlobError, ComputeError, OSError, SealError, LookupError, TypeError, ValueError)
_REQUEST_FIELDS = {
    "model_hash",
    "kind",
    "bounty",
    "spec",
    "inputs_path",
    "dataset_path",
    "bid_window_blocks",
    "deadline_blocks",
    "challenge_window_blocks",
    "requirements",
    "accept",
}
NO_RESULT = {
    "open": "it is not assigned yet",
    "assigned": "its solver has not committed a result yet",
    "expired": "no solver bid before the bid window closed (the bounty was refunded)",
    "missed": "its solver missed the deadline (the bounty was refunded, the solver's bond slashed)",
    "cancelled": "it was cancelled",
    "reversed": "its result was overturned in a dispute",
}


@dataclass
class SubmittedJob:
    """A job this peer posted; written only by its follow task once tracked."""

    job_id: str
    note: wire.JobNote
    spec: JobSpec
    input_blob: str = ""
    own_input_blob: str = ""  # the input sealed to our own key, served to verifiers (inputs.py)
    result_blob: str = ""
    verified: bool = False
    result_state: str = "waiting"  # -> "verified", "failed" (`error` says why) or "none" (no result)
    error: str = ""
    heights: dict[str, int] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    accept: bool = False  # accept the result once our own spot check of it passes
    accepted: str = ""  # "" (not yet), "sent", or why we did not accept

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_wire(),
            "accept": self.accept,
            "accepted": self.accepted,
            "input_blob": self.input_blob,
            "result_blob": self.result_blob,
            "verified": self.verified,
            "result_state": self.result_state,
            "error": self.error,
            "heights": dict(self.heights),
            "times": dict(self.times),
        }

    def journal_record(self, seen_at: int) -> dict[str, Any]:
        """What a restart needs (journal.py); `seen_at` is our ledger height when it was posted."""
        return {
            "note": note_to_json(self.note),
            "own_input_blob": self.own_input_blob,
            "input_blob": self.input_blob,
            "result_blob": self.result_blob if self.verified else "",
            "accept": self.accept and not self.accepted,
            "heights": dict(self.heights),
            "seen_at": seen_at,
        }


@dataclass(frozen=True)
class _Track:
    job: SubmittedJob
    reply: trio.MemorySendChannel[None]


def phase(job: dict[str, Any], progress: wire.ProgressNote | None) -> str:
    status = str(job["status"])
    if status == "open":
        return "bidding" if job["bids"] else "posted"
    if status == "assigned":
        return "running" if progress is not None and progress.done > 0 else "assigned"
    return status


def _int(req: dict[str, Any], name: str, default: int | None = None) -> int:
    value = req.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{name!r} must be a non-negative integer, got {value!r}")
    return value


class Submitter:
    """The submitter actor of one peer."""

    def __init__(self, market: MarketService) -> None:
        self.market = market
        self.jobs: dict[str, SubmittedJob] = {}  # owned by `run`
        self.journal = Journal(market.data_dir / "market" / JOURNAL_NAME)
        self._seen_at: dict[str, int] = {}  # job id -> our height when it was posted (orphan check)
        self._send, self._inbox = trio.open_memory_channel[_Track](64)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for job in await self._reload():
                self.jobs[job.job_id] = job
                nursery.start_soon(self._follow, job)
            async for track in self._inbox:
                self.jobs[track.job.job_id] = track.job
                nursery.start_soon(self._follow, track.job)
                track.reply.send_nowait(None)

    # ---- posting ------------------------------------------------------------------------------

    async def submit(self, req: dict[str, Any]) -> dict[str, Any]:
        """Post a job (see the module docstring); returns its view. Raises MarketError."""
        unknown = sorted(set(req) - _REQUEST_FIELDS)
        if unknown:
            raise BadRequest(f"unknown field(s) {unknown}; allowed: {sorted(_REQUEST_FIELDS)}")
        market, ledger = self.market, self.market.ledger
        model_hash, kind = req.get("model_hash"), req.get("kind")
        if not isinstance(model_hash, str) or not isinstance(kind, str):
            raise BadRequest("'model_hash' and 'kind' are required strings")
        bounty = _int(req, "bounty")
        params = ledger.state.params
        if bounty == 0:
            raise BadRequest("the bounty must be positive")
        balance = ledger.balance()
        if bounty + params.min_fee > balance:
            raise BadRequest(
                f"bounty {bounty} is over the balance {balance} of {ledger.address} "
                f"(posting also costs a fee of {params.min_fee})",
                code="insufficient_balance",
            )
        body = {
            "bid_window_blocks": _int(req, "bid_window_blocks", DEFAULT_BID_WINDOW),
            "deadline_blocks": _int(req, "deadline_blocks", DEFAULT_DEADLINE),
            "challenge_window_blocks": _int(
                req, "challenge_window_blocks", params.min_challenge_window_blocks
            ),
            "requirements": req.get("requirements") or {},
        }
        accept = req.get("accept", False)
        if not isinstance(accept, bool):
            raise BadRequest("'accept' must be true or false")
        model_blob, model = await model_blob_for_job(market, model_hash)
        private = await market.in_thread(_read_file, req.get("inputs_path") or req.get("dataset_path"))
        spec_params = req.get("spec") or {}
        if not isinstance(spec_params, dict):
            raise BadRequest("'spec' must be a JSON object of spec parameters")
        spec, private = await market.in_thread(build_spec, model, kind, spec_params, private)
        spec_blob = await market.put_blob(spec.encode())
        body |= {"spec_hash": spec.hash, "model_hash": model_hash, "kind": kind, "bounty": bounty}
        seen_at = ledger.height
        if body["bid_window_blocks"] == 0:
            try:
                awarded = await self._award(body, spec, spec_blob, model_blob, private, accept)
                if awarded is not None:
                    return await self._posted(*awarded, seen_at, "job_award")
                log.info("no solver quoted: posting with a bid window", blocks=DEFAULT_BID_WINDOW)
            except TxFailed as e:
                if e.code != "quote_expired":  # the award's own terms are at fault: say so
                    raise
                log.info("the quote expired before the award landed: posting with a bid window")
            body["bid_window_blocks"] = DEFAULT_BID_WINDOW
        posted = await ledger.post("job_post", body)
        job_id = job_id_for(ledger.chain_id, ledger.address, posted["nonce"])
        job = SubmittedJob(
            job_id, self._note(job_id, body, spec_blob, model_blob, private), spec, accept=accept
        )
        if private is not None:  # only the sealed form is kept, from here on
            own = await market.in_thread(seal, market.encryption_key, private, job_id.encode())
            job.own_input_blob = await market.put_blob(own)
        del private
        await market.publish(job.note)  # before the commit: solvers get ready while it is included
        return await self._posted(job, posted, seen_at, "job_post")

    def _note(
        self, job_id: str, body: dict[str, Any], spec_blob: str, model_blob: str, private: bytes | None
    ) -> wire.JobNote:
        return wire.JobNote(
            job_id, body["spec_hash"], spec_blob, body["model_hash"], model_blob, body["kind"],
            body["bounty"], dict(body["requirements"]), self.market.ledger.address, private is not None,
        )  # fmt: skip

    async def _award(
        self,
        body: dict[str, Any],
        spec: JobSpec,
        spec_blob: str,
        model_blob: str,
        private: bytes | None,
        accept: bool,
    ) -> tuple[SubmittedJob, dict[str, Any]] | None:
        """Ask solvers for quotes and post the job awarded to the best (quotes.py): the job and its
        posted tx, or None when no solver quoted (nothing was posted). Raises MarketError when the
        job_award is refused."""
        market, ledger = self.market, self.market.ledger
        salt = secrets.token_bytes(AWARD_SALT_BYTES)
        job_id = award_job_id(ledger.chain_id, ledger.address, salt)
        note = self._note(job_id, body, spec_blob, model_blob, private)
        deadline = body["deadline_blocks"]
        won = quotes.best(ledger.state, body["bounty"], await quotes.ask(market, note, deadline))
        if won is None:
            return None
        job = SubmittedJob(job_id, note, spec, accept=accept)
        context = job_id.encode()
        if private is not None:  # sealed to the winner now: it gets it as soon as the award commits
            own, sealed = await market.in_thread(
                _seal_twice, market.encryption_key, won.quote.encryption_key, private, context
            )
            job.own_input_blob, job.input_blob = await market.put_blob(own), await market.put_blob(sealed)
        canary = await market.canaries.prepare(job_id, spec.hash)
        award = {k: v for k, v in body.items() if k != "bid_window_blocks"}
        award |= won.award_fields() | {"job_salt": salt, "canary": canary}
        try:
            posted = await ledger.post("job_award", award)
        except TxFailed:
            market.canaries.discard(job_id)
            raise
        log.info("job awarded to a quote", job=job_id[:16], solver=won.solver, price=won.quote.price)
        return job, posted

    async def _posted(
        self, job: SubmittedJob, posted: dict[str, Any], seen_at: int, tx_type: str
    ) -> dict[str, Any]:
        """Journal a job whose post tx was sent, wait for its commit and start following it."""
        market, ledger, job_id = self.market, self.market.ledger, job.job_id
        self._seen_at[job_id] = seen_at
        await self._journal(job)  # before the commit: a restart from here on still follows the job
        try:
            posted = await ledger.committed(tx_type, posted)
        except TxFailed:
            await self._forget(job_id)
            market.canaries.discard(job_id)
            raise
        except Unavailable:
            await self._hand_over(job)  # it may still be committed: follow it (dropped if it never is)
            raise
        job.heights["posted"], job.times["posted"] = posted["height"], time.time()
        await self._journal(job)
        await self._hand_over(job)
        log.info(
            "job posted", job=job_id[:16], kind=job.note.kind, bounty=job.note.bounty, height=posted["height"]
        )
        return self.view(job_id)

    async def _hand_over(self, job: SubmittedJob) -> None:
        """Give a new job to the actor task, which starts following it."""
        reply_send, reply = trio.open_memory_channel[None](1)
        await self._send.send(_Track(job, reply_send))
        await reply.receive()

    # ---- following a job ----------------------------------------------------------------------

    async def _follow(self, job: SubmittedJob) -> None:
        async with trio.open_nursery() as results:
            async with trio.open_nursery() as announcing:
                announcing.start_soon(self._announce, job)
                await self._track(job, results)
                announcing.cancel_scope.cancel()
        await self._forget(job.job_id)  # settled and its result handled: nothing left to recover

    async def _announce(self, job: SubmittedJob) -> None:
        while True:
            await self.market.publish(job.note)
            record = self.market.ledger.job(job.job_id)
            if job.input_blob and record is not None and record["status"] == "assigned":
                await self.market.publish(wire.InputNote(job.job_id, job.input_blob, record["solver"]))
            await trio.sleep(wire.REANNOUNCE_S)  # pacing: gossip is best effort, so repeat

    async def _track(self, job: SubmittedJob, results: trio.Nursery) -> None:
        height, fetching = 0, job.verified  # a job resumed from the journal may be checked already
        while True:
            state = await self.market.watch.wait_above(height)
            height = state.height
            record = self.market.ledger.job(job.job_id, state)
            if record is None:  # not committed yet (or a lagging ledger after a restart)
                if height > self._seen_at.get(job.job_id, height) + ORPHAN_BLOCKS:
                    log.warning("journaled job never reached the ledger, dropped", job=job.job_id[:16])
                    job.result_state, job.error = "none", "its job_post was never committed"
                    return
                continue
            status = record["status"]
            if record["bids"] and "bidding" not in job.heights:
                job.heights["bidding"], job.times["bidding"] = height, time.time()
            if status not in job.heights:
                job.heights[status], job.times[status] = height, time.time()
            if status == "assigned" and job.note.private_input and not job.input_blob:
                await self.market.canaries.seal(job.job_id, job.spec.hash)  # before the solver can start
                try:
                    await self._send_input(job, record)
                except (MarketError, BlobError, OSError, SealError) as e:  # the solver will miss its deadline
                    job.error = f"cannot send the input to the solver: {e}"
                    log.warning("input not sent", job=job.job_id[:16], error=str(e))
            if status in ("committed", "finalized") and not fetching:
                fetching = True
                results.start_soon(self._fetch_result, job, record)
            if status in FINAL:
                if not fetching:
                    job.result_state = "none"  # expired, missed or cancelled: there is no result
                log.info("job settled", job=job.job_id[:16], status=status, height=height)
                return

    async def _send_input(self, job: SubmittedJob, record: dict[str, Any]) -> None:
        """Seal the input (kept sealed to our own key) to the winner's key and announce it."""
        market = self.market
        if not job.own_input_blob:
            raise MarketError(f"job {job.job_id} has no sealed input here")
        context = job.job_id.encode()
        own = await market.read_blob(job.own_input_blob)
        private = await market.in_thread(open_sealed, market.x25519, own, context)
        key = bytes.fromhex(record["encryption_key"])
        sealed = await market.in_thread(seal, key, private, context)
        del private
        job.input_blob = await market.put_blob(sealed)
        job.times["input_sent"] = time.time()
        await self._journal(job)
        await market.publish(wire.InputNote(job.job_id, job.input_blob, record["solver"]))

    async def _fetch_result(self, job: SubmittedJob, record: dict[str, Any]) -> None:
        with trio.move_on_after(RESULT_WAIT_S):
            await self._fetch_and_check(job, record)
        if not job.verified:
            job.result_state = "failed"
            job.error = job.error or "the solver never announced its result blob"

    async def _fetch_and_check(self, job: SubmittedJob, record: dict[str, Any]) -> None:
        market, solver = self.market, record["solver"]
        for _ in range(RESULT_ATTEMPTS):
            try:
                note = await market.book.wait_for(lambda: market.book.results.get((job.job_id, solver)))
                data = await market.fetch_blob(note.blob, [solver], max_size=record["result_size"] or None)
                result = await market.in_thread(check_result, data, record, job.spec)
            except (BlobError, OSError) as e:
                job.error = f"cannot fetch the result: {e}"
                await trio.sleep(RESULT_RETRY_S)  # pacing between attempts at an unreachable solver
                continue
            except MarketError as e:
                job.error, job.result_state = str(e), "failed"  # a dispute would start here
                log.warning("result check failed", job=job.job_id[:16], error=str(e))
                return
            job.result_blob, job.verified, job.error, job.result_state = note.blob, True, "", "verified"
            job.times["verified"] = time.time()
            await self._journal(job)
            log.info("result verified", job=job.job_id[:16], output=result.output_hash[:16])
            if job.accept:
                await self._accept(job, record, result)
            return

    async def _accept(self, job: SubmittedJob, record: dict[str, Any], result: Result) -> None:
        """Spot-check the result ourselves (a secret sample the solver cannot predict) and, when it
        passes, accept it: the job finalizes at once instead of at the end of its challenge window.
        When it fails, the challenge window runs on, and we dispute the result if we may."""
        market, job_id = self.market, job.job_id
        if market.canaries.is_real(job_id):
            job.accepted = "not accepted early: the job carries a real canary, revealed in the window"
            return
        try:
            model = await market.load_model(job.note.model_hash, job.note.model_blob, [])
            private = None
            if job.own_input_blob:
                own = await market.read_blob(job.own_input_blob)
                private = await market.in_thread(open_sealed, market.x25519, own, job_id.encode())
            material = Material(record, job.spec, model, private, result)
            training = not isinstance(job.spec, InferenceSpec)
            seed = secrets.token_bytes(32)
            me = market.ledger.address
            items = sampled_leaves(seed, job_id, me, training, len(material.leaves), ACCEPT_CHECK_BPS)
            bad = await first_bad(market, material, items)
        except (MarketError, BlobError, ComputeError, OSError, SealError) as e:
            job.accepted = f"not accepted: our own check could not run: {e}"
            log.warning("result not accepted", job=job_id[:16], error=str(e))
            return
        if bad is not None:
            job.accepted = f"not accepted: our own check recomputed leaf {bad[0]} differently"
            log.warning("result not accepted: own spot check failed", job=job_id[:16], leaf=bad[0])
            if market.ledger.has_role("verifier"):  # disputes are opened by registered verifiers
                try:
                    await market.challenger.open(material, *bad)
                    job.accepted += "; disputed"
                except TxFailed as e:  # another verifier's dispute came first, or the window closed
                    log.info("dispute not opened", job=job_id[:16], error=str(e))
            return
        try:
            await market.ledger.send("job_accept", {"job_id": job_id})
        except (TxFailed, Unavailable) as e:  # e.g. a dispute opened first
            job.accepted = f"not accepted: {e}"
            log.info("job_accept refused", job=job_id[:16], error=str(e))
            return
        job.accepted, job.times["accepted"] = "sent", time.time()
        await self._journal(job)
        log.info("result accepted", job=job_id[:16], checked=len(items))

    # ---- the journal ---------------------------------------------------------------------------

    async def _journal(self, job: SubmittedJob) -> None:
        """Write the job's record (a failure is logged: the job goes on, only a restart would lose it)."""
        seen_at = self._seen_at.get(job.job_id, self.market.ledger.height)
        try:
            await self.market.in_thread(self.journal.put, job.job_id, job.journal_record(seen_at))
        except OSError as e:
            log.error("cannot write the submitter journal", path=str(self.journal.path), error=str(e))

    async def _forget(self, job_id: str) -> None:
        self._seen_at.pop(job_id, None)
        try:
            await self.market.in_thread(self.journal.drop, job_id)
        except OSError as e:
            log.error("cannot write the submitter journal", path=str(self.journal.path), error=str(e))

    async def _reload(self) -> list[SubmittedJob]:
        """The unsettled jobs of the journal, to follow again (a record that cannot be used is dropped)."""
        records = await self.market.in_thread(self.journal.load)
        jobs = []
        for job_id, record in records.items():
            try:
                job = await self._restore(job_id, record)
            except _UNUSABLE as e:
                log.error("journaled job cannot be resumed, dropped", job=job_id[:16], error=str(e))
                await self._forget(job_id)
                continue
            jobs.append(job)
            log.info("resuming a submitted job", job=job_id[:16], input_sent=bool(job.input_blob))
        return jobs

    async def _restore(self, job_id: str, record: dict[str, Any]) -> SubmittedJob:
        note = note_from_json(record["note"])
        if note.job_id != job_id or note.submitter != self.market.ledger.address:
            raise MarketError("the record is not one of our jobs")
        spec = await self.market.in_thread(decode_job, await self.market.read_blob(note.spec_blob))
        if spec.hash != note.spec_hash:
            raise MarketError("its spec blob is not the spec it announced")
        job = SubmittedJob(
            job_id, note, spec, heights=dict(record["heights"]), accept=record.get("accept") is True
        )
        job.own_input_blob, job.input_blob = str(record["own_input_blob"]), str(record["input_blob"])
        if record["result_blob"]:
            job.result_blob, job.verified, job.result_state = str(record["result_blob"]), True, "verified"
        self._seen_at[job_id] = int(record["seen_at"])
        return job

    # ---- queries --------------------------------------------------------------------------------

    def own_input(self, job_id: str) -> str | None:
        """The blob of `job_id`'s input sealed to our own key, if we submitted it with one."""
        job = self.jobs.get(job_id)
        return (job.own_input_blob or None) if job is not None else None

    def input_sent(self, job_id: str) -> str | None:
        """The blob of `job_id`'s input we sealed to its winner, once that is done."""
        job = self.jobs.get(job_id)
        return (job.input_blob or None) if job is not None else None

    def view(self, job_id: str) -> dict[str, Any]:
        """The ledger's record of a job, its phase and progress, and this peer's records of it."""
        record = self.market.ledger.job(job_id)
        if record is None:
            raise NotFound(f"no job {job_id} on this chain (see `hivemesh job list`)", code="unknown_job")
        progress = self.market.book.progress.get((job_id, record["solver"])) if record["solver"] else None
        local = self.jobs.get(job_id)
        work = self.market.solver.records.get(job_id)
        record["encryption_key"] = record["encryption_key"] or None
        return {
            **record,
            "phase": phase(record, progress),
            "progress": {"done": progress.done, "total": progress.total} if progress else None,
            "height": self.market.ledger.height,
            "submitted_here": local.to_json() if local else None,
            "solved_here": work.to_json() if work and work.phase not in ("no bid", "lost") else None,
        }

    def list(self, status: str | None, mine: bool) -> list[dict[str, Any]]:
        state = self.market.ledger.state
        me = self.market.ledger.address if mine else None
        rows = []
        for job_id in jobs_by_status(state, status, submitter=me):
            job = state.jobs[job_id]
            rows.append(
                {
                    "job_id": job_id,
                    "kind": job.kind,
                    "status": job.status,
                    "submitter": job.submitter,
                    "solver": job.solver,
                    "bounty": job.bounty,
                    "price": job.price,
                    "post_height": job.post_height,
                    "model_hash": job.model_hash,
                }
            )
        return rows

    async def result_output(self, job_id: str) -> bytes:
        """The output of a job's result (checked against the commitment), fetched if needed."""
        market = self.market
        record = market.ledger.job(job_id)
        if record is None:
            raise NotFound(f"no job {job_id} on this chain", code="unknown_job")
        status = record["status"]
        if status not in ("committed", "finalized", "disputed"):
            reason = NO_RESULT.get(status, f"it is {status}")
            raise MarketError(f"job {job_id} has no result: {reason}", code="no_result", status=409)
        local = self.jobs.get(job_id)
        spec = local.spec if local is not None else None
        if local is not None and local.verified:
            data = await market.read_blob(local.result_blob)
        else:
            note = market.book.results.get((job_id, record["solver"]))
            if note is None:
                raise Unavailable(f"the solver of job {job_id} has not announced its result blob (yet)")
            try:
                limit = record["result_size"] or None
                data = await market.fetch_blob(note.blob, [record["solver"]], max_size=limit)
            except BlobError as e:
                raise Unavailable(f"cannot fetch the result of job {job_id}: {e}") from None
        result = await market.in_thread(check_result, data, record, spec)
        return result.output


def _seal_twice(own_key: bytes, their_key: bytes, private: bytes, context: bytes) -> tuple[bytes, bytes]:
    """The input sealed to our own key (kept) and to the winner's (sent)."""
    return seal(own_key, private, context), seal(their_key, private, context)


def _read_file(path: Any) -> bytes | None:
    if path is None:
        return None
    if not isinstance(path, str):
        raise BadRequest("file paths must be strings")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadRequest(f"cannot read {path}: {e.strerror or e}") from None
