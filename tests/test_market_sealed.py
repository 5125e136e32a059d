"""The sealed input envelope: only the assigned solver opens it, and any tampering is detected.

Also the tasks-topic validator: malformed market messages and jobs announced by someone other
than their submitter are rejected; other gossip passes untouched.
"""

from __future__ import annotations

import hashlib

import pytest

from gossip.envelope import Envelope
from gossip.identity import Identity
from gossip.transport import Verdict
from peer.market import wire
from peer.market.sealed import HEADER_BYTES, SealError, open_sealed, public_bytes, seal, x25519_key

JOB = b"3" * 64
SECRET = b"the inputs of a job, as safetensors bytes" * 100


def identity(name: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(name.encode()).digest())


def test_the_winner_opens_what_was_sealed_to_its_key() -> None:
    winner = x25519_key(identity("winner"))
    sealed = seal(public_bytes(winner), SECRET, JOB)
    assert SECRET not in sealed
    assert open_sealed(winner, sealed, JOB) == SECRET
    assert open_sealed(x25519_key(identity("winner")), sealed, JOB) == SECRET  # derived again: same key


def test_keys_are_derived_from_the_ed25519_seed_and_differ_per_peer() -> None:
    a, b = identity("a"), identity("b")
    assert public_bytes(x25519_key(a)) == public_bytes(x25519_key(a))
    assert public_bytes(x25519_key(a)) != public_bytes(x25519_key(b))
    assert public_bytes(x25519_key(a)) != a.public  # not the signing key reused


def test_every_seal_is_fresh() -> None:
    key = public_bytes(x25519_key(identity("winner")))
    assert seal(key, SECRET, JOB) != seal(key, SECRET, JOB)


def test_no_one_else_opens_it() -> None:
    sealed = seal(public_bytes(x25519_key(identity("winner"))), SECRET, JOB)
    for other in ("loser", "submitter", "eavesdropper"):
        with pytest.raises(SealError, match="does not open"):
            open_sealed(x25519_key(identity(other)), sealed, JOB)


@pytest.mark.parametrize("offset", [0, 4, 20, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 100, -1])
def test_flipping_any_byte_is_detected(offset: int) -> None:
    winner = x25519_key(identity("winner"))
    sealed = bytearray(seal(public_bytes(winner), SECRET, JOB))
    sealed[offset] ^= 0x01
    with pytest.raises(SealError):
        open_sealed(winner, bytes(sealed), JOB)


def test_truncation_another_job_and_garbage_are_refused() -> None:
    winner = x25519_key(identity("winner"))
    sealed = seal(public_bytes(winner), SECRET, JOB)
    with pytest.raises(SealError):
        open_sealed(winner, sealed[:-1], JOB)
    with pytest.raises(SealError):
        open_sealed(winner, sealed, b"4" * 64)  # replayed for another job
    with pytest.raises(SealError, match="truncated or wrong magic"):
        open_sealed(winner, b"HMS1" + b"\x00" * 10, JOB)
    with pytest.raises(SealError, match="truncated or wrong magic"):
        open_sealed(winner, b"XXXX" + sealed[4:], JOB)


def test_malformed_and_low_order_recipient_keys_are_refused() -> None:
    with pytest.raises(SealError, match="32-byte"):
        seal(b"\x01" * 31, SECRET, JOB)
    with pytest.raises(SealError, match="unusable"):
        seal(b"\x00" * 32, SECRET, JOB)  # a low-order point: the shared secret would be all zeros


def test_an_empty_input_seals_and_opens() -> None:
    winner = x25519_key(identity("winner"))
    assert open_sealed(winner, seal(public_bytes(winner), b"", JOB), JOB) == b""


def _envelope(author: Identity, kind: str, body: object) -> Envelope:
    return Envelope.create(author, kind, 1, body)


def _job_body(submitter: str) -> dict[str, object]:
    note = wire.JobNote(
        "a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64, "training", 10, {}, submitter, False
    )
    return wire.encode(note)[1]


def test_the_tasks_validator_rejects_malformed_market_messages() -> None:
    alice, bob = identity("alice"), identity("bob")
    assert wire.validate_envelope(_envelope(alice, "market.job", _job_body(alice.peer_id))) is Verdict.ACCEPT
    assert wire.validate_envelope(_envelope(bob, "market.job", _job_body(alice.peer_id))) is Verdict.REJECT
    bad = {**_job_body(alice.peer_id), "bounty": -1}
    assert wire.validate_envelope(_envelope(alice, "market.job", bad)) is Verdict.REJECT
    assert wire.validate_envelope(_envelope(alice, "market.nonsense", {})) is Verdict.REJECT
    assert wire.validate_envelope(_envelope(alice, "market.progress", {"job_id": "x"})) is Verdict.REJECT
    assert wire.validate_envelope(_envelope(alice, "demo.hello", {"anything": 1})) is Verdict.ACCEPT


def test_market_messages_carry_only_their_authors_addresses() -> None:
    alice, bob = identity("alice"), identity("bob")
    body = wire.encode(wire.ProgressNote("a" * 64, 1, 2))[1]
    own = {**body, "addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{alice.peer_id}"]}
    assert wire.validate_envelope(_envelope(alice, "market.progress", own)) is Verdict.ACCEPT
    other = {**body, "addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{bob.peer_id}"]}
    assert wire.validate_envelope(_envelope(alice, "market.progress", other)) is Verdict.REJECT
    too_many = {**body, "addrs": own["addrs"] * (wire.MAX_ADDRS + 1)}
    assert wire.validate_envelope(_envelope(alice, "market.progress", too_many)) is Verdict.REJECT


def test_notes_round_trip_through_their_wire_form() -> None:
    notes: list[wire.Note] = [
        wire.ModelNote("a" * 64, "b" * 64, "mlp", 1234),
        wire.JobNote(
            "a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64, "inference", 5, {"max_price": 4}, "p", True
        ),
        wire.InputNote("a" * 64, "b" * 64, "solver1"),
        wire.ProgressNote("a" * 64, 3, 10),
        wire.ResultNote("a" * 64, "b" * 64, 99),
    ]
    for note in notes:
        assert wire.parse(*wire.encode(note)) == note
