"""Canaries: jobs whose submitter already knows the right output, to catch lazy verifiers and solvers.

commitment = sha256("hivemesh/canary/v1\\0" || bytes(expected_output_hash) || salt), as hex
(`canary_commitment`); salt is 16..64 random bytes.

- canary_seal {job_id, commitment} by the submitter while the job is "open" or "assigned"
  (before the result), once per job. Sealing while open lets a submitter whose job has no
  private input seal before any solver can commit. Verifiers cannot tell a canary from a
  decoy: a submitter agent seals every job, most with a random commitment it never opens.
- canary_reveal {job_id, expected_output_hash, salt} by the submitter while the job is
  "committed" (its challenge window). After it, no more verify_report is taken for the job.
  - expected == committed output: the canary passed; the job carries on, and at settlement
    every "bad" report on it is shown wrong.
  - otherwise the solver is caught: the job is reversed like a lost dispute (solver unpaid,
    its whole bond burned, solver reputation down by reputation_dispute_bps), every "ok"
    report is shown wrong (bond burned, verifier reputation down) and every "bad" one right.
    The submitter gets back bounty - price and the price goes to the verifier pool: a
    submitter can open a false canary (the ledger cannot tell), but then it still pays the
    full price for the result it received and nobody receives the burned bond, so a false
    canary gains nothing; it only costs its victim, at the price of the job.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from ledger.accounts import debit
from ledger.audits import settle_job
from ledger.errors import CanaryError, WrongJobStatus
from ledger.jobs import dispute_job, settle_dispute, submitted_job
from ledger.records_disputes import Audit
from ledger.state import Job, Journal
from ledger.tx import Tx

CANARY_DOMAIN = b"hivemesh/canary/v1\x00"


def canary_commitment(expected_output_hash: str, salt: bytes) -> str:
    """The sealed commitment to a canary's expected output hash (hex sha256)."""
    return hashlib.sha256(CANARY_DOMAIN + bytes.fromhex(expected_output_hash) + salt).hexdigest()


def canary_seal(j: Journal, tx: Tx, sender: str) -> None:
    job_id = tx.body["job_id"]
    job = submitted_job(j, job_id, sender)
    if job.status not in ("open", "assigned"):
        raise WrongJobStatus(job_id, job.status, "open or assigned (a canary is sealed before the result)")
    record = j.state.audits.get(job_id, Audit())
    if record.canary:
        raise CanaryError(f"job {job_id} already has a sealed canary")
    j.put("audits", job_id, replace(record, canary=tx.body["commitment"]))


def canary_reveal(j: Journal, tx: Tx, sender: str) -> None:
    b = tx.body
    job_id, expected = b["job_id"], b["expected_output_hash"]
    job = submitted_job(j, job_id, sender)
    if job.status != "committed":
        raise WrongJobStatus(job_id, job.status, "committed (inside its challenge window)")
    record = j.state.audits[job_id]
    if not record.canary:
        raise CanaryError(f"job {job_id} has no sealed canary")
    if record.canary_expected:
        raise CanaryError(f"the canary of job {job_id} is already revealed")
    if canary_commitment(expected, b["salt"]) != record.canary:
        raise CanaryError(f"expected_output_hash and salt do not open the canary of job {job_id}")
    j.put("audits", job_id, replace(record, canary_expected=expected))
    if expected != job.output_hash:
        _caught(j, job_id, job)


def _caught(j: Journal, job_id: str, job: Job) -> None:
    """Reverse a job whose output failed its canary (see the module docstring)."""
    s = j.state
    key = (job.submitter, "verifier")
    kept = s.reputation.get(key)
    settle_job(j, job_id, False)
    dispute_job(j, job_id, job.submitter)
    settle_dispute(j, job_id, False, job.submitter, 0)
    # The submitter is no verifier here: undo the "challenger won" reputation step.
    if kept is None:
        j.delete("reputation", key)
    else:
        j.put("reputation", key, kept)
    debit(j, job.submitter, job.price)
    j.set("verifier_pool", s.verifier_pool + job.price)
