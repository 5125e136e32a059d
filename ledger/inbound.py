"""What the ledger accepts from gossip: the TOPIC_TX and TOPIC_CONSENSUS validators and wire kinds.

Both validators run synchronously inside the gossip node's validation path, before a message
is forwarded, against the latest committed state (read-only). Verdicts follow the gossip
rules: REJECT only what no honest peer would relay (it penalises the forwarder), IGNORE what
is merely useless to us now.

TOPIC_TX, kind "tx", body = tx wire bytes; or kind "txs", body = a list of up to
MAX_BATCH_TXS of them (txs travel in batches: py-libp2p spends milliseconds per message
per hop, so one message per tx lets a burst of txs starve consensus):
  REJECT  any tx malformed or non-canonical, for another chain, or badly signed. A tx whose
          hash is in the node's verified set (its mempool's) is not verified again, and one
          verified here is added to it, so a node verifies each tx's signature once.
  IGNORE  no tx that could still apply: unknown sender, a nonce below the sender's account
          nonce (already used), a fee below the minimum. Otherwise accepted; the mempool
          decides on each tx's admission.

TOPIC_CONSENSUS, kind "consensus", body = Proposal.to_wire() or Vote.to_wire(), or kind
"cproposal", body = CompactProposal.to_wire() (ledger.compact; its signature is checked here,
its txs are assembled later by the owner):
  REJECT  malformed, a signer outside the validator set of the message's height, a bad
          signature. Checked only for heights we can judge: the set of height H is known from
          the state once H <= state.height + 2.
  IGNORE  heights already committed here, and heights too far ahead to check (a hint that we
          are behind: `Checked.far_height` tells the caller to block-sync).
TOPIC_CONSENSUS, kind "evidence", body = DuplicateVoteEvidence.to_wire():
  REJECT  malformed, or a signature that does not verify with the validator's registered key.
  IGNORE  unknown validator, or an offence already slashed.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gossip.envelope import Envelope
from gossip.identity import verify
from gossip.transport import Verdict
from ledger.compact import KIND_COMPACT, CompactProposal
from ledger.consensus import (
    ConsensusError,
    DecidedBlock,
    DuplicateVoteEvidence,
    MalformedMessage,
    Proposal,
    Validator,
    ValidatorSet,
    Vote,
    decode_message,
    verify_evidence,
)
from ledger.errors import BadSignature, InvalidTx
from ledger.state import State, validator_set_at
from ledger.tx import SignedTx, decode_tx, verify_tx

KIND_TX = "tx"
KIND_TXS = "txs"
MAX_BATCH_TXS = 1024
KIND_CONSENSUS = "consensus"
KIND_EVIDENCE = "evidence"
HEIGHTS_AHEAD = 2  # the validator set of state.height + 2 is already fixed by the state


@dataclass(frozen=True, slots=True)
class Checked:
    """A validator's verdict, the reason for it, and the height of a message too far ahead to check."""

    verdict: Verdict
    reason: str = ""
    far_height: int = 0


ACCEPTED = Checked(Verdict.ACCEPT)


class SignatureCache:
    """Signatures already verified, so a re-broadcast vote in a new envelope costs a hash, not a verify.

    Keyed by sha256(key, signature, message): a hit proves that exact triple verified before.
    Bounded (least recently used out); used only from the synchronous gossip validation path.
    """

    def __init__(self, capacity: int = 16_384) -> None:
        self.capacity = capacity
        self._ok: OrderedDict[bytes, None] = OrderedDict()

    def verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        digest = hashlib.sha256(public + signature + message).digest()
        if digest in self._ok:
            self._ok.move_to_end(digest)
            return True
        if not verify(public, signature, message):
            return False
        self._ok[digest] = None
        if len(self._ok) > self.capacity:
            self._ok.popitem(last=False)
        return True


class VerifiedTxs(Protocol):
    """Hashes of txs whose signature verified on this node (the mempool implements it)."""

    def is_verified(self, tx_hash: bytes) -> bool: ...

    def remember_verified(self, tx_hash: bytes) -> None: ...


def txs_of(envelope: Envelope) -> list[bytes]:
    """The tx bytes an envelope carries (kind "tx": one, kind "txs": a batch). Raises ValueError."""
    body = envelope.body
    if envelope.kind == KIND_TX and isinstance(body, bytes):
        return [body]
    if (
        envelope.kind == KIND_TXS
        and isinstance(body, list)
        and 0 < len(body) <= MAX_BATCH_TXS
        and all(isinstance(tx, bytes) for tx in body)
    ):
        return body
    raise ValueError(f"not a tx envelope: kind {envelope.kind!r} with a {type(body).__name__} body")


def check_tx_envelope(
    envelope: Envelope,
    state: State,
    verified: VerifiedTxs | None = None,
    decode: Callable[[bytes], SignedTx] = decode_tx,
) -> Checked:
    """Verdict on gossiped txs (see the module docstring); a batch is judged as a whole.

    Signatures are checked for the whole batch before any is remembered in `verified`;
    `decode` may be a node's caching decoder (ledger.txcache).
    """
    try:
        raws = txs_of(envelope)
    except ValueError as e:
        return Checked(Verdict.REJECT, str(e))
    useful = 0
    fresh: list[bytes] = []
    known: Callable[[bytes], bool] = verified.is_verified if verified is not None else _never
    for i, raw in enumerate(raws):
        try:
            stx = decode(raw)
            if stx.tx.chain_id != state.chain_id:
                return Checked(Verdict.REJECT, f"tx #{i} is for chain {stx.tx.chain_id!r}")
            if not known(stx.hash):
                verify_tx(stx)
                fresh.append(stx.hash)
        except (InvalidTx, BadSignature) as e:
            return Checked(Verdict.REJECT, f"bad tx #{i}: {e}")
        acct = state.accounts.get(stx.sender_address)
        if acct is not None and stx.tx.nonce >= acct.nonce and stx.tx.fee >= state.params.min_fee:
            useful += 1
    if verified is not None:
        for tx_hash in fresh:
            verified.remember_verified(tx_hash)
    if not useful:
        return Checked(Verdict.IGNORE, "no tx that could still apply (unknown sender, used nonce or low fee)")
    return ACCEPTED


def _never(tx_hash: bytes) -> bool:
    return False


ConsensusMessage = Proposal | CompactProposal | Vote | DuplicateVoteEvidence


def parse_consensus(envelope: Envelope) -> ConsensusMessage:
    """Decode the body of a consensus-topic envelope. Raises ConsensusError (MalformedMessage)."""
    if envelope.kind == KIND_EVIDENCE:
        return DuplicateVoteEvidence.from_wire(envelope.body)
    if envelope.kind == KIND_COMPACT:
        return CompactProposal.from_wire(envelope.body)
    if envelope.kind != KIND_CONSENSUS:
        raise MalformedMessage(f"unknown consensus envelope kind {envelope.kind!r}")
    msg = decode_message(envelope.body)
    if isinstance(msg, DecidedBlock):
        raise MalformedMessage("decided blocks travel by block sync, not gossip")
    return msg


def check_consensus_envelope(
    envelope: Envelope, state: State, signatures: SignatureCache | None = None
) -> Checked:
    """Verdict on a gossiped proposal, vote or evidence (see the module docstring)."""
    try:
        msg = parse_consensus(envelope)
    except ConsensusError as e:
        return Checked(Verdict.REJECT, f"malformed consensus message: {e}")
    except (TypeError, ValueError) as e:  # hostile nesting the wire decoders did not foresee
        return Checked(Verdict.REJECT, f"malformed consensus message: {type(e).__name__}: {e}")
    if isinstance(msg, DuplicateVoteEvidence):
        return check_evidence(msg, state)
    if msg.height <= state.height:
        return Checked(Verdict.IGNORE, f"height {msg.height} is committed here")
    if msg.height > state.height + HEIGHTS_AHEAD:
        return Checked(Verdict.IGNORE, f"height {msg.height} is ahead of us", far_height=msg.height)
    signer = msg.validator if isinstance(msg, Vote) else msg.proposer
    row = next((v for v in validator_set_at(state, msg.height) if v.address == signer), None)
    if row is None:
        return Checked(Verdict.REJECT, f"{signer} is not a validator at height {msg.height}")
    check = verify if signatures is None else signatures.verify
    if not check(row.pubkey, msg.signature, msg.sign_bytes(state.chain_id)):
        return Checked(Verdict.REJECT, f"bad signature from {signer} at height {msg.height}")
    return ACCEPTED


def check_evidence(evidence: DuplicateVoteEvidence, state: State) -> Checked:
    """Is this double sign provable with the validator's registered key, and not yet punished?"""
    record = state.validators.get(evidence.validator)
    if record is None:
        return Checked(Verdict.IGNORE, f"evidence against unknown validator {evidence.validator}")
    if (evidence.validator, evidence.height) in state.tombstones:
        return Checked(Verdict.IGNORE, "offence already slashed")
    try:
        verify_evidence(evidence, key_set(evidence.validator, record.pubkey), chain_id=state.chain_id)
    except ConsensusError as e:
        return Checked(Verdict.REJECT, f"invalid evidence: {e}")
    return ACCEPTED


def key_set(address: str, pubkey: bytes) -> ValidatorSet:
    """A one-member set, enough to check signatures by `address` (evidence verification)."""
    return ValidatorSet([Validator(address, pubkey, 1)])


def evidence_includable(evidence: DuplicateVoteEvidence, state: State, height: int) -> bool:
    """Would the state machine slash this evidence in block `height` built on `state`?"""
    age = state.params.evidence_max_age_blocks
    return (
        evidence.validator in state.validators
        and (evidence.validator, evidence.height) not in state.tombstones
        and height - age <= evidence.height < height
    )


def body_of(msg: ConsensusMessage) -> tuple[str, Any]:
    """(kind, body) to publish a consensus message or evidence on TOPIC_CONSENSUS."""
    if isinstance(msg, DuplicateVoteEvidence):
        return KIND_EVIDENCE, msg.to_wire()
    return (KIND_COMPACT if isinstance(msg, CompactProposal) else KIND_CONSENSUS), msg.to_wire()
