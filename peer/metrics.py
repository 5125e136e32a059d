"""Per-peer Prometheus metrics.

Each peer owns one `CollectorRegistry` (several peers can share a process in tests); the
gossip node registers its own metrics in the same registry. Names follow
`hivemesh_<subsystem>_<name>_<unit>`; no label ever holds a peer id.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Info, generate_latest

from peer.version import __version__

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class PeerMetrics:
    """The daemon's own gauges; values are computed when scraped, so no task keeps them fresh."""

    def __init__(self, registry: CollectorRegistry, connected_peers: Callable[[], int]) -> None:
        self.registry = registry
        self.started = time.monotonic()
        self.connected_peers = Gauge(
            "hivemesh_peer_connected_peers", "Peers with an open transport connection.", registry=registry
        )
        self.connected_peers.set_function(lambda: float(connected_peers()))
        self.uptime = Gauge(
            "hivemesh_peer_uptime_seconds", "Seconds since the daemon started.", registry=registry
        )
        self.uptime.set_function(lambda: time.monotonic() - self.started)
        self.build = Info("hivemesh_peer_build", "Version of the running daemon.", registry=registry)
        self.build.info({"version": __version__, "python": platform.python_version()})
        self.received = Gauge(
            "hivemesh_peer_received_log_messages",
            "Gossip messages held in the daemon's received log, per topic.",
            ["topic"],
            registry=registry,
        )

    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started

    def render(self) -> bytes:
        """Prometheus text exposition of everything in this peer's registry."""
        return generate_latest(self.registry)
