"""The sealed input envelope: a job's input, readable only by the solver the ledger assigned.

Keys: every peer has an X25519 key derived from its Ed25519 seed (HKDF-SHA256 with a fixed
salt and label), so nothing new is stored; its public half goes into the peer's bids
(`job_bid.encryption_key`) and the ledger copies the winner's onto the job.

Envelope (`seal`): a fresh ephemeral X25519 key per message; shared = ECDH(ephemeral,
recipient); key = HKDF-SHA256(shared, salt = ephemeral public || recipient public,
info = LABEL); ChaCha20Poly1305 with a random 96-bit nonce over the plaintext, with the
header and the caller's `context` (the job id) as associated data. Wire form:

    MAGIC (4) || ephemeral public key (32) || nonce (12) || ciphertext + tag (16)

Only the holder of the recipient's private key derives the key; any change to the header,
the ciphertext or the context fails authentication; a sealed input cannot be replayed for
another job because the job id is bound in.

Error handling: every failure to open (truncated, wrong magic, wrong key, tampered, wrong
context, low-order public key) is one `SealError`.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gossip.identity import Identity
from peer.market.errors import MarketError

MAGIC = b"HMS1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + KEY_BYTES + NONCE_BYTES
MAX_PLAINTEXT = (1 << 31) - 1 - TAG_BYTES  # the AEAD's limit on one message
_KEY_SALT = b"hivemesh/x25519/v1"
_KEY_INFO = b"job input encryption key"
LABEL = b"hivemesh/sealed-input/v1"


class SealError(MarketError):
    """A sealed envelope that cannot be made or opened."""

    code = "sealed_input"


def x25519_key(identity: Identity) -> X25519PrivateKey:
    """The peer's X25519 key, derived from its Ed25519 seed (deterministic, never stored)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_KEY_SALT, info=_KEY_INFO)
    return X25519PrivateKey.from_private_bytes(hkdf.derive(identity.seed))


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _aead_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=ephemeral + recipient, info=LABEL)
    return hkdf.derive(shared)


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as e:  # wrong length, or a low-order point giving an all-zero secret
        raise SealError(f"unusable X25519 public key: {e}") from None


def seal(recipient: bytes, plaintext: bytes, context: bytes) -> bytes:
    """Encrypt `plaintext` to the X25519 public key `recipient`, bound to `context`.

    Raises SealError for a malformed key or a plaintext over MAX_PLAINTEXT bytes.
    """
    if not isinstance(recipient, bytes) or len(recipient) != KEY_BYTES:
        raise SealError("the recipient key must be a 32-byte X25519 public key")
    if len(plaintext) > MAX_PLAINTEXT:
        raise SealError(f"an input of {len(plaintext)} bytes exceeds the limit of {MAX_PLAINTEXT}")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = public_bytes(ephemeral)
    key = _aead_key(_exchange(ephemeral, recipient), ephemeral_public, recipient)
    nonce = os.urandom(NONCE_BYTES)
    header = MAGIC + ephemeral_public + nonce
    return header + ChaCha20Poly1305(key).encrypt(nonce, bytes(plaintext), header + context)


def open_sealed(private: X25519PrivateKey, sealed: bytes, context: bytes) -> bytes:
    """Decrypt an envelope made by `seal` for `private`'s public key and the same `context`.

    Raises SealError when it is malformed, not for this key, tampered with or for another context.
    """
    if len(sealed) < HEADER_BYTES + TAG_BYTES or sealed[: len(MAGIC)] != MAGIC:
        raise SealError("not a sealed input (truncated or wrong magic)")
    ephemeral_public = bytes(sealed[len(MAGIC) : len(MAGIC) + KEY_BYTES])
    nonce = bytes(sealed[len(MAGIC) + KEY_BYTES : HEADER_BYTES])
    recipient = public_bytes(private)
    key = _aead_key(_exchange(private, ephemeral_public), ephemeral_public, recipient)
    try:
        return ChaCha20Poly1305(key).decrypt(
            nonce, bytes(sealed[HEADER_BYTES:]), sealed[:HEADER_BYTES] + context
        )
    except InvalidTag:
        raise SealError(
            "the sealed input does not open with this key (wrong recipient or tampered)"
        ) from None
