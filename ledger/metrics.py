"""Prometheus metrics of one ledger node, registered in the peer's own CollectorRegistry.

hivemesh_ledger_height (gauge), hivemesh_ledger_txs_committed_total, hivemesh_ledger_blocks_synced_total,
hivemesh_consensus_rounds_total (every round entered, round 0 of each height included),
hivemesh_ledger_block_interval_seconds (histogram of the time between blocks decided live;
synced blocks are not observed), hivemesh_mempool_txs (gauge), hivemesh_ledger_evidence_total
(double signs seen), hivemesh_consensus_timeouts_total{kind} (timeouts that fired in the
round they were set for: propose / prevote / precommit / rebroadcast),
hivemesh_ledger_proposals_total{how} (proposals received: "full", "compact" rebuilt from our
own txs, "fetched" after asking peers for missing txs, "failed" when it could not be rebuilt).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_INTERVAL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class LedgerMetrics:
    def __init__(self, registry: CollectorRegistry, mempool_size: Callable[[], int]) -> None:
        self.height = Gauge("hivemesh_ledger_height", "Height of the last committed block", registry=registry)
        self.txs_committed = Counter(
            "hivemesh_ledger_txs_committed",
            "Txs in committed blocks (failed ones included)",
            registry=registry,
        )
        self.blocks_synced = Counter(
            "hivemesh_ledger_blocks_synced", "Blocks applied from block sync", registry=registry
        )
        self.rounds = Counter("hivemesh_consensus_rounds", "Consensus rounds entered", registry=registry)
        self.block_interval = Histogram(
            "hivemesh_ledger_block_interval_seconds",
            "Time between consecutive blocks decided by consensus here",
            buckets=_INTERVAL_BUCKETS,
            registry=registry,
        )
        self.evidence = Counter(
            "hivemesh_ledger_evidence", "Duplicate-vote evidence seen (new offences)", registry=registry
        )
        self.timeouts = Counter(
            "hivemesh_consensus_timeouts",
            "Consensus timeouts fired in their round",
            ["kind"],
            registry=registry,
        )
        self.proposals = Counter(
            "hivemesh_ledger_proposals",
            "Proposals received, by how they were assembled",
            ["how"],
            registry=registry,
        )
        mempool = Gauge("hivemesh_mempool_txs", "Txs waiting in the mempool", registry=registry)
        mempool.set_function(mempool_size)
