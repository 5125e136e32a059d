"""The market agents' journal: the per-job records an agent must not forget when its peer restarts.

The submitter and the solver each keep one journal file under `<data>/market/` (submitter.json,
solver.json): a JSON object {"version": 1, "records": {job id: record}}. A record holds only
what recovery needs (blob ids, the job's announcement, a phase), never a plaintext input: the
submitter keeps its private input as a blob sealed to its own key and journals the blob id.

Every change rewrites the whole file atomically (temp file, fsync, rename, fsync of the
directory), so a peer killed at any moment finds either the old or the new journal. The
ledger stays the source of truth: on start each agent reloads its records and reconciles
them with the committed state; records of settled jobs are dropped.

Error handling: a journal that cannot be read, is not valid JSON, has another version or a
malformed shape is logged as an error, moved aside (`<name>.corrupt`) and the agent starts
empty; it never stops the peer. A journal that cannot be written raises OSError to the
caller, which logs it and keeps its records in memory.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import structlog

from peer.market import wire

log = structlog.get_logger(__name__)

VERSION = 1
Record = dict[str, Any]


class Journal:
    """One agent's durable records, keyed by job id (thread-safe: writes run in worker threads)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}

    def load(self) -> dict[str, Record]:
        """Read the file (blocking); a copy of its records, {} when it is missing or unusable."""
        with self._lock:
            self._records = self._read()
            return {k: dict(v) for k, v in self._records.items()}

    def records(self) -> dict[str, Record]:
        with self._lock:
            return {k: dict(v) for k, v in self._records.items()}

    def put(self, job_id: str, record: Record) -> None:
        """Set the record of `job_id` and write the journal (blocking). Raises OSError, TypeError
        (a value JSON cannot hold)."""
        with self._lock:
            self._replace({**self._records, job_id: dict(record)})

    def merge(self, job_id: str, fields: Record) -> None:
        """Set some fields of the record of `job_id` (created if new), keeping its others, and write
        (blocking). Raises OSError, TypeError (a value JSON cannot hold)."""
        with self._lock:
            self._replace({**self._records, job_id: {**self._records.get(job_id, {}), **fields}})

    def update(self, job_id: str, **changes: Any) -> None:
        """Change some fields of an existing record (no-op for an unknown job) and write (blocking)."""
        with self._lock:
            if job_id not in self._records:
                return
            self._replace({**self._records, job_id: {**self._records[job_id], **changes}})

    def drop(self, *job_ids: str) -> None:
        """Forget these jobs and write, if any of them was kept (blocking)."""
        with self._lock:
            if any(j in self._records for j in job_ids):
                self._replace({k: v for k, v in self._records.items() if k not in job_ids})

    def _read(self) -> dict[str, Record]:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            return self._unusable(f"cannot read it: {e}")
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            version = raw.get("version") if isinstance(raw, dict) else None
            return self._unusable(f"unknown version {version!r} (this peer reads version {VERSION})")
        records = raw.get("records")
        if not isinstance(records, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in records.items()
        ):
            return self._unusable("'records' is not an object of job id -> record")
        return records

    def _unusable(self, why: str) -> dict[str, Record]:
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            os.replace(self.path, aside)
        except OSError as e:
            aside_note = f"and it cannot be moved aside: {e}"
        else:
            aside_note = f"moved to {aside}"
        log.error("market journal unusable, starting empty", path=str(self.path), error=why, kept=aside_note)
        return {}

    def _replace(self, records: dict[str, Record]) -> None:
        """Write `records` as the journal, then keep them (a failed write changes nothing)."""
        data = json.dumps({"version": VERSION, "records": records}, sort_keys=True).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a crash
        finally:
            os.close(fd)
        self._records = records


def note_to_json(note: wire.JobNote) -> dict[str, Any]:
    """A job announcement as a journal field (without the publisher's addresses)."""
    _, body = wire.encode(note)
    return {**body, "addrs": []}


def note_from_json(body: Any) -> wire.JobNote:
    """The job announcement of a journal record. Raises wire.WireError when it is malformed."""
    note = wire.parse(wire.KIND_JOB, body)
    assert isinstance(note, wire.JobNote)
    return note
