"""Signed, versioned msgpack envelopes: the unit of every gossip message.

Wire form: msgpack map {"v": version, "k": kind, "a": author public key, "n": author
sequence, "b": body, "s": signature}. The signature covers a domain tag plus the canonical
encoding of [v, k, a, n, b]; the message id is the sha256 of those same bytes, so a
message relayed by anyone (anti-entropy included) keeps its id and its author.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgpack

from gossip.errors import InvalidMessage, MessageTooLarge, UnknownVersion
from gossip.identity import Identity, peer_id_from_public, verify
from gossip.transport import MAX_GOSSIP_BYTES

VERSION = 1
SUPPORTED_VERSIONS = frozenset({VERSION})
_DOMAIN = b"hivemesh/envelope/v1\x00"
_FIELDS = frozenset({"v", "k", "a", "n", "b", "s"})


def packb(obj: Any) -> bytes:
    """Canonical msgpack: the same object always gives the same bytes."""
    return msgpack.packb(obj, use_bin_type=True)


def unpackb(data: bytes, max_bytes: int = MAX_GOSSIP_BYTES) -> Any:
    """Decode untrusted msgpack; any failure is InvalidMessage, never a crash."""
    if len(data) > max_bytes:
        raise MessageTooLarge(len(data), max_bytes)
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises many unrelated types on garbage
        raise InvalidMessage(f"malformed msgpack: {type(e).__name__}: {e}") from e


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: str
    author: bytes  # Ed25519 public key, 32 bytes
    seq: int
    body: Any
    signature: bytes
    version: int = VERSION

    @property
    def signed_bytes(self) -> bytes:
        return _DOMAIN + packb([self.version, self.kind, self.author, self.seq, self.body])

    @property
    def msg_id(self) -> bytes:
        return hashlib.sha256(self.signed_bytes).digest()

    @property
    def author_id(self) -> str:
        return peer_id_from_public(self.author)

    def encode(self) -> bytes:
        data = packb(
            {
                "v": self.version,
                "k": self.kind,
                "a": self.author,
                "n": self.seq,
                "b": self.body,
                "s": self.signature,
            }
        )
        if len(data) > MAX_GOSSIP_BYTES:
            raise MessageTooLarge(len(data), MAX_GOSSIP_BYTES)
        return data

    @classmethod
    def create(cls, identity: Identity, kind: str, seq: int, body: Any) -> Envelope:
        unsigned = cls(kind=kind, author=identity.public, seq=seq, body=body, signature=b"")
        return cls(
            kind=kind,
            author=identity.public,
            seq=seq,
            body=body,
            signature=identity.sign(unsigned.signed_bytes),
        )


def decode(data: bytes) -> Envelope:
    """Parse and verify an envelope from the network. Raises InvalidMessage (or a subclass)."""
    raw = unpackb(data)
    if not isinstance(raw, dict) or set(raw) != _FIELDS:
        raise InvalidMessage("envelope must be a map with exactly the fields v, k, a, n, b, s")
    version, kind, author, seq, sig = raw["v"], raw["k"], raw["a"], raw["n"], raw["s"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidMessage("envelope version must be an integer")
    if version not in SUPPORTED_VERSIONS:
        raise UnknownVersion(
            f"envelope version {version} not supported (we speak {sorted(SUPPORTED_VERSIONS)})"
        )
    if not isinstance(kind, str) or not 0 < len(kind) <= 64:
        raise InvalidMessage("envelope kind must be a string of 1..64 characters")
    if not isinstance(author, bytes) or len(author) != 32:
        raise InvalidMessage("envelope author must be a 32-byte Ed25519 public key")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**64:
        raise InvalidMessage("envelope seq must be an unsigned 64-bit integer")
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise InvalidMessage("envelope signature must be 64 bytes")
    env = Envelope(kind=kind, author=author, seq=seq, body=raw["b"], signature=sig, version=version)
    if not verify(author, sig, env.signed_bytes):
        raise InvalidMessage(f"bad signature on {kind} envelope from {env.author_id}")
    return env
