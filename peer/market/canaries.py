"""The canary agent: seal a canary on every job this peer submits, reveal the real ones.

A canary is a job whose submitter already knows the right output (ledger.canary). Verifiers
must not be able to tell one from an ordinary job, so this agent seals a commitment on every
job this peer submitted once the ledger assigns it (the submitter also seals before it
releases the input to the winner): a real one (the expected output hash and a fresh salt)
when it knows the answer for the job's spec, a random decoy it never opens otherwise.

Known answers (`Answers`, spec hash -> output hash, kept in `<data>/market/canaries.json`):
- `learn` (an operator that ran the spec itself, or a test);
- a job this peer submitted in strict mode that finalized without a dispute after at least
  one "ok" report and no "bad" one while it was committed, or that finalized because the
  solver won its dispute: the committed output stands, so later jobs of the same spec must
  give it bitwise. Tolerant jobs teach nothing: another honest machine's output may differ.

A real canary is revealed late in the challenge window (REVEAL_MARGIN_BLOCKS before its end)
so that the verifiers' reports are in: a failing canary then catches the solver and every
"ok" report, a passing one shows every "bad" report wrong. The sealed secrets are written to
the same file before the seal is sent, so a restart can still reveal them.

Error handling: a refused seal or reveal (the job moved on, a lagging view) is logged and the
job dropped; a file that cannot be written is logged and the secret kept in memory.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from compute import canonical
from ledger.canary import canary_commitment
from ledger.disputes import dispute_id_for
from ledger.state import State
from peer.market.errors import MarketError

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

SALT_BYTES = 32
REVEAL_MARGIN_BLOCKS = 3  # reveal this many blocks before the challenge window ends (inclusion time)
MAX_ANSWERS = 10_000


@dataclass(frozen=True)
class Canary:
    """What this peer sealed on one job: `expected` is "" for a decoy (never revealed)."""

    job_id: str
    commitment: str
    expected: str
    salt: bytes

    @property
    def real(self) -> bool:
        return bool(self.expected)

    def to_json(self) -> dict[str, str]:
        return {"commitment": self.commitment, "expected": self.expected, "salt": self.salt.hex()}


def make_canary(job_id: str, expected: str | None) -> Canary:
    """A real canary for `expected` (an output hash), or a decoy when None: a random commitment
    nobody can open, indistinguishable from a real one."""
    if expected is None:
        return Canary(job_id, secrets.token_hex(32), "", b"")
    salt = secrets.token_bytes(SALT_BYTES)
    return Canary(job_id, canary_commitment(expected, salt), expected, salt)


def reveal_height(commit_height: int, challenge_window: int, margin: int = REVEAL_MARGIN_BLOCKS) -> int:
    """The height at which a real canary is revealed: `margin` blocks before the window ends,
    but never before the block after the commit (the sample seed's draw)."""
    return max(commit_height + 2, commit_height + challenge_window - margin)


def answer_of_settled(reports_seen: dict[str, str], disputed_and_upheld: bool) -> bool:
    """Whether a finalized job's output is a known answer: upheld in a dispute, or at least one
    "ok" and no "bad" report while it was committed."""
    verdicts = set(reports_seen.values())
    return disputed_and_upheld or ("ok" in verdicts and "bad" not in verdicts)


class CanaryAgent:
    """The canary actor of one submitter peer (see the module docstring)."""

    def __init__(self, market: MarketService, path: Path, margin: int = REVEAL_MARGIN_BLOCKS) -> None:
        self.market = market
        self.path = path
        self.margin = margin
        self.answers: dict[str, str] = {}  # spec hash -> expected output hash
        self.canaries: dict[str, Canary] = {}  # job id -> what we sealed (until the job settles)
        self._reports: dict[str, dict[str, str]] = {}  # job id -> verifier -> verdict seen
        self._revealed: set[str] = set()
        self._dirty = False
        self._sealing: dict[str, trio.Event] = {}  # job id -> set once its seal is done

    def learn(self, spec_hash: str, output_hash: str) -> None:
        """Record the right output of a spec (checked by this peer or its operator)."""
        if not canonical.is_hash(spec_hash) or not canonical.is_hash(output_hash):
            raise MarketError("spec_hash and output_hash must be 64 lowercase hex characters")
        self.answers[spec_hash] = output_hash
        self._dirty = True
        while len(self.answers) > MAX_ANSWERS:
            self.answers.pop(next(iter(self.answers)))

    def status(self) -> dict[str, Any]:
        return {
            "known_answers": len(self.answers),
            "sealed": len(self.canaries),
            "real": sorted(j for j, c in self.canaries.items() if c.real),
            "revealed": sorted(self._revealed),
        }

    async def run(self) -> None:
        await self._load()
        height = 0
        while True:
            state = await self.market.watch.wait_above(height)
            height = state.height
            try:
                await self._step(state)
            except MarketError as e:
                log.info("canary step failed", error=str(e))

    async def _step(self, state: State) -> None:
        me = self.market.ledger.address
        for job_id, job in sorted(state.jobs.items()):
            if job.submitter != me:
                continue
            audit = state.audits.get(job_id)
            if (
                job.status == "assigned"  # not while open: extra txs would shorten bid windows
                and job_id not in self.canaries
                and (audit is None or not audit.canary)
            ):
                await self.seal(job_id, job.spec_hash)
            elif job.status == "committed":
                self._note_reports(state, job_id)
                canary = self.canaries.get(job_id)
                due = reveal_height(job.commit_height, job.challenge_window_blocks, self.margin)
                ours = canary is not None and audit is not None and audit.canary == canary.commitment
                if ours and canary.real and job_id not in self._revealed and state.height >= due:
                    await self._reveal(canary)
            elif job.status in ("finalized", "reversed", "missed", "expired", "cancelled"):
                if job_id in self.canaries or job_id in self._reports:
                    self._settled(state, job_id)
        if self._dirty:
            await self._save()

    def _note_reports(self, state: State, job_id: str) -> None:
        seen = self._reports.setdefault(job_id, {})
        for (jid, verifier), report in state.reports.items():
            if jid == job_id:
                seen[verifier] = report.verdict

    def _settled(self, state: State, job_id: str) -> None:
        job = state.jobs[job_id]
        canary = self.canaries.pop(job_id, None)
        seen = self._reports.pop(job_id, {})
        revealed = job_id in self._revealed
        self._revealed.discard(job_id)
        self._dirty = True
        if job.status == "reversed" and canary is not None and canary.real and revealed:
            if canary.expected != job.output_hash:  # our canary caught the solver: first-hand evidence
                self.market.voter.evidence(job.solver, "solver", "canary_failed", job_id)
        if job.status != "finalized":
            return
        dispute = state.disputes.get(dispute_id_for(job_id)) if job.challenger else None
        upheld = dispute is not None and dispute.outcome == "solver"  # "no_fault" proves nothing
        failed_canary = canary is not None and canary.real and canary.expected != job.output_hash
        if not self._strict(job_id):
            return  # a tolerant result is right within bounds, not bitwise: no known answer to test
        if not failed_canary and answer_of_settled(seen, upheld) and job.spec_hash not in self.answers:
            self.learn(job.spec_hash, job.output_hash)
            log.info("canary answer learned", spec=job.spec_hash[:16], output=job.output_hash[:16])

    def _strict(self, job_id: str) -> bool:
        """Whether our job `job_id` ran in strict mode (canaries compare output hashes bitwise)."""
        submitted = self.market.submitter.jobs.get(job_id)
        return submitted is not None and submitted.spec.mode == "strict"

    async def seal(self, job_id: str, spec_hash: str) -> None:
        """Seal the canary of a job of ours that was just assigned (once; a second caller waits for
        the first). The submitter calls it before it releases the input, so the commitment is on
        the ledger before the solver can have a result. Never raises: a refusal is logged."""
        if job_id in self._sealing:
            await self._sealing[job_id].wait()
            return
        if job_id in self.canaries:
            return
        self._sealing[job_id] = trio.Event()
        try:
            await self._seal(job_id, spec_hash)
        finally:
            self._sealing.pop(job_id).set()

    async def prepare(self, job_id: str, spec_hash: str) -> str:
        """The commitment of a new canary for a job about to be awarded at post time: the job_award
        tx carries it (quotes.py), so the canary is on the ledger before the solver can start."""
        if job_id not in self.canaries:
            self.canaries[job_id] = make_canary(job_id, self.answers.get(spec_hash))
            await self._save()  # the secret is on disk before the commitment is sent
        return self.canaries[job_id].commitment

    def discard(self, job_id: str) -> None:
        """Forget the canary prepared for a job that was never posted."""
        if self.canaries.pop(job_id, None) is not None:
            self._dirty = True

    def is_real(self, job_id: str) -> bool:
        """Whether we sealed a real canary on the job (its submitter then waits for the reveal)."""
        canary = self.canaries.get(job_id)
        return canary is not None and canary.real

    async def _seal(self, job_id: str, spec_hash: str) -> None:
        canary = make_canary(job_id, self.answers.get(spec_hash))
        self.canaries[job_id] = canary
        await self._save()  # the secret is on disk before the commitment is on the ledger
        try:
            await self.market.ledger.send("canary_seal", {"job_id": job_id, "commitment": canary.commitment})
        except MarketError as e:
            log.info("canary not sealed", job=job_id[:16], error=str(e))
            return
        log.info("canary sealed", job=job_id[:16], real=canary.real)

    async def _reveal(self, canary: Canary) -> None:
        self._revealed.add(canary.job_id)
        body = {"job_id": canary.job_id, "expected_output_hash": canary.expected, "salt": canary.salt}
        try:
            await self.market.ledger.send("canary_reveal", body)
        except MarketError as e:
            log.info("canary not revealed", job=canary.job_id[:16], error=str(e))
            return
        log.info("canary revealed", job=canary.job_id[:16], expected=canary.expected[:16])

    # ---- persistence ----------------------------------------------------------------------------

    async def _load(self) -> None:
        raw = await trio.to_thread.run_sync(_read_json, self.path)
        try:
            self.answers.update({str(k): str(v) for k, v in raw.get("answers", {}).items()})
            for job_id, c in raw.get("canaries", {}).items():
                self.canaries[job_id] = Canary(
                    job_id, c["commitment"], c["expected"], bytes.fromhex(c["salt"])
                )
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            log.warning("ignoring a malformed canary file", path=str(self.path), error=str(e))

    async def _save(self) -> None:
        self._dirty = False
        data = {
            "answers": self.answers,
            "canaries": {j: c.to_json() for j, c in self.canaries.items()},
        }
        try:
            await trio.to_thread.run_sync(_write_json, self.path, data)
        except OSError as e:
            log.warning("cannot write the canary file", path=str(self.path), error=str(e))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("cannot read the canary file", path=str(path), error=str(e))
        return {}
    return raw if isinstance(raw, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)
