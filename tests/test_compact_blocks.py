"""Compact proposals (ledger.compact) and verifying each tx signature once per node."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gossip.envelope import Envelope
from gossip.identity import Identity
from gossip.topics import TOPIC_CONSENSUS
from gossip.transport import Verdict
from ledger.block import Block, apply_decided_block, build_block
from ledger.compact import KIND_COMPACT, AssemblyFailed, CompactProposal
from ledger.consensus import MalformedMessage, Proposal
from ledger.genesis import genesis_state
from ledger.inbound import check_consensus_envelope, check_tx_envelope
from ledger.mempool import Mempool
from ledger.state import State
from ledger.tx import SignedTx, sign_tx
from tests.ledger_cluster import CHAIN, key, ledger_cluster, make_genesis
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

VALIDATORS = [key(f"validator-{i}") for i in range(4)]
USERS = [key(f"user-{i}") for i in range(4)]


def genesis() -> State:
    return genesis_state(make_genesis(VALIDATORS, USERS + VALIDATORS))


def transfer(user: int, nonce: int, amount: int = 1) -> SignedTx:
    to = USERS[(user + 1) % len(USERS)].peer_id
    return sign_tx(USERS[user], "transfer", {"to": to, "amount": amount}, nonce=nonce, fee=1, chain_id=CHAIN)


def proposal_of(state: State, txs: list[bytes], proposer: Identity = VALIDATORS[0]) -> tuple[Proposal, Block]:
    block = build_block(state, bytes(32), proposer.peer_id, state.time_ms + 1, txs)
    proposal = Proposal.create(proposer.sign, CHAIN, 1, 0, block.encoded, -1, proposer.peer_id)
    return proposal, block


def test_compact_proposal_round_trips_and_assembles_only_the_signed_block() -> None:
    state = genesis()
    txs = [transfer(0, n).encoded for n in range(3)]
    proposal, block = proposal_of(state, txs)
    compact = CompactProposal.from_wire(CompactProposal.of(proposal, block).to_wire())
    pool = {hashlib.sha256(t).digest(): t for t in txs}
    assert compact.missing(pool.get) == []
    full, rebuilt = compact.assemble(pool.get)
    assert full == proposal and rebuilt.hash == block.hash
    # A tx we lack is named, and assembling without it fails instead of guessing.
    partial = dict(list(pool.items())[1:])
    assert compact.missing(partial.get) == [hashlib.sha256(txs[0]).digest()]
    with pytest.raises(AssemblyFailed, match="missing"):
        compact.assemble(partial.get)
    # A hostile proposer's hash list that does not rebuild its signed value is refused.
    other = transfer(1, 0).encoded
    swapped = CompactProposal.of(proposal, block).to_wire()
    swapped[8] = [hashlib.sha256(other).digest(), *swapped[8][1:]]
    liar = CompactProposal.from_wire(swapped)
    with pytest.raises(AssemblyFailed, match="another block"):
        liar.assemble({**pool, hashlib.sha256(other).digest(): other}.get)


def test_a_later_round_re_proposes_another_validators_block() -> None:
    state = genesis()
    _, block = proposal_of(state, [transfer(0, 0).encoded], proposer=VALIDATORS[0])
    again = Proposal.create(VALIDATORS[2].sign, CHAIN, 1, 3, block.encoded, 1, VALIDATORS[2].peer_id)
    wire = CompactProposal.of(again, block).to_wire()
    assert check_consensus_envelope(Envelope.create(VALIDATORS[2], KIND_COMPACT, 1, wire), state).verdict is (
        Verdict.ACCEPT
    )
    full, rebuilt = CompactProposal.from_wire(wire).assemble(
        {h: t for h, t in zip(CompactProposal.of(again, block).tx_hashes, block.txs, strict=True)}.get
    )
    assert full == again and rebuilt.proposer == VALIDATORS[0].peer_id


def test_malformed_compact_proposals_are_rejected_at_gossip() -> None:
    state = genesis()
    proposal, block = proposal_of(state, [transfer(0, 0).encoded])
    good = CompactProposal.of(proposal, block).to_wire()
    hostile = [
        ["cproposal", 1],
        [*good[:7], block.encoded, good[8]],  # a header that carries txs
        [*good[:8], [good[8][0], good[8][0]]],  # one tx twice
        [*good[:8], [b"short"]],
    ]
    for body in hostile:
        with pytest.raises(MalformedMessage):
            CompactProposal.from_wire(body)
        envelope = Envelope.create(VALIDATORS[1], KIND_COMPACT, 1, body)
        assert check_consensus_envelope(envelope, state).verdict is Verdict.REJECT
    forged = [*good[:5], bytes(64), *good[6:]]
    envelope = Envelope.create(VALIDATORS[1], KIND_COMPACT, 2, forged)
    assert check_consensus_envelope(envelope, state).verdict is Verdict.REJECT
    envelope = Envelope.create(VALIDATORS[1], KIND_COMPACT, 3, good)
    assert check_consensus_envelope(envelope, state).verdict is Verdict.ACCEPT


def test_cached_verification_lets_no_bad_signature_through() -> None:
    state = genesis()
    pool = Mempool()
    good, second = transfer(0, 0), transfer(1, 0)
    forged = SignedTx(second.tx, bytes(64))
    author = VALIDATORS[1]
    assert (
        check_tx_envelope(Envelope.create(author, "tx", 1, good.encoded), state, pool).verdict
        is Verdict.ACCEPT
    )
    assert pool.is_verified(good.hash)
    # The same tx with a bad signature has another hash: it is verified, and refused.
    assert (
        check_tx_envelope(Envelope.create(author, "tx", 2, forged.encoded), state, pool).verdict
        is Verdict.REJECT
    )
    batch = Envelope.create(author, "txs", 3, [second.encoded, forged.encoded])
    assert check_tx_envelope(batch, state, pool).verdict is Verdict.REJECT
    assert not pool.is_verified(forged.hash) and not pool.is_verified(second.hash)  # a rejected batch
    # A block carrying a tx this node never verified is verified when applied.
    block = build_block(
        state, bytes(32), VALIDATORS[0].peer_id, state.time_ms + 1, [good.encoded, forged.encoded]
    )
    _, receipts, _ = apply_decided_block(state, block, verified=pool.verified)
    assert receipts[0].ok and not receipts[1].ok
    assert receipts[1].code == "bad_signature"


async def test_missing_txs_are_fetched_and_the_block_committed(tmp_path: Path) -> None:
    async with ledger_cluster(tmp_path, observers=1) as cluster:
        peers = await cluster.start_all()
        await wait_until(lambda: min(cluster.heights()) >= 1, timeout=15)
        # Txs only validator 0 holds (never gossiped): the others must fetch them to vote.
        holder = peers[0]
        hashes = []
        for _ in range(5):
            tx = cluster.transfer(0, cluster.users[1].peer_id, 3)
            hashes.append(holder.node.mempool.add(tx, holder.node.state).hex())
        for peer in peers:
            for tx_hash in hashes:
                _, _, receipt = await peer.node.wait_committed(tx_hash, timeout=30)
                assert receipt.ok
        fetched = sum(p.metric("hivemesh_ledger_proposals_total", how="fetched") for p in peers[1:])
        assert fetched >= 1
        top = min(cluster.heights())
        assert cluster.same_chain(peers, top)


async def test_bogus_tx_hash_from_a_byzantine_proposer_neither_stalls_nor_forks(tmp_path: Path) -> None:
    async with ledger_cluster(tmp_path, observers=0) as cluster:
        peers = await cluster.start_all()
        await wait_until(lambda: min(cluster.heights()) >= 1, timeout=15)
        await cluster.stop(3)
        honest = peers[:3]
        byzantine = await cluster.gossip_peer(cluster.identities[3])
        bogus = hashlib.sha256(b"a tx nobody has").digest()
        start = max(cluster.heights())
        published = 0
        for _ in range(3):  # a few heights, each proposal naming a tx that does not exist
            head = honest[0].node.head
            height = head.state.height + 1
            header = build_block(head.state, head.block_hash, byzantine.peer_id, head.state.time_ms + 1, [])
            compact = CompactProposal(height, 0, -1, byzantine.peer_id, bytes(64), bogus, header, (bogus,))
            signed = Proposal.create(
                cluster.identities[3].sign, CHAIN, height, 0, b"x", -1, byzantine.peer_id
            )
            wire = compact.to_wire()
            wire[5], wire[6] = signed.signature, signed.value_id
            await byzantine.publish(TOPIC_CONSENSUS, KIND_COMPACT, wire)
            published += 1
            await wait_until(lambda h=height: min(p.node.height for p in honest) >= h, timeout=30)
        await wait_until(lambda: cluster.converged(honest, at_least=start + 3), timeout=30)
        assert cluster.same_chain(honest, start + 3)
        failed = sum(p.metric("hivemesh_ledger_proposals_total", how="failed") for p in honest)
        assert failed >= 1 and published == 3
