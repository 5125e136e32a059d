"""Local multi-process clusters: N real peers on loopback, for development and tests.

`cluster_up` gives every peer its own home `DIR/peer-<i>` (listen /ip4/127.0.0.1/tcp/0,
API 127.0.0.1:0), writes one genesis for all of them (`DIR/genesis.json`, copied into every
home: every peer's account funded, the first K peers validators with equal self-stake, local
test-net params), starts peer 0, then the others bootstrapped from it, waits until every
peer serves its API and is connected, and records pids and addresses in `DIR/cluster.json`
(written as soon as each process starts, so `cluster_down` can always clean up).
A directory that already holds a genesis (a cluster brought down and up again) keeps it, so
the peers resume their chain from their stores.
`cluster_down` is idempotent: SIGTERM, wait, SIGKILL after the deadline.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peer.client import ApiClient
from peer.config import LOCAL_CONSENSUS
from peer.errors import ClusterError, PeerError
from peer.genesis_file import install_genesis, local_genesis, read_genesis, write_genesis
from peer.home import Home, init_home, read_run_info
from peer.procs import owns_home, pid_alive, spawn_peer, stop_pids, wait_for, wait_serving

CLUSTER_FILE = "cluster.json"
GENESIS_FILE = "genesis.json"
DEFAULT_VALIDATORS = 4
CLUSTER_LISTEN = "/ip4/127.0.0.1/tcp/0"
CLUSTER_API = "127.0.0.1:0"
MAX_PEERS = 64
# Settings a cluster sets itself; inherited HIVEMESH_* values for them would fight it.
_CLUSTER_OWNED_ENV = ("HIVEMESH_HOME", "HIVEMESH_LISTEN", "HIVEMESH_BOOTSTRAP", "HIVEMESH_API_LISTEN")


@dataclass
class ClusterPeer:
    index: int
    home: str
    pid: int
    peer_id: str = ""
    api: str = ""
    multiaddr: str = ""

    @property
    def api_url(self) -> str:
        return f"http://{self.api}"


@dataclass
class Cluster:
    root: Path
    peers: list[ClusterPeer] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    @property
    def path(self) -> Path:
        return self.root / CLUSTER_FILE

    def save(self) -> None:
        data = {"created_at": self.created_at, "peers": [asdict(p) for p in self.peers]}
        tmp = self.path.with_name(f".{CLUSTER_FILE}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, root: Path) -> Cluster | None:
        path = root / CLUSTER_FILE
        try:
            raw: Any = json.loads(path.read_text())
            peers = [ClusterPeer(**p) for p in raw["peers"]]
            return cls(root, peers, float(raw["created_at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ClusterError(f"{path} is corrupt ({e}); stop its processes by hand and remove it") from None

    def live_peers(self) -> list[ClusterPeer]:
        return [p for p in self.peers if pid_alive(p.pid) and owns_home(p.pid, Home(Path(p.home)))]


def _peer_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _CLUSTER_OWNED_ENV}


def _loopback_addr(listen: list[str]) -> str:
    for addr in listen:
        if addr.startswith("/ip4/127.") and "/p2p/" in addr:
            return addr
    raise ClusterError(f"peer 0 reports no loopback address to bootstrap from: {listen}")


def cluster_up(
    root: Path,
    peers: int,
    timeout: float = 60.0,
    validators: int | None = None,
    extra_accounts: Sequence[str] = (),
) -> Cluster:
    """Start `peers` peer processes under `root`; returns once all are serving and connected.

    The first `validators` peers (default min(peers, 4)) are the chain's genesis validators;
    `extra_accounts` are funded at genesis too (benchmarks sign with their keys).
    """
    if not 1 <= peers <= MAX_PEERS:
        raise ClusterError(f"--peers must be between 1 and {MAX_PEERS}, got {peers}")
    validators = min(peers, DEFAULT_VALIDATORS) if validators is None else validators
    if not 1 <= validators <= peers:
        raise ClusterError(
            f"--validators must be between 1 and the number of peers ({peers}), got {validators}"
        )
    root = root.expanduser().absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClusterError(f"cannot create {root}: {e.strerror or e}") from None
    existing = Cluster.load(root)
    if existing is not None and existing.live_peers():
        raise ClusterError(
            f"a cluster is already running in {root}; stop it with `hivemesh cluster down --dir {root}`"
        )
    cluster = Cluster(root)
    homes = [Home(root / f"peer-{i}") for i in range(peers)]
    ids = [
        init_home(
            home, listen=[CLUSTER_LISTEN], api_listen=CLUSTER_API, consensus=LOCAL_CONSENSUS
        ).identity.peer_id
        for home in homes
    ]
    genesis_path = write_cluster_genesis(root, ids, validators, extra_accounts)
    for home in homes:
        install_genesis(home, genesis_path)
    deadline = time.monotonic() + timeout
    run_args = ["--listen", CLUSTER_LISTEN, "--api", CLUSTER_API]
    try:
        first = _start(cluster, 0, homes[0], run_args)
        info = wait_serving(homes[0], first.pid, timeout=_left(deadline))
        bootstrap = _loopback_addr(info.listen)
        _fill(first, info.peer_id, info.api, bootstrap)
        started = [first] + [
            _start(cluster, i, home, [*run_args, "--bootstrap", bootstrap])
            for i, home in enumerate(homes)
            if i
        ]
        for peer, home in zip(started[1:], homes[1:], strict=True):
            info = wait_serving(home, peer.pid, timeout=_left(deadline))
            _fill(peer, info.peer_id, info.api, _loopback_addr(info.listen))
        cluster.save()
        wait_connected(cluster, timeout=_left(deadline))
    except BaseException:
        cluster_down(root, timeout=5.0)
        raise
    return cluster


def write_cluster_genesis(
    root: Path, peer_ids: list[str], validators: int, extra_accounts: Sequence[str] = ()
) -> Path:
    """`root/genesis.json` for these peers (kept as it is when it already lists exactly them)."""
    path = root / GENESIS_FILE
    accounts = [*peer_ids, *extra_accounts]
    wanted = local_genesis(accounts, peer_ids[:validators], chain_id=f"hivemesh-{root.name}"[:64])
    if path.exists():
        existing = read_genesis(path)
        same_peers = set(existing.balances) == set(accounts)
        same_validators = [v.address for v in existing.validators] == peer_ids[:validators]
        if same_peers and same_validators:
            return path
    write_genesis(path, wanted)
    return path


def _left(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


def _start(cluster: Cluster, index: int, home: Home, args: list[str]) -> ClusterPeer:
    process = spawn_peer(home, *args, env=_peer_env())
    peer = ClusterPeer(index=index, home=str(home.root), pid=process.pid)
    cluster.peers.append(peer)
    cluster.save()
    return peer


def _fill(peer: ClusterPeer, peer_id: str, api: str, multiaddr: str) -> None:
    peer.peer_id, peer.api, peer.multiaddr = peer_id, api, multiaddr


def wait_connected(cluster: Cluster, timeout: float) -> None:
    """Wait until peer 0 sees every other peer and every other peer sees at least one."""
    expected = {p.peer_id for p in cluster.peers}

    def connected() -> bool:
        for peer in cluster.peers:
            with ApiClient(peer.api_url, timeout=2.0) as client:
                seen = set(client.status()["connected_peers"])
            want = expected - {peer.peer_id} if peer.index == 0 else {cluster.peers[0].peer_id}
            if len(cluster.peers) > 1 and not want <= seen:
                return False
        return True

    try:
        wait_for(connected, timeout, f"{len(cluster.peers)} peers to connect", interval=0.1)
    except TimeoutError as e:
        raise ClusterError(f"{e}; see the peer.log in each peer's home under {cluster.root}") from None


def cluster_status(root: Path) -> list[dict[str, Any]]:
    """One row per peer: pid, alive, peer id, API, connected peers (or the error asking it)."""
    cluster = Cluster.load(root.expanduser().absolute())
    if cluster is None:
        raise ClusterError(f"no cluster in {root} (no {CLUSTER_FILE}); start one with `hivemesh cluster up`")
    rows = []
    for peer in cluster.peers:
        row: dict[str, Any] = {**asdict(peer), "alive": pid_alive(peer.pid), "connected_peers": None}
        if row["alive"]:
            try:
                with ApiClient(peer.api_url, timeout=3.0) as client:
                    status = client.status()
                row["connected_peers"] = len(status["connected_peers"])
                row["bootstrap"] = status.get("bootstrap", [])
            except PeerError as e:
                row["error"] = str(e)
        rows.append(row)
    return rows


def cluster_down(root: Path, timeout: float = 10.0) -> dict[int, str]:
    """Stop every peer of the cluster in `root` (idempotent). Returns pid -> outcome."""
    root = root.expanduser().absolute()
    cluster = Cluster.load(root)
    if cluster is None:
        return {}
    ours = [p for p in cluster.peers if owns_home(p.pid, Home(Path(p.home)))]
    outcome = {p.pid: "not running" for p in cluster.peers}
    outcome.update(stop_pids([p.pid for p in ours], timeout=timeout))
    for peer in cluster.peers:
        home = Home(Path(peer.home))
        try:
            info = read_run_info(home)
        except PeerError:
            info = None
        if info is not None and not pid_alive(info.pid):
            home.run_path.unlink(missing_ok=True)  # left behind by a killed peer
    cluster.path.unlink(missing_ok=True)
    return outcome
