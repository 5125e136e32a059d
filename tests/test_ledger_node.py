"""LedgerNode over the in-memory transport: commits, loss, restarts, sync, partitions, byzantines."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.ledger_cluster import BALANCE, LedgerCluster, ledger_cluster
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


async def submit_transfers(cluster: LedgerCluster, count: int, amount: int = 7) -> list[str]:
    """`count` transfers from the users to the observer-less recipients, submitted round robin."""
    peers = cluster.running()
    hashes = []
    for i in range(count):
        tx = cluster.transfer(i % len(cluster.users), cluster.users[(i + 1) % len(cluster.users)].peer_id, amount)
        hashes.append(await peers[i % len(peers)].node.submit(tx))
    return hashes


async def test_validators_and_observer_commit_transfers_identically(tmp_path: Path) -> None:
    async with ledger_cluster(tmp_path) as cluster:
        peers = await cluster.start_all()
        hashes = await submit_transfers(cluster, 12)
        for peer in peers:
            for tx_hash in hashes:
                height, _, receipt = await peer.node.wait_committed(tx_hash, timeout=20)
                assert receipt.ok and height >= 1
        await wait_until(lambda: cluster.converged(at_least=2), timeout=10)
        top = min(cluster.heights())
        assert cluster.same_chain(peers, top)
        total = sum(p.node.state.accounts[u.peer_id].balance for u in cluster.users for p in peers[:1])
        assert total == 4 * BALANCE - 12  # fees went to proposers (validators), amounts stayed among users
        observer = peers[-1]
        assert not observer.node.status()["is_validator"]
        assert peers[0].node.status()["is_validator"]
        assert observer.metric("hivemesh_ledger_txs_committed_total") >= 12
        assert peers[0].metric("hivemesh_consensus_rounds_total") >= top
        trio.lowlevel.current_task()
