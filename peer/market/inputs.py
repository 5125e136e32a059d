"""A job's private input, served by its submitter to the peers that must re-execute the job.

Spot checks and dispute referees re-run part of a job, so they need its private input (the
inference inputs or the training dataset file). The submitter keeps the input sealed to its
own X25519 key in its blob store (`Submitter`: `SubmittedJob.own_input_blob`) and serves it
over `/hivemesh/market/input/1` (request/response, msgpack):

    request  {"job_id": hex, "key": 32-byte X25519 public key}
    response {"blob": id of the input sealed to `key`, bound to the job id}

The requester is the stream's remote peer, authenticated by the transport (its peer id is its
ledger address). Two kinds of peer are served:

- the job's assigned solver, while the job is "assigned": the input normally reaches it as a
  gossiped InputNote, which a solver restarted after it was published may never hear again, so
  it asks here instead. It gets the blob the submitter already sealed to it or, if there is none
  yet, one sealed to the encryption key of its winning bid as the ledger records it (the key in
  its request is ignored: nobody can have the input sealed to another key by naming the solver's
  job). The canary is sealed first, as before any release of the input to the solver.
- a registered "verifier" on the ledger or a validator on the committee of the job's dispute,
  while the job has a result to check ("committed" or "disputed"); never the job's own solver
  then (it has the input already). Their response is sealed (peer/market/sealed.py) to the key
  carried in the request, so only that peer can open it even though the blob itself is served
  to anyone who asks for it by id.

`request_input` (client) asks the submitter and returns the id of the sealed blob;
`fetch_input` (the checkers' client) also fetches it, opens it and checks it against the input
hash the spec names. None when the job has no private input.

Error handling: refusals go back as RemoteError and become `InputUnavailable` on the client;
an input that does not open or does not hash to the spec's value is `BadInput`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from compute import canonical
from compute.datasets import BlobDataset, Dataset, decode_inputs, inputs_hash
from compute.errors import ComputeError
from compute.jobs import InferenceSpec, JobSpec
from gossip.blobs import BlobError
from gossip.errors import GossipError
from ledger.disputes import dispute_id_for
from peer.market.errors import MarketError
from peer.market.sealed import KEY_BYTES, SealError, open_sealed, seal

if TYPE_CHECKING:
    from peer.market.service import MarketService

log = structlog.get_logger(__name__)

PROTOCOL = "/hivemesh/market/input/1"
MAX_REQUEST = 1024
MAX_RESPONSE = 4096
REQUEST_TIMEOUT_S = 30.0
SERVE_STATUSES = frozenset({"committed", "disputed"})


class InputUnavailable(MarketError):
    """The submitter did not (or could not) hand over the job's input."""

    status = 503
    code = "input_unavailable"


class BadInput(MarketError):
    """The input served is not the one the job's spec names."""

    status = 502
    code = "bad_input"


class Refused(GossipError):
    """An input request this peer will not answer (its message goes back to the requester)."""


def has_private_input(spec: JobSpec) -> bool:
    """Inference inputs are always private; a training dataset is when the spec names it by hash."""
    return isinstance(spec, InferenceSpec) or isinstance(spec.dataset, BlobDataset)


def check_input(spec: JobSpec, data: bytes) -> None:
    """Raise BadInput unless `data` is the input `spec` names (blocking: torch decoding)."""
    try:
        if isinstance(spec, InferenceSpec):
            actual, expected = inputs_hash(decode_inputs(data)), spec.inputs_hash
        else:
            actual, expected = Dataset.from_bytes(data).hash, getattr(spec.dataset, "hash", "")
    except ComputeError as e:
        raise BadInput(f"the input served is malformed: {e}") from None
    if actual != expected:
        raise BadInput(f"the input served hashes to {actual[:16]}, the spec names {expected[:16]}")


def is_assigned_solver(job: dict[str, Any], requester: str) -> bool:
    """Whether `requester` is the solver the job is assigned to, still working on it."""
    return job["status"] == "assigned" and bool(job["solver"]) and requester == job["solver"]


def may_fetch(service: MarketService, job: dict[str, Any], requester: str) -> str:
    """ "" when `requester` may have the input of `job`, else why not."""
    state = service.ledger.state
    if job["status"] not in SERVE_STATUSES:
        return f"job {job['job_id']} is {job['status']}, not being checked"
    if requester == job["solver"]:
        return "the solver of a job has its input already"
    account = state.accounts.get(requester)
    if account is not None and account.has_role("verifier"):
        return ""
    dispute = state.disputes.get(dispute_id_for(job["job_id"]))
    if dispute is not None and dispute.active and requester in dict(dispute.committee):
        return ""
    return f"{requester} is neither a registered verifier nor on the dispute committee of this job"


def _parse_request(body: Any) -> tuple[str, bytes]:
    if not isinstance(body, dict) or set(body) != {"job_id", "key"}:
        raise Refused("an input request is {job_id, key}")
    job_id, key = body["job_id"], body["key"]
    if not canonical.is_hash(job_id) or not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise Refused("job_id must be a hex hash and key a 32-byte X25519 public key")
    return job_id, key


def make_handler(service: MarketService) -> Any:
    """The protocol handler: the submitter side (see the module docstring)."""

    async def handle(peer: str, body: Any) -> dict[str, Any]:
        job_id, key = _parse_request(body)
        job = service.ledger.job(job_id)
        if job is None or job["submitter"] != service.ledger.address:
            raise Refused(f"this peer did not submit job {job_id}")
        if is_assigned_solver(job, peer):
            return {"blob": await _for_solver(service, job)}
        why_not = may_fetch(service, job, peer)
        if why_not:
            log.info("input request refused", job=job_id[:16], peer=peer, reason=why_not)
            raise Refused(why_not)
        return {"blob": await _reseal(service, job_id, key)}

    return handle


async def _for_solver(service: MarketService, job: dict[str, Any]) -> str:
    """The blob of the input sealed to the assigned solver: the one already sent, else a new one
    sealed to the key of its winning bid (never to a key from the request)."""
    job_id = job["job_id"]
    sent = service.submitter.input_sent(job_id)
    if sent is not None:
        log.info("input handed to its solver on request", job=job_id[:16])
        return sent
    try:
        key = bytes.fromhex(job["encryption_key"] or "")
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise Refused(f"the ledger records no encryption key for the solver of job {job_id}")
    await service.canaries.seal(job_id, job["spec_hash"])  # as before the input is sent unasked
    log.info("input sealed to its solver on request", job=job_id[:16])
    return await _reseal(service, job_id, key)


async def _reseal(service: MarketService, job_id: str, key: bytes) -> str:
    """Seal our own copy of the job's input to `key`; the id of the new blob."""
    own = service.submitter.own_input(job_id)
    if own is None:
        raise Refused(f"job {job_id} has no private input here")
    context = job_id.encode()
    try:
        sealed_own = await service.read_blob(own)
        plain = await service.in_thread(open_sealed, service.x25519, sealed_own, context)
        sealed = await service.in_thread(seal, key, plain, context)
    except (BlobError, OSError, SealError) as e:
        log.warning("cannot serve a job input", job=job_id[:16], error=str(e))
        raise Refused(f"the input of job {job_id} cannot be served: {e}") from None
    return await service.put_blob(sealed)


async def request_input(service: MarketService, job_id: str, submitter: str) -> str:
    """Ask the submitter of a job for its input; the id of the blob it sealed for us.

    Raises:
        InputUnavailable: the submitter refused or is unreachable.
        BadInput: its answer is malformed.
    """
    await service.ensure_connected(submitter)
    try:
        reply = await service.gossip.rpc.request(
            submitter,
            PROTOCOL,
            {"job_id": job_id, "key": service.encryption_key},
            timeout=REQUEST_TIMEOUT_S,
            max_response=MAX_RESPONSE,
        )
    except GossipError as e:
        raise InputUnavailable(f"the submitter of job {job_id} did not hand over its input: {e}") from None
    if not isinstance(reply, dict) or set(reply) != {"blob"} or not isinstance(reply["blob"], str):
        raise BadInput(f"malformed input answer for job {job_id}")
    return reply["blob"]


async def fetch_input(service: MarketService, job: dict[str, Any]) -> bytes | None:
    """The private input of `job` (a ledger job record) from its submitter, checked against the spec.

    None when the job has no private input (a training job on a synthetic dataset).

    Raises:
        InputUnavailable: no spec announcement, the submitter refused or is unreachable.
        BadInput: the envelope does not open for us, or the input is not the one the spec names.
    """
    job_id, submitter = job["job_id"], job["submitter"]
    note = service.book.jobs.get((job_id, submitter))
    if note is None:
        raise InputUnavailable(f"job {job_id} has not been announced to this peer (no spec blob known)")
    spec = await service.load_spec(note.spec_blob, job)
    if not has_private_input(spec):
        return None
    blob = await request_input(service, job_id, submitter)
    return await open_input(service, job_id, submitter, blob, spec)


async def open_input(service: MarketService, job_id: str, submitter: str, blob: str, spec: JobSpec) -> bytes:
    """The input sealed to us in `blob` (ours when kept, else fetched, the submitter first), opened
    and checked against the input hash `spec` names.

    Raises:
        InputUnavailable: the blob cannot be fetched.
        BadInput: the envelope does not open for us, or the input is not the one the spec names.
    """
    try:
        sealed = await service.fetch_blob(blob, [submitter])
    except BlobError as e:
        raise InputUnavailable(f"cannot fetch the sealed input of job {job_id}: {e}") from None
    try:
        data = await service.in_thread(open_sealed, service.x25519, sealed, job_id.encode())
    except SealError as e:
        raise BadInput(f"the input of job {job_id} does not open: {e}") from None
    await service.in_thread(check_input, spec, data)
    return data
