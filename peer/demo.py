"""`hivemesh demo`: a local mesh end to end (a placeholder until the compute market lands).

Starts a cluster of real peer processes in a temporary directory, publishes one message from
every peer on the tasks topic, waits until every peer has received all of them, shows the
delivery matrix and tears the cluster down, whatever happens.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from peer import render
from peer.client import ApiClient
from peer.cluster import Cluster, cluster_down, cluster_status, cluster_up
from peer.errors import ClusterError
from peer.procs import wait_for

TOPIC = "tasks"


def run_demo(peers: int = 4, timeout: float = 60.0, show: bool = True) -> dict[str, Any]:
    """Run the demo; returns {"peers", "messages", "delivered": {peer_id: [msg_id, ...]}}."""
    with tempfile.TemporaryDirectory(prefix="hivemesh-demo-") as tmp:
        root = Path(tmp)
        try:
            if show:
                render.console.print(f"starting {peers} peers in {root} …", markup=False)
            cluster = cluster_up(root, peers, timeout=timeout)
            if show:
                render.cluster(cluster_status(root), title="demo cluster")
            published = _publish_from_each(cluster)
            delivered = _wait_delivered(cluster, set(published.values()), timeout)
            if show:
                _show(cluster, published, delivered)
            return {
                "peers": [p.peer_id for p in cluster.peers],
                "messages": published,
                "delivered": {k: sorted(v) for k, v in delivered.items()},
            }
        finally:
            cluster_down(root)


def _publish_from_each(cluster: Cluster) -> dict[str, str]:
    published = {}
    for peer in cluster.peers:
        with ApiClient(peer.api_url) as client:
            body = {"hello": "from peer", "index": peer.index, "at": time.time()}
            published[peer.peer_id] = client.publish(TOPIC, body, kind="demo.hello")["msg_id"]
    return published


def _received_ids(peer_api: str) -> set[str]:
    with ApiClient(peer_api, timeout=3.0) as client:
        return {e["msg_id"] for e in client.received(TOPIC)}


def _wait_delivered(cluster: Cluster, wanted: set[str], timeout: float) -> dict[str, set[str]]:
    delivered: dict[str, set[str]] = {}

    def all_delivered() -> bool:
        for peer in cluster.peers:
            delivered[peer.peer_id] = _received_ids(peer.api_url) & wanted
        return all(ids == wanted for ids in delivered.values())

    try:
        wait_for(all_delivered, timeout, "every peer to receive every message", interval=0.1)
    except TimeoutError as e:
        missing = {render.short(p): len(wanted - ids) for p, ids in delivered.items() if ids != wanted}
        raise ClusterError(f"{e}; messages missing per peer: {missing}") from None
    return delivered


def _show(cluster: Cluster, published: dict[str, str], delivered: dict[str, set[str]]) -> None:
    table = Table(
        "received by ↓ / sent by →", *(f"peer {p.index}" for p in cluster.peers), title="gossip delivery"
    )
    for peer in cluster.peers:
        marks = ["✓" if published[src.peer_id] in delivered[peer.peer_id] else "✗" for src in cluster.peers]
        table.add_row(f"peer {peer.index} {render.short(peer.peer_id)}", *marks)
    render.console.print(table)
    total = len(cluster.peers)
    render.console.print(
        f"every peer received all {total} messages ({total * total} deliveries)", markup=False
    )
