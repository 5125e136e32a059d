"""Signed transactions: wire format, body schemas, signing, strict decoding and hashing.

Wire form: the canonical msgpack (keys sorted, shortest encodings) of the map
{"body", "chain", "fee", "nonce", "sender", "sig", "type", "v"}. The signature covers
`_DOMAIN + canonical([v, chain, type, sender, nonce, fee, body])`; the tx hash is the sha256 of
the whole wire form. `decode_tx` refuses any bytes that are not exactly the canonical
encoding of a well-formed tx, so one tx has one encoding and one hash (no malleability).

Adding a tx type: add its body schema to `BODY_SCHEMAS` here and its handler to
`ledger.apply.HANDLERS` (a test checks that the two tables list the same names).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gossip.envelope import packb, unpackb
from gossip.errors import GossipError
from gossip.identity import Identity, peer_id_from_public, public_from_peer_id, verify
from ledger.errors import BadSignature, InvalidTx, LedgerError
from ledger.merkle import MAX_LEAVES, MAX_PROOF_LEN
from ledger.params import BPS, PARAM_NAMES

VERSION = 1
MAX_TX_BYTES = 64 * 1024
MAX_UINT64 = 2**64 - 1
MAX_CHAIN_ID_LEN = 64
ROLES = ("model_owner", "solver", "validator", "verifier")
_DOMAIN = b"hivemesh/tx/v1\x00"
_WIRE_KEYS = frozenset({"body", "chain", "fee", "nonce", "sender", "sig", "type", "v"})

FieldCheck = Callable[[Any], None]


def canonical(obj: Any) -> Any:
    """The same value with every map's keys in sorted order, so `packb` gives canonical bytes."""
    if isinstance(obj, dict):
        return {k: canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list | tuple):
        return [canonical(v) for v in obj]
    return obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_uint(value: Any, what: str = "value") -> None:
    if not _is_int(value) or not 0 <= value <= MAX_UINT64:
        raise InvalidTx(f"{what} must be an unsigned 64-bit integer, got {value!r}")


def check_amount(value: Any) -> None:
    if not _is_int(value) or not 0 < value <= MAX_UINT64:
        raise InvalidTx(f"amount must be a positive 64-bit integer, got {value!r}")


def check_bps(value: Any) -> None:
    if not _is_int(value) or not 0 <= value <= BPS:
        raise InvalidTx(f"basis points must be an integer in [0, {BPS}], got {value!r}")


def check_address(value: Any) -> None:
    """An address is the libp2p peer id of an Ed25519 key, in its one canonical spelling."""
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise InvalidTx(f"address must be a peer id string, got {value!r}")
    try:
        ok = peer_id_from_public(public_from_peer_id(value)) == value
    except ValueError:
        ok = False
    if not ok:
        raise InvalidTx(f"address {value!r} is not an Ed25519 peer id")


def check_role(value: Any) -> None:
    if not isinstance(value, str) or value not in ROLES:
        raise InvalidTx(f"role must be one of {', '.join(ROLES)}, got {value!r}")


def check_vote_option(value: Any) -> None:
    if not isinstance(value, str) or value not in ("yes", "no"):
        raise InvalidTx(f"vote option must be 'yes' or 'no', got {value!r}")


def check_param_changes(value: Any) -> None:
    if not isinstance(value, dict) or not 0 < len(value) <= len(PARAM_NAMES):
        raise InvalidTx(f"changes must be a non-empty map of at most {len(PARAM_NAMES)} params")
    for name, new in value.items():
        if name not in PARAM_NAMES:
            raise InvalidTx(f"unknown param {name!r}")
        check_uint(new, f"param {name}")


# ---- market fields (ledger.models, ledger.jobs) ----
JOB_KINDS = ("inference", "training")
MIN_JOB_SALT_BYTES, MAX_JOB_SALT_BYTES = 16, 32
JOB_REQUIREMENTS = ("max_price", "min_reputation", "min_stake")
MAX_ARCH_LEN = 32
_HEX = frozenset("0123456789abcdef")
_ARCH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")


def check_hash_hex(value: Any) -> None:
    """A content hash: 64 lowercase hex characters (sha256), the one canonical spelling."""
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise InvalidTx(f"hash must be 64 lowercase hex characters, got {value!r}")


def check_arch(value: Any) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ARCH_LEN or not set(value) <= _ARCH_CHARS:
        raise InvalidTx(f"arch must be 1..{MAX_ARCH_LEN} characters of [a-z0-9_.-], got {value!r}")


def check_job_kind(value: Any) -> None:
    if not isinstance(value, str) or value not in JOB_KINDS:
        raise InvalidTx(f"job kind must be one of {', '.join(JOB_KINDS)}, got {value!r}")


def check_x25519_key(value: Any) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise InvalidTx("encryption_key must be a 32-byte X25519 public key")


def check_signature(value: Any) -> None:
    if not isinstance(value, bytes) or len(value) != 64:
        raise InvalidTx("quote_sig must be a 64-byte Ed25519 signature")


def check_job_salt(value: Any) -> None:
    if not isinstance(value, bytes) or not MIN_JOB_SALT_BYTES <= len(value) <= MAX_JOB_SALT_BYTES:
        raise InvalidTx(f"job_salt must be {MIN_JOB_SALT_BYTES}..{MAX_JOB_SALT_BYTES} bytes")


def check_canary(value: Any) -> None:
    """A canary commitment (hex sha256) sealed with the job, or "" for none."""
    if value != "":
        check_hash_hex(value)


def check_requirements(value: Any) -> None:
    """A map of some of JOB_REQUIREMENTS to unsigned integers (min_reputation at most 10_000)."""
    if not isinstance(value, dict) or not set(value) <= set(JOB_REQUIREMENTS):
        raise InvalidTx(f"requirements must be a map with keys among {', '.join(JOB_REQUIREMENTS)}")
    for name in sorted(value):
        check_uint(value[name], f"requirement {name}")
    if value.get("min_reputation", 0) > BPS:
        raise InvalidTx(f"requirement min_reputation must be at most {BPS}")


# ---- trust-game fields (ledger.disputes, ledger.canary, ledger.audits, ledger.repvote) ----
MAX_EVIDENCE_BYTES = 1024
MIN_SALT_BYTES, MAX_SALT_BYTES = 16, 64


def check_bool(value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidTx(f"expected true or false, got {value!r}")


def check_dispute_claim(value: Any) -> None:
    """{"index": leaf index the challenger says is wrong, "hash": the challenger's value there}."""
    if not isinstance(value, dict) or set(value) != {"index", "hash"}:
        raise InvalidTx("claim must be a map with exactly 'index' and 'hash'")
    check_uint(value["index"], "claim index")
    if value["index"] >= MAX_LEAVES:
        raise InvalidTx(f"claim index must be below {MAX_LEAVES}")
    check_hash_hex(value["hash"])


def check_proof(value: Any) -> None:
    if not isinstance(value, list) or len(value) > MAX_PROOF_LEN:
        raise InvalidTx(f"proof must be a list of at most {MAX_PROOF_LEN} sibling hashes")
    if not all(isinstance(h, bytes) and len(h) == 32 for h in value):
        raise InvalidTx("every proof entry must be 32 bytes")


def check_referee_verdict(value: Any) -> None:
    if not isinstance(value, str) or value not in ("solver", "challenger"):
        raise InvalidTx(f"honest must be 'solver' or 'challenger', got {value!r}")


def check_report_verdict(value: Any) -> None:
    if not isinstance(value, str) or value not in ("ok", "bad"):
        raise InvalidTx(f"verdict must be 'ok' or 'bad', got {value!r}")


def check_seed(value: Any) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise InvalidTx("sample_seed_used must be 32 bytes")


def check_salt(value: Any) -> None:
    if not isinstance(value, bytes) or not MIN_SALT_BYTES <= len(value) <= MAX_SALT_BYTES:
        raise InvalidTx(f"salt must be {MIN_SALT_BYTES}..{MAX_SALT_BYTES} bytes")


def check_evidence(value: Any) -> None:
    if not isinstance(value, bytes) or len(value) > MAX_EVIDENCE_BYTES:
        raise InvalidTx(f"evidence must be at most {MAX_EVIDENCE_BYTES} bytes")


def check_score(value: Any) -> None:
    if not _is_int(value) or not 0 <= value <= BPS:
        raise InvalidTx(f"score must be an integer in [0, {BPS}], got {value!r}")


# Body schema per tx type: field name -> check. A body must have exactly these fields.
BODY_SCHEMAS: dict[str, dict[str, FieldCheck]] = {
    "transfer": {"to": check_address, "amount": check_amount},
    "register": {"role": check_role},
    "stake": {"amount": check_amount, "commission_bps": check_bps},
    "unstake": {"amount": check_amount},
    "delegate": {"validator": check_address, "amount": check_amount},
    "undelegate": {"validator": check_address, "amount": check_amount},
    "unjail": {},
    "param_change": {"changes": check_param_changes},
    "vote": {"proposal": check_uint, "option": check_vote_option},
    "model_register": {"model_hash": check_hash_hex, "arch": check_arch, "royalty_bps": check_bps},
    "model_transfer": {"model_hash": check_hash_hex, "to": check_address},
    "job_post": {
        "spec_hash": check_hash_hex,
        "model_hash": check_hash_hex,
        "kind": check_job_kind,
        "bounty": check_amount,
        "bid_window_blocks": check_uint,
        "deadline_blocks": check_uint,
        "challenge_window_blocks": check_uint,
        "requirements": check_requirements,
    },
    "job_award": {
        "spec_hash": check_hash_hex,
        "model_hash": check_hash_hex,
        "kind": check_job_kind,
        "bounty": check_amount,
        "deadline_blocks": check_uint,
        "challenge_window_blocks": check_uint,
        "requirements": check_requirements,
        "solver": check_address,
        "price": check_amount,
        "bond": check_uint,
        "encryption_key": check_x25519_key,
        "quote_expires": check_uint,
        "quote_sig": check_signature,
        "job_salt": check_job_salt,
        "canary": check_canary,
    },
    "job_bid": {
        "job_id": check_hash_hex,
        "price": check_amount,
        "bond": check_uint,
        "encryption_key": check_x25519_key,
    },
    "job_commit": {
        "job_id": check_hash_hex,
        "output_hash": check_hash_hex,
        "trace_root": check_hash_hex,
        "result_size": check_uint,
    },
    "job_cancel": {"job_id": check_hash_hex},
    "job_accept": {"job_id": check_hash_hex},
    "dispute_open": {"job_id": check_hash_hex, "bond": check_amount, "claim": check_dispute_claim},
    "dispute_bisect": {
        "dispute_id": check_hash_hex,
        "mid": check_uint,
        "step": check_uint,
        "hash": check_hash_hex,
        "n_leaves": check_uint,
        "proof": check_proof,
    },
    "dispute_respond": {"dispute_id": check_hash_hex, "agree": check_bool},
    "dispute_verdict": {"dispute_id": check_hash_hex, "honest": check_referee_verdict},
    "canary_seal": {"job_id": check_hash_hex, "commitment": check_hash_hex},
    "canary_reveal": {"job_id": check_hash_hex, "expected_output_hash": check_hash_hex, "salt": check_salt},
    "verify_report": {
        "job_id": check_hash_hex,
        "verdict": check_report_verdict,
        "sample_seed_used": check_seed,
    },
    "vote_open": {
        "subject": check_address,
        "role": check_role,
        "evidence": check_evidence,
        "deposit": check_uint,
    },
    "vote_commit": {"vote_id": check_hash_hex, "commitment": check_hash_hex},
    "vote_reveal": {"vote_id": check_hash_hex, "score": check_score, "salt": check_salt},
}


def check_body(tx_type: Any, body: Any) -> None:
    """Raise InvalidTx unless `body` is exactly the schema of `tx_type`."""
    if not isinstance(tx_type, str) or tx_type not in BODY_SCHEMAS:
        raise InvalidTx(f"unknown tx type {tx_type!r}")
    schema = BODY_SCHEMAS[tx_type]
    if not isinstance(body, dict):
        raise InvalidTx(f"{tx_type} body must be a map")
    if set(body) != set(schema):
        raise InvalidTx(
            f"{tx_type} body must have exactly the fields {sorted(schema)}, got {sorted(map(str, body))}"
        )
    for name in sorted(schema):
        schema[name](body[name])


@dataclass(frozen=True, slots=True)
class Tx:
    """An unsigned transaction. `sender` is the Ed25519 public key; its address is derived."""

    type: str
    sender: bytes
    nonce: int
    fee: int
    body: Mapping[str, Any]
    chain_id: str

    @property
    def sender_address(self) -> str:
        return peer_id_from_public(self.sender)

    def signing_bytes(self) -> bytes:
        return _DOMAIN + packb(
            [VERSION, self.chain_id, self.type, self.sender, self.nonce, self.fee, canonical(dict(self.body))]
        )

    def check(self) -> None:
        """Raise InvalidTx unless every field is well-formed."""
        if not isinstance(self.chain_id, str) or not 0 < len(self.chain_id) <= MAX_CHAIN_ID_LEN:
            raise InvalidTx(f"chain id must be a string of 1..{MAX_CHAIN_ID_LEN} characters")
        if not isinstance(self.sender, bytes) or len(self.sender) != 32:
            raise InvalidTx("sender must be a 32-byte Ed25519 public key")
        check_uint(self.nonce, "nonce")
        check_uint(self.fee, "fee")
        check_body(self.type, self.body)


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A tx and its signature. `encoded` is its wire form, `hash` the sha256 of that."""

    tx: Tx
    signature: bytes
    encoded: bytes = field(init=False, repr=False, compare=False)
    hash: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        t = self.tx
        wire = {
            "body": dict(t.body),
            "chain": t.chain_id,
            "fee": t.fee,
            "nonce": t.nonce,
            "sender": t.sender,
            "sig": self.signature,
            "type": t.type,
            "v": VERSION,
        }
        encoded = packb(canonical(wire))
        object.__setattr__(self, "encoded", encoded)
        object.__setattr__(self, "hash", hashlib.sha256(encoded).digest())

    @property
    def sender_address(self) -> str:
        return self.tx.sender_address

    def check(self) -> None:
        """Raise InvalidTx unless the tx is well-formed and the signature is 64 bytes (not verified)."""
        if not isinstance(self.signature, bytes) or len(self.signature) != 64:
            raise InvalidTx("signature must be 64 bytes")
        self.tx.check()


def sign_tx(
    identity: Identity, tx_type: str, body: Mapping[str, Any], *, nonce: int, fee: int, chain_id: str
) -> SignedTx:
    """Build, check and sign a tx from `identity`. Raises InvalidTx on a malformed body."""
    tx = Tx(type=tx_type, sender=identity.public, nonce=nonce, fee=fee, body=dict(body), chain_id=chain_id)
    tx.check()
    tx = replace(tx, body=canonical(tx.body))
    stx = SignedTx(tx, identity.sign(tx.signing_bytes()))
    if len(stx.encoded) > MAX_TX_BYTES:
        raise InvalidTx(f"tx of {len(stx.encoded)} bytes exceeds the limit of {MAX_TX_BYTES}")
    return stx


def decode_wire_map(
    data: Any, what: str, limit: int, keys: frozenset[str], error: type[LedgerError], msgpack_prefix: str = ""
) -> tuple[bytes, dict[str, Any]]:
    """The shared prologue of every strict decoder here: bytes, size limit, msgpack, exact field set.

    Returns the bytes and the decoded map; raises `error` naming `what` on any failure.
    """
    if not isinstance(data, bytes | bytearray):
        raise error(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > limit:
        raise error(f"{what} of {len(data)} bytes exceeds the limit of {limit}")
    try:
        raw = unpackb(data, max_bytes=limit)
    except GossipError as e:
        raise error(f"{msgpack_prefix}{e}") from e
    if not isinstance(raw, dict) or set(raw) != keys:
        raise error(f"{what} must be a map with exactly the fields {sorted(keys)}")
    return data, raw


def decode_tx(data: bytes) -> SignedTx:
    """Parse untrusted bytes into a SignedTx. Checks shape and types, not the signature.

    Raises:
        InvalidTx: oversized, malformed msgpack, wrong fields or types, or non-canonical bytes.
    """
    data, raw = decode_wire_map(data, "tx", MAX_TX_BYTES, _WIRE_KEYS, InvalidTx)
    if raw["v"] != VERSION or not _is_int(raw["v"]):
        raise InvalidTx(f"tx version {raw['v']!r} not supported (we speak {VERSION})")
    tx = Tx(
        type=raw["type"],
        sender=raw["sender"],
        nonce=raw["nonce"],
        fee=raw["fee"],
        body=raw["body"],
        chain_id=raw["chain"],
    )
    tx.check()  # before SignedTx(), whose encoding assumes well-formed fields
    if not isinstance(raw["sig"], bytes) or len(raw["sig"]) != 64:
        raise InvalidTx("signature must be 64 bytes")
    stx = SignedTx(tx, raw["sig"])
    if stx.encoded != data:
        raise InvalidTx("tx bytes are not in canonical encoding")
    return stx


def signature_ok(stx: SignedTx) -> bool:
    return verify(stx.tx.sender, stx.signature, stx.tx.signing_bytes())


def verify_tx(stx: SignedTx) -> None:
    """Raise BadSignature unless the signature verifies (about 60 us: do it once, cache the hash)."""
    if not signature_ok(stx):
        raise BadSignature(stx.sender_address)
