"""The market agents' journal (peer/market/journal.py): round trip, atomic replace, unusable files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peer.market import wire
from peer.market.journal import VERSION, Journal, note_from_json, note_to_json

pytestmark = pytest.mark.timeout(30)

NOTE = wire.JobNote(
    "ab" * 32, "cd" * 32, "ef" * 32, "12" * 32, "34" * 32, "inference", 1_000,
    {"max_price": 900}, "12D3KooWPeer", True, ("/ip4/127.0.0.1/tcp/1/p2p/12D3KooWPeer",),
)  # fmt: skip


def test_records_survive_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "market" / "submitter.json"
    journal = Journal(path)
    journal.put("a" * 64, {"note": note_to_json(NOTE), "own_input_blob": "f" * 64, "heights": {"posted": 3}})
    journal.put("b" * 64, {"phase": "working"})
    journal.update("b" * 64, result_blob="e" * 64, size=12)
    journal.update("c" * 64, phase="ignored")  # unknown job: nothing is created
    journal.drop("a" * 64, "d" * 64)

    again = Journal(path).load()
    assert again == {"b" * 64: {"phase": "working", "result_blob": "e" * 64, "size": 12}}
    assert json.loads(path.read_text())["version"] == VERSION
    assert not list(path.parent.glob(".*.tmp"))  # the temp file was renamed over the journal


def test_merge_adds_fields_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "solver.json"
    journal = Journal(path)
    journal.merge("a" * 64, {"note": note_to_json(NOTE)})  # a new job: created
    journal.merge("a" * 64, {"input_blob": "f" * 64})
    journal.merge("a" * 64, {"note": note_to_json(NOTE), "result_blob": "e" * 64, "size": 12})
    expected = {"note": note_to_json(NOTE), "input_blob": "f" * 64, "result_blob": "e" * 64, "size": 12}
    assert Journal(path).load() == {"a" * 64: expected}


def test_a_job_announcement_round_trips_without_addresses(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.json")
    journal.put(NOTE.job_id, {"note": note_to_json(NOTE)})
    note = note_from_json(Journal(tmp_path / "j.json").load()[NOTE.job_id]["note"])
    assert note == wire.JobNote(**{**NOTE.__dict__, "addrs": ()})
    with pytest.raises(wire.WireError):
        note_from_json({**note_to_json(NOTE), "bounty": -1})


def test_a_write_replaces_the_whole_file_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    journal = Journal(path)
    journal.put("a" * 64, {"phase": "working"})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        journal.put("b" * 64, {"not json": object()})  # fails while encoding: the file is untouched
    assert path.read_bytes() == before
    (tmp_path / ".j.json.tmp").write_text("{half a write")  # left by a peer killed mid-write
    assert Journal(path).load() == {"a" * 64: {"phase": "working"}}


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe garbage",
        json.dumps({"version": VERSION + 1, "records": {}}).encode(),
        json.dumps([1, 2, 3]).encode(),
        json.dumps({"version": VERSION, "records": {"a": "not a record"}}).encode(),
        json.dumps({"version": VERSION, "records": []}).encode(),
    ],
)
def test_an_unusable_journal_is_moved_aside_and_the_agent_starts_empty(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "solver.json"
    path.write_bytes(content)
    journal = Journal(path)
    assert journal.load() == {}
    assert (tmp_path / "solver.json.corrupt").read_bytes() == content  # kept for the operator
    assert "market journal unusable" in capsys.readouterr().out
    journal.put("a" * 64, {"phase": "working"})  # and it works from there on
    assert Journal(path).load() == {"a" * 64: {"phase": "working"}}


def test_a_missing_journal_is_empty(tmp_path: Path) -> None:
    assert Journal(tmp_path / "none" / "j.json").load() == {}
