"""Market messages on the tasks topic: kinds, body schemas, parsing and the topic validator.

Every market message is a signed gossip envelope whose kind starts with "market." and whose
body is a msgpack map with exactly these fields (hashes and blob ids: 64 lowercase hex):

  market.model     {model_hash, blob, arch, size}         the author serves this model's blob
  market.job       {job_id, spec_hash, spec_blob, model_hash, model_blob, kind, bounty,
                    requirements, submitter, private_input}    a posted job (author = submitter)
  market.input     {job_id, blob, solver}                  the sealed input for the assigned solver
  market.progress  {job_id, done, total}                   the solver's progress
  market.result    {job_id, blob, size}                    the solver serves the result blob

Every body also carries "addrs": the author's own dialable multiaddrs (ending in /p2p/<author>),
so a peer that must fetch a blob from it can dial it without being connected already.

The validator (`validate_envelope`) accepts other kinds untouched (operators gossip free-form
messages there too) and rejects a market message whose body does not fit its schema, a job
announced by anyone but its submitter, or addresses that name another peer: no honest peer
relays those. Who may send an
input, progress or result depends on ledger state, so the consumers check that (book.py).
Publishers re-announce what is still pending every REANNOUNCE_S seconds (gossip is best effort).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from gossip.envelope import Envelope
from gossip.transport import Verdict

PREFIX = "market."
KIND_MODEL = "market.model"
KIND_JOB = "market.job"
KIND_INPUT = "market.input"
KIND_PROGRESS = "market.progress"
KIND_RESULT = "market.result"
REANNOUNCE_S = 4.0
MAX_UINT64 = 2**64 - 1
JOB_KINDS = ("inference", "training")
REQUIREMENTS = ("max_price", "min_reputation", "min_stake")
MAX_ADDRS = 8
MAX_ADDR_LEN = 256
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ARCH = re.compile(r"[a-z0-9_.-]{1,32}")


class WireError(ValueError):
    """A market message body that does not fit its schema."""


def _hash(value: Any) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise WireError(f"expected 64 lowercase hex characters, got {value!r}")
    return value


def _uint(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_UINT64:
        raise WireError(f"expected an unsigned 64-bit integer, got {value!r}")
    return value


def _peer(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isalnum():
        raise WireError(f"expected a peer id, got {value!r}")
    return value


def _arch(value: Any) -> str:
    if not isinstance(value, str) or not _ARCH.fullmatch(value):
        raise WireError(f"expected an architecture name, got {value!r}")
    return value


def _kind(value: Any) -> str:
    if value not in JOB_KINDS:
        raise WireError(f"job kind must be one of {JOB_KINDS}, got {value!r}")
    return str(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise WireError(f"expected true or false, got {value!r}")
    return value


def _addrs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ADDRS:
        raise WireError(f"addrs must be a list of at most {MAX_ADDRS} multiaddrs")
    if not all(isinstance(a, str) and 0 < len(a) <= MAX_ADDR_LEN for a in value):
        raise WireError(f"each address must be a multiaddr string of at most {MAX_ADDR_LEN} characters")
    return tuple(value)


def _requirements(value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or not set(value) <= set(REQUIREMENTS):
        raise WireError(f"requirements must be a map with keys among {REQUIREMENTS}")
    return {k: _uint(v) for k, v in sorted(value.items())}


@dataclass(frozen=True)
class ModelNote:
    model_hash: str
    blob: str
    arch: str
    size: int
    addrs: tuple[str, ...] = ()  # the author's dialable addresses (filled in when published)


@dataclass(frozen=True)
class JobNote:
    job_id: str
    spec_hash: str
    spec_blob: str
    model_hash: str
    model_blob: str
    kind: str
    bounty: int
    requirements: dict[str, int]
    submitter: str
    private_input: bool
    addrs: tuple[str, ...] = ()  # the author's dialable addresses (filled in when published)


@dataclass(frozen=True)
class InputNote:
    job_id: str
    blob: str
    solver: str
    addrs: tuple[str, ...] = ()  # the author's dialable addresses (filled in when published)


@dataclass(frozen=True)
class ProgressNote:
    job_id: str
    done: int
    total: int
    addrs: tuple[str, ...] = ()  # the author's dialable addresses (filled in when published)


@dataclass(frozen=True)
class ResultNote:
    job_id: str
    blob: str
    size: int
    addrs: tuple[str, ...] = ()  # the author's dialable addresses (filled in when published)


Note = ModelNote | JobNote | InputNote | ProgressNote | ResultNote

_SCHEMAS: dict[str, tuple[type, dict[str, Callable[[Any], Any]]]] = {
    KIND_MODEL: (
        ModelNote,
        {"model_hash": _hash, "blob": _hash, "arch": _arch, "size": _uint, "addrs": _addrs},
    ),
    KIND_JOB: (
        JobNote,
        {
            "job_id": _hash,
            "spec_hash": _hash,
            "spec_blob": _hash,
            "model_hash": _hash,
            "model_blob": _hash,
            "kind": _kind,
            "bounty": _uint,
            "requirements": _requirements,
            "submitter": _peer,
            "private_input": _flag,
            "addrs": _addrs,
        },
    ),
    KIND_INPUT: (InputNote, {"job_id": _hash, "blob": _hash, "solver": _peer, "addrs": _addrs}),
    KIND_PROGRESS: (ProgressNote, {"job_id": _hash, "done": _uint, "total": _uint, "addrs": _addrs}),
    KIND_RESULT: (ResultNote, {"job_id": _hash, "blob": _hash, "size": _uint, "addrs": _addrs}),
}
_KIND_OF = {cls: kind for kind, (cls, _) in _SCHEMAS.items()}


def parse(kind: str, body: Any) -> Note:
    """The note a market message carries. Raises WireError for an unknown kind or a bad body."""
    schema = _SCHEMAS.get(kind)
    if schema is None:
        raise WireError(f"unknown market message kind {kind!r}")
    cls, checks = schema
    if not isinstance(body, dict) or set(body) != set(checks):
        got = sorted(map(str, body)) if isinstance(body, dict) else type(body).__name__
        raise WireError(f"{kind} body must have exactly the fields {sorted(checks)}, got {got}")
    return cls(**{name: check(body[name]) for name, check in checks.items()})  # type: ignore[no-any-return]


def encode(note: Note) -> tuple[str, dict[str, Any]]:
    """(kind, body) to publish for a note."""
    body = {f.name: getattr(note, f.name) for f in fields(note)}
    return _KIND_OF[type(note)], {**body, "addrs": list(note.addrs)}


def is_market(envelope: Envelope) -> bool:
    return envelope.kind.startswith(PREFIX)


def validate_envelope(envelope: Envelope) -> Verdict:
    """The tasks topic validator: reject malformed market messages and jobs not sent by their submitter."""
    if not is_market(envelope):
        return Verdict.ACCEPT
    try:
        note = parse(envelope.kind, envelope.body)
    except WireError:
        return Verdict.REJECT
    if isinstance(note, JobNote) and note.submitter != envelope.author_id:
        return Verdict.REJECT
    if not all(a.endswith(f"/p2p/{envelope.author_id}") for a in note.addrs):
        return Verdict.REJECT  # a peer advertises only its own addresses
    return Verdict.ACCEPT
