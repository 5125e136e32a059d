"""LedgerNode over the in-memory transport: commits, loss, restarts, sync, partitions, byzantines."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gossip.errors import InvalidMessage
from gossip.identity import Identity
from gossip.memory_transport import MemoryTransport
from gossip.reqresp import RequestResponse
from gossip.topics import TOPIC_CONSENSUS, TOPIC_TX
from ledger.block import ZERO_HASH, build_block
from ledger.blocksync import BLOCKS_PROTOCOL, BlockServer, SyncRejected, encode_commit, verify_synced
from ledger.compact import CompactProposal
from ledger.consensus import Commit, Proposal, Vote, VoteType
from ledger.driver import wall_clock_ms
from ledger.errors import BadNonce, DuplicateTx
from ledger.genesis import Genesis, GenesisValidator, genesis_state
from ledger.inbound import parse_consensus
from ledger.params import Params
from ledger.proposers import ProposerSchedule
from ledger.state import app_hash
from ledger.store import LedgerStore
from ledger.tx import SignedTx, sign_tx
from tests.ledger_cluster import (
    BALANCE,
    CHAIN,
    STAKE,
    TEST_TIMEOUTS,
    LedgerCluster,
    Spy,
    key,
    ledger_cluster,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


async def submit_transfers(cluster: LedgerCluster, count: int, amount: int = 7) -> list[str]:
    """`count` transfers among the users; each user submits all its txs through one peer."""
    peers = cluster.running()
    users = len(cluster.users)
    hashes = []
    for i in range(count):
        tx = cluster.transfer(i % users, cluster.users[(i + 1) % users].peer_id, amount)
        hashes.append(await peers[i % users % len(peers)].node.submit(tx))
    return hashes


async def test_validators_and_observer_commit_transfers_identically(tmp_path: Path) -> None:
    async with ledger_cluster(tmp_path) as cluster:
        peers = await cluster.start_all()
        hashes = await submit_transfers(cluster, 12)
        user, to = cluster.users[0], cluster.users[1].peer_id
        again = sign_tx(user, "transfer", {"to": to, "amount": 7}, nonce=0, fee=1, chain_id=CHAIN)
        with pytest.raises(DuplicateTx):
            await peers[0].node.submit(again.encoded)  # the very bytes of the first transfer
        gap = sign_tx(user, "transfer", {"to": to, "amount": 7}, nonce=99, fee=1, chain_id=CHAIN)
        with pytest.raises(BadNonce):
            await peers[0].node.submit(gap.encoded)
        for peer in peers:
            for tx_hash in hashes:
                height, _, receipt = await peer.node.wait_committed(tx_hash, timeout=20)
                assert receipt.ok and height >= 1
        await wait_until(lambda: cluster.converged(at_least=2), timeout=10)
        top = min(cluster.heights())
        assert cluster.same_chain(peers, top)
        state = peers[0].node.state
        total = sum(state.accounts[u.peer_id].balance for u in cluster.users)
        assert total == 4 * BALANCE - 12  # fees went to proposers (validators), amounts stayed among users
        observer = peers[-1]
        placed = observer.node.tx_location(bytes.fromhex(hashes[0]))
        assert placed is not None and placed[2].ok
        assert not observer.node.status()["is_validator"]
        assert peers[0].node.status()["is_validator"]
        assert observer.metric("hivemesh_ledger_txs_committed_total") >= 12
        # Heights a validator learns by block sync enter no round, so only "it counted rounds" holds.
        assert sum(p.metric("hivemesh_consensus_rounds_total") for p in peers[:4]) >= 1


async def test_a_batch_is_admitted_in_order_with_an_answer_per_tx(tmp_path: Path) -> None:
    async with ledger_cluster(tmp_path) as cluster:
        peers = await cluster.start_all()
        user, to = cluster.users[0], cluster.users[1].peer_id
        txs = [
            sign_tx(user, "transfer", {"to": to, "amount": 3}, nonce=n, fee=1, chain_id=CHAIN).encoded
            for n in range(300)  # more than one owner step's chunk
        ]
        gap = sign_tx(user, "transfer", {"to": to, "amount": 3}, nonce=999, fee=1, chain_id=CHAIN).encoded
        results = await peers[0].node.submit_many([*txs, txs[5], gap, b"\x93garbage"])
        hashes = results[:300]
        assert all(isinstance(h, str) for h in hashes)
        assert hashes == [hashlib.sha256(tx).hexdigest() for tx in txs]
        assert [type(e).__name__ for e in results[300:]] == ["DuplicateTx", "BadNonce", "InvalidTx"]
        for peer in (peers[0], peers[-1]):  # gossiped too: the observer commits the same txs
            _, _, receipt = await peer.node.wait_committed(str(hashes[-1]), timeout=30)
            assert receipt.ok
        assert peers[-1].node.state.accounts[user.peer_id].nonce == 300


async def test_progress_with_20_percent_gossip_loss(tmp_path: Path) -> None:
    async with ledger_cluster(tmp_path) as cluster:
        cluster.net.drop = 0.2
        peers = await cluster.start_all()
        hashes = await submit_transfers(cluster, 8)
        for peer in peers:
            for tx_hash in hashes:
                await peer.node.wait_committed(tx_hash, timeout=30)
        start = max(cluster.heights())
        await wait_until(lambda: cluster.converged(at_least=start + 2), timeout=20)
        assert cluster.same_chain(peers, start + 2)
        assert cluster.net.counters["dropped"] > 0


def signed_slots(spy: Spy) -> dict[tuple[str, int, int, str], set[bytes | None]]:
    """Everything each validator signed, as seen by the spy: (signer, height, round, step) -> values."""
    slots: dict[tuple[str, int, int, str], set[bytes | None]] = {}
    for envelope in spy.envelopes:
        if envelope.kind not in ("consensus", "cproposal"):
            continue
        msg = parse_consensus(envelope)
        if isinstance(msg, Proposal | CompactProposal):
            key = (msg.proposer, msg.height, msg.round, "proposal")
            slots.setdefault(key, set()).add(msg.value_id)
        elif isinstance(msg, Vote):
            key = (msg.validator, msg.height, msg.round, msg.vote_type.name)
            slots.setdefault(key, set()).add(msg.value_id)
    return slots


async def test_validator_restarted_from_its_store_rejoins_without_double_signing(tmp_path: Path) -> None:
    async with ledger_cluster(tmp_path) as cluster:
        peers = await cluster.start_all()
        spy = await cluster.spy()
        victim = peers[3].peer_id
        await wait_until(lambda: min(cluster.heights()) >= 3, timeout=10)
        # A crash and an immediate restart: most likely mid-height, with votes already signed.
        await cluster.stop(3)
        restarted = await cluster.start(3)
        restored = restarted.node.driver.core.last_signed if restarted.node.driver else None
        assert restored is not None and restored.height >= 3  # the double-sign guard came back
        target = max(cluster.heights()) + 2
        await wait_until(lambda: cluster.converged(at_least=target), timeout=15)
        # A longer outage: the others go on with 3 of 4 validators, then it catches up.
        await cluster.stop(3)
        hashes = await submit_transfers(cluster, 6)
        for tx_hash in hashes:
            await cluster.peers[0].node.wait_committed(tx_hash, timeout=20)
        outage_top = max(cluster.heights())
        restarted = await cluster.start(3)
        await wait_until(lambda: restarted.node.height >= outage_top, timeout=15)
        signed_after = outage_top + 2
        await wait_until(
            lambda: any(k[0] == victim and k[1] >= signed_after for k in signed_slots(spy)), timeout=15
        )
        await wait_until(lambda: cluster.converged(at_least=signed_after), timeout=15)
        assert cluster.same_chain(cluster.running(), signed_after)
        slots = signed_slots(spy)
        assert any(k[0] == victim for k in slots)
        doubles = {k: v for k, v in slots.items() if len(v) > 1}
        assert doubles == {}
        assert all(p.node.state.tombstones == {} for p in cluster.running())
        assert restarted.metric("hivemesh_ledger_blocks_synced_total") > 0


def forged_first_block(cluster: LedgerCluster, forger: Identity) -> tuple[bytes, bytes]:
    """A well-formed block 1 whose commit has one real precommit and one signed by the wrong key."""
    state = genesis_state(cluster.genesis)
    tx = sign_tx(
        cluster.users[0], "transfer", {"to": forger.peer_id, "amount": 999}, nonce=0, fee=1, chain_id=CHAIN
    )
    block = build_block(state, ZERO_HASH, cluster.identities[0].peer_id, 5_000, [tx])
    signers = [(cluster.identities[0], cluster.identities[0]), (forger, cluster.identities[1])]
    votes = [
        Vote.create(key.sign, CHAIN, VoteType.PRECOMMIT, 1, 0, block.hash, claimed.peer_id)
        for key, claimed in signers
    ]
    return block.encoded, encode_commit(Commit.from_votes(votes))


async def hostile_block_server(nursery: trio.Nursery, cluster: LedgerCluster) -> MemoryTransport:
    """A peer that claims a very high chain and serves a forged block 1."""
    identity = Identity.generate()
    transport = cluster.net.transport(identity)
    await nursery.start(transport.serve)
    block, commit = forged_first_block(cluster, identity)

    async def handle(peer: str, body: Any) -> Any:
        await trio.lowlevel.checkpoint()
        if body.get("op") == "status":
            return {"height": 10_000, "hash": bytes(32)}
        return {"blocks": [[1, block, commit]]}

    RequestResponse(transport).set_handler(BLOCKS_PROTOCOL, handle)
    return transport


async def test_wiped_node_block_syncs_and_rejects_a_forged_commit(tmp_path: Path) -> None:
    async with ledger_cluster(tmp_path) as cluster:
        peers = await cluster.start_all()
        hashes = await submit_transfers(cluster, 4)
        for tx_hash in hashes:
            await peers[0].node.wait_committed(tx_hash, timeout=20)
        await wait_until(lambda: min(cluster.heights()) >= 6, timeout=15)
        await cluster.stop(4)
        cluster.wipe(4)
        hostile = await hostile_block_server(cluster.nursery, cluster)
        fresh = await cluster.start(4, connect=(hostile.listen_addrs()[0],))
        await wait_until(lambda: fresh.node.height >= 6, timeout=15)
        score = fresh.gossip.scores.score(hostile.peer_id)
        assert score < 0 and "commit" in fresh.gossip.scores.last_reason(hostile.peer_id)
        assert fresh.metric("hivemesh_ledger_blocks_synced_total") >= 6
        for tx_hash in hashes:
            assert (await fresh.node.wait_committed(tx_hash, timeout=1))[2].ok
        target = max(cluster.heights()) + 1
        await wait_until(lambda: cluster.converged(at_least=target), timeout=15)
        assert cluster.same_chain(cluster.running(), target)


async def test_partitioned_validator_catches_up_after_healing(tmp_path: Path) -> None:
    async with ledger_cluster(tmp_path, observers=0) as cluster:
        peers = await cluster.start_all()
        await wait_until(lambda: min(cluster.heights()) >= 2, timeout=10)
        isolated, majority = peers[0], peers[1:]
        cluster.net.partition([isolated.peer_id])
        cut = max(cluster.heights())
        hashes = [
            await majority[i].node.submit(cluster.transfer(i + 1, cluster.users[0].peer_id, 5))
            for i in range(3)
        ]
        for tx_hash in hashes:
            await majority[0].node.wait_committed(tx_hash, timeout=20)
        await wait_until(lambda: min(p.node.height for p in majority) >= cut + 4, timeout=20)
        assert isolated.node.height <= cut + 1  # one validator of four cannot decide alone
        cluster.net.heal()
        target = max(cluster.heights())
        await wait_until(lambda: isolated.node.height >= target, timeout=20)
        for tx_hash in hashes:
            assert (await isolated.node.wait_committed(tx_hash, timeout=1))[2].ok
        await wait_until(lambda: cluster.converged(at_least=target + 1), timeout=20)
        assert cluster.same_chain(peers, target + 1)


async def test_equivocating_validator_is_slashed_and_jailed(tmp_path: Path) -> None:
    async with ledger_cluster(tmp_path) as cluster:
        honest = [await cluster.start(i) for i in (0, 1, 2, 4)]  # validator 3 runs no ledger: it only lies
        liar = cluster.identities[3]
        byzantine = await cluster.gossip_peer(liar)
        await wait_until(lambda: min(cluster.heights()) >= 2, timeout=10)

        def offence_committed() -> bool:
            return all(any(v == liar.peer_id for v, _ in p.node.state.tombstones) for p in honest)

        for _ in range(10):  # each try aims at the height being decided now and the next one
            base = honest[0].node.height + 1
            for height in (base, base + 1):
                for vid in (None, hashlib.sha256(b"fake block %d" % height).digest()):
                    vote = Vote.create(liar.sign, CHAIN, VoteType.PREVOTE, height, 0, vid, liar.peer_id)
                    await byzantine.publish(TOPIC_CONSENSUS, "consensus", vote.to_wire())
            with trio.move_on_after(3):
                await wait_until(offence_committed, timeout=math.inf)
            if offence_committed():
                break
        assert offence_committed()
        for peer in honest:
            # One slash per infraction height; the liar equivocated at two heights per try.
            heights = [h for v, h in peer.node.state.tombstones if v == liar.peer_id]
            stake = STAKE
            for _ in heights:
                stake -= stake * 500 // 10_000
            record = peer.node.state.validators[liar.peer_id]
            assert record.jailed and record.self_stake == stake < STAKE
        assert any(
            (info := honest[0].node.block_info(h)) and info["evidence"]
            for h in range(1, honest[0].node.height + 1)
        )
        # The set two heights on leaves the liar out, and the three honest validators go on.
        await wait_until(
            lambda: all(v.address != liar.peer_id for v in honest[0].node.state.validator_set), timeout=10
        )
        target = max(cluster.heights()) + 2
        await wait_until(lambda: cluster.converged(at_least=target), timeout=15)
        assert honest[0].metric("hivemesh_ledger_evidence_total") >= 1


async def test_hostile_gossip_is_rejected_and_penalised(tmp_path: Path) -> None:
    async with ledger_cluster(tmp_path, observers=0) as cluster:
        peers = await cluster.start_all()
        await wait_until(lambda: min(cluster.heights()) >= 1, timeout=10)
        target = peers[0]
        hostile = await cluster.gossip_peer()
        stranger = Identity.generate()
        good = sign_tx(
            cluster.users[0],
            "transfer",
            {"to": stranger.peer_id, "amount": 1},
            nonce=0,
            fee=1,
            chain_id=CHAIN,
        )
        forged = SignedTx(good.tx, bytes(64)).encoded  # well formed, signature of zeros
        height = target.node.height + 1
        lies: list[tuple[str, str, Any]] = [
            (TOPIC_TX, "tx", b"\x93not a tx"),
            (TOPIC_TX, "tx", forged),
            (TOPIC_TX, "txs", [good.encoded, forged]),  # one forgery spoils the batch
            (TOPIC_CONSENSUS, "consensus", ["vote", 1, height, 0, None, "x", b"short"]),
            (
                TOPIC_CONSENSUS,
                "consensus",
                Vote.create(
                    stranger.sign, CHAIN, VoteType.PREVOTE, height, 0, None, stranger.peer_id
                ).to_wire(),
            ),
            (
                TOPIC_CONSENSUS,
                "consensus",
                Vote.create(
                    stranger.sign, CHAIN, VoteType.PREVOTE, height, 0, None, peers[1].peer_id
                ).to_wire(),
            ),
            (TOPIC_CONSENSUS, "evidence", ["duplicate_vote", 1, 2]),
        ]
        for topic, kind, body in lies:
            await hostile.publish(topic, kind, body)
        await wait_until(lambda: target.gossip.stats()["rejected"] >= len(lies), timeout=5)
        assert target.gossip.scores.score(hostile.peer_id) < -10 * (len(lies) - 1)
        assert "validator rejected" in target.gossip.scores.last_reason(hostile.peer_id)
        # A tx that is merely stale costs its relayer nothing: once committed, a replay is ignored.
        tx_hash = await target.node.submit(good.encoded)
        await target.node.wait_committed(tx_hash, timeout=15)
        relayer = await cluster.gossip_peer()
        ignored = {"topic": TOPIC_TX, "verdict": "ignore"}
        before = target.metric("hivemesh_gossip_received_total", **ignored)
        await relayer.publish(TOPIC_TX, "tx", good.encoded)
        await wait_until(
            lambda: target.metric("hivemesh_gossip_received_total", **ignored) > before, timeout=5
        )
        assert target.gossip.scores.score(relayer.peer_id) == 0
        start = target.node.height
        await wait_until(lambda: cluster.converged(at_least=start + 2), timeout=15)


async def test_idle_chain_waits_the_interval_but_proposes_txs_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    interval = 30.0
    async with ledger_cluster(tmp_path, observers=0) as cluster:
        peers = await cluster.start_all(empty_block_interval=interval)
        await wait_until(lambda: min(cluster.heights()) >= 1, timeout=60)
        start, first = trio.current_time(), max(cluster.heights())
        await wait_until(lambda: min(cluster.heights()) >= first + 3, timeout=600)
        assert trio.current_time() - start >= 2 * interval  # three empty blocks: no spinning
        before, sent = max(cluster.heights()), trio.current_time()
        tx_hash = await peers[1].node.submit(cluster.transfer(1, cluster.users[2].peer_id, 3))
        height, _, receipt = await peers[1].node.wait_committed(tx_hash, timeout=600)
        assert receipt.ok and height == before + 1
        assert trio.current_time() - sent < interval / 2  # the waiting tx did not wait for the interval
        # A burst travels as a few batches, not one gossip message per tx.
        published = {"topic": TOPIC_TX}
        gossiped = peers[2].metric("hivemesh_gossip_published_total", **published)
        burst = [
            await peers[2].node.submit(cluster.transfer(2, cluster.users[3].peer_id, 1)) for _ in range(60)
        ]
        for peer in peers:
            for tx_hash in burst:
                assert (await peer.node.wait_committed(tx_hash, timeout=600))[2].ok
        assert peers[2].metric("hivemesh_gossip_published_total", **published) - gossiped <= 3


async def test_proposer_turns_of_a_stopped_validator_time_out_on_trio_clock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with ledger_cluster(tmp_path, observers=0) as cluster:
        await cluster.start_all()
        await cluster.stop(3)
        started = trio.current_time()
        await wait_until(lambda: min(cluster.heights()) >= 12, timeout=600)
        alive = cluster.running()
        rounds = alive[0].metric("hivemesh_consensus_rounds_total")
        assert rounds > alive[0].node.height  # its turns as proposer needed a second round
        assert trio.current_time() - started >= TEST_TIMEOUTS.propose_ms / 1000  # virtual time passed
        assert alive[0].metric("hivemesh_ledger_block_interval_seconds_count") > 0
        assert cluster.same_chain(alive, 12)


def test_proposer_schedule_depends_only_on_rows_and_height() -> None:
    ids = [key(f"schedule-{i}") for i in range(3)]
    genesis = Genesis(
        chain_id=CHAIN,
        validators=tuple(GenesisValidator(v.peer_id, v.public, 100 * (i + 1), 0) for i, v in enumerate(ids)),
        params=Params(power_reduction=100),  # powers 1, 2, 3: the rotation repeats every 6 heights
    )
    state = genesis_state(genesis)
    walking = ProposerSchedule()
    proposers = []
    for height in range(1, 40):
        vset = walking.at(state, height)
        assert vset == ProposerSchedule().at(state, height)  # what a restarted node derives
        proposers.append(vset.proposer(0))
    for start in range(len(proposers) - 6):
        counts = Counter(proposers[start : start + 6])
        assert {counts[v.peer_id] for v in ids} == {1, 2, 3} and counts[ids[2].peer_id] == 3


def test_verify_synced_names_what_is_wrong() -> None:
    validator = key("sync-validator")
    genesis = Genesis(
        chain_id=CHAIN,
        balances={validator.peer_id: 10},
        validators=(GenesisValidator(validator.peer_id, validator.public, 1_000, 0),),
        genesis_time_ms=1_000,
    )
    state = genesis_state(genesis)
    block = build_block(state, ZERO_HASH, validator.peer_id, 2_000, [])
    vote = Vote.create(validator.sign, CHAIN, VoteType.PRECOMMIT, 1, 0, block.hash, validator.peer_id)
    commit = encode_commit(Commit.from_votes([vote]))
    good_app = app_hash(state)
    assert verify_synced(state, ZERO_HASH, good_app, 1, block.encoded, commit)[0] == block
    other = build_block(state, ZERO_HASH, validator.peer_id, 3_000, [])
    cases = {
        "does not decode": (1, b"\x80", commit, good_app),
        "asked for block 2": (2, block.encoded, commit, good_app),
        "malformed commit": (1, block.encoded, b"\xc1", good_app),
        "commit is for value": (1, other.encoded, commit, good_app),
        "does not extend": (1, block.encoded, commit, bytes(32)),
    }
    for reason, (height, data, cert, app) in cases.items():
        with pytest.raises(SyncRejected, match=reason):
            verify_synced(state, ZERO_HASH, app, height, data, cert)


async def test_block_server_refuses_and_penalises_malformed_requests(tmp_path: Path) -> None:
    penalties: list[tuple[str, str]] = []
    store = LedgerStore(tmp_path / "ledger.sqlite")
    server = BlockServer(store, lambda: (0, ZERO_HASH), lambda peer, why: penalties.append((peer, why)))
    assert await server.handle("p", {"op": "status"}) == {"height": 0, "hash": ZERO_HASH}
    assert await server.handle("p", {"op": "range", "from": 1, "max": 10}) == {"blocks": []}
    for bad in ({"op": "range", "from": 0, "max": 1}, {"op": "dump"}, ["status"], {"op": "range", "from": 1}):
        with pytest.raises(InvalidMessage):
            await server.handle("p", bad)
    assert len(penalties) == 4 and all(peer == "p" for peer, _ in penalties)
    store.close()


async def test_block_times_tolerate_modest_clock_skew_only(tmp_path: Path) -> None:
    def skewed(ms: int) -> Callable[[], int]:
        return lambda: wall_clock_ms() + ms

    async with ledger_cluster(tmp_path, observers=0) as cluster:
        ahead, far_ahead = cluster.identities[0].peer_id, cluster.identities[1].peer_id
        await cluster.start(0, clock_ms=skewed(4_000))  # within MAX_CLOCK_SKEW_MS: its blocks pass
        await cluster.start(1, clock_ms=skewed(60_000))  # beyond it: its blocks are refused
        await cluster.start(2)
        await cluster.start(3)
        await wait_until(lambda: min(cluster.heights()) >= 10, timeout=30)
        infos = [cluster.peers[2].node.block_info(h) for h in range(1, 11)]
        proposers = {info["proposer"] for info in infos if info}
        assert ahead in proposers and far_ahead not in proposers
        times = [info["time_ms"] for info in infos if info]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert cluster.same_chain(cluster.running(), 10)
