"""Ed25519 identities: signing, verification and libp2p-compatible peer ids.

Key files are the raw 32-byte Ed25519 seed, written atomically with mode 0600; a file that
group or others can read is refused, as ssh does.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import base58
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from gossip.errors import GossipError


class KeyFileError(GossipError):
    """A key file is missing, malformed or readable by others."""


# Peer ids and keys are converted on every tx and message (base58 is slow in Python); the same
# few thousand accounts recur, so both directions are cached (bounded; errors are not cached).
ID_CACHE_SIZE = 1 << 16


def peer_id_from_public(public: bytes) -> str:
    """libp2p peer id of an Ed25519 key: base58(identity-multihash(protobuf PublicKey))."""
    if len(public) != 32:
        raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(public)}")
    return _peer_id(bytes(public))


@functools.lru_cache(maxsize=ID_CACHE_SIZE)
def _peer_id(public: bytes) -> str:
    proto = b"\x08\x01\x12\x20" + public  # KeyType=Ed25519, Data=<32 bytes>
    return base58.b58encode(b"\x00" + bytes([len(proto)]) + proto).decode()


def public_from_peer_id(peer_id: str) -> bytes:
    """Inverse of peer_id_from_public; raises ValueError for anything else."""
    if not isinstance(peer_id, str):
        raise ValueError(f"a peer id is a string, got {type(peer_id).__name__}")
    return _public(peer_id)


@functools.lru_cache(maxsize=ID_CACHE_SIZE)
def _public(peer_id: str) -> bytes:
    raw = base58.b58decode(peer_id)
    if len(raw) != 38 or raw[:6] != b"\x00\x24\x08\x01\x12\x20":
        raise ValueError(f"not an Ed25519 peer id: {peer_id!r}")
    return raw[6:]


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Ed25519 verification by libsodium: half the CPU of OpenSSL's per call, and every tx,
    vote and envelope is verified once per node (benchmarks/ledger_throughput.py)."""
    if len(public) != 32 or len(signature) != 64:
        return False
    try:
        crypto_sign_open(signature + message, public)  # the detached form is not exported
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """A peer's signing key and the ids derived from it."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def peer_id(self) -> str:
        return peer_id_from_public(self.public)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600 (never visible half-written or world-readable)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, self.seed)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Identity:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError as e:
            raise KeyFileError(f"no key file at {path}; run `hivemesh init`") from e
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"key file {path} is accessible by group/others (mode {stat.S_IMODE(mode):o}); "
                f"run `chmod 600 {path}`"
            )
        seed = path.read_bytes()
        if len(seed) != 32:
            raise KeyFileError(f"key file {path} must hold a 32-byte Ed25519 seed, found {len(seed)} bytes")
        return cls.from_seed(seed)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        if path.exists():
            return cls.load(path)
        ident = cls.generate()
        ident.save(path)
        return ident
