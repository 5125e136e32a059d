"""The ledger across real peer processes started by the CLI.

A cluster of 4 validators and 1 non-validator commits transfers; balances move exactly and
fees go to each block's proposer. Then, while txs keep coming: a validator is killed with
SIGKILL (3 of 4 is more than 2/3, so the chain goes on) and restarted from its home, where it
catches up; another validator is frozen with SIGSTOP and thawed; the non-validator's block
store is deleted and it resyncs; a late joiner with only the genesis syncs from scratch.
Finally every peer holds the same block hashes and app hashes up to a common height, and every
tx that the CLI or the API acknowledged as committed is in every peer's chain.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gossip.identity import Identity
from peer.cluster import Cluster, cluster_down
from peer.genesis_file import DEFAULT_BALANCE
from peer.home import Home
from peer.procs import pid_alive, spawn_peer, stop_pids, stop_process, wait_for, wait_serving

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

LOOPBACK = ("--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0")
COMMITTED = re.compile(r"^tx ([0-9a-f]{64}) committed at height (\d+) \(index \d+\)$")
FEE = 2


def hivemesh(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peer", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def get(api: str, path: str) -> Any:
    response = httpx.get(f"http://{api}{path}", timeout=10.0, trust_env=False)
    response.raise_for_status()
    return response.json()


def post(api: str, path: str, payload: dict[str, Any]) -> Any:
    response = httpx.post(f"http://{api}{path}", json=payload, timeout=60.0, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


def height(api: str) -> int:
    return int(get(api, "/ledger/status")["height"])


@dataclass
class Net:
    """The cluster plus what the test starts itself; `acked` is every tx acknowledged as committed."""

    cluster: Cluster
    apis: dict[str, str]  # peer name -> API address of its current process
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # tx hash -> height it committed at
    sent: dict[str, int] = field(default_factory=dict)  # recipient -> total received

    def home(self, index: int) -> Home:
        return Home(Path(self.cluster.peers[index].home))

    def start(self, name: str, home: Home) -> None:
        """Start (or restart) a peer from `home`, bootstrapped from peer 0."""
        process = spawn_peer(home, *LOOPBACK, "--bootstrap", self.cluster.peers[0].multiaddr)
        self.extra.append(process)
        self.apis[name] = wait_serving(home, process.pid, timeout=60).api

    def transfer_cli(self, home: Home, to: str, amount: int) -> None:
        result = hivemesh("--home", home.root, "tx", "transfer", to, str(amount), "--fee", str(FEE))
        assert result.returncode == 0, result.stderr
        match = COMMITTED.match(result.stdout.strip())
        assert match, result.stdout
        self.acked[match.group(1)] = int(match.group(2))
        self.sent[to] = self.sent.get(to, 0) + amount

    def transfers_api(self, name: str, to: str, amounts: list[int]) -> None:
        """Submit without waiting, then wait until each is committed (what a client would do)."""
        self.wait_committed(name, self.submit(name, to, amounts))

    def submit(self, name: str, to: str, amounts: list[int]) -> list[str]:
        hashes = []
        for amount in amounts:
            body = {"to": to, "amount": amount}
            result = post(
                self.apis[name], "/tx", {"type": "transfer", "body": body, "fee": FEE, "wait": False}
            )
            hashes.append(result["tx_hash"])
            self.sent[to] = self.sent.get(to, 0) + amount
        return hashes

    def wait_committed(self, name: str, hashes: list[str]) -> None:
        api = self.apis[name]

        def committed() -> bool:
            for tx_hash in hashes:
                if tx_hash not in self.acked:
                    response = httpx.get(f"http://{api}/query/tx/{tx_hash}", timeout=10.0, trust_env=False)
                    if response.status_code != 200:
                        return False
                    found = response.json()
                    assert found["ok"], found
                    self.acked[tx_hash] = found["height"]
            return True

        wait_for(committed, 60, f"{len(hashes)} transfers to commit", interval=0.1)

    def wait_caught_up(self, name: str, others: list[str], timeout: float = 60) -> None:
        """Wait until `name` has reached the height the others have now, with the same block there."""
        target = min(height(self.apis[o]) for o in others)
        wait_for(lambda: height(self.apis[name]) >= target, timeout, f"{name} to reach height {target}", 0.1)
        assert block_hash(self.apis[name], target) == block_hash(self.apis[others[0]], target)


def block_hash(api: str, at: int) -> str:
    return str(get(api, f"/query/block/{at}")["hash"])


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    directory = tmp_path / "chain"
    up = hivemesh("cluster", "up", "--peers", "5", "--validators", "4", "--dir", directory, "--json")
    network: Net | None = None
    try:
        assert up.returncode == 0, up.stderr
        cluster = Cluster.load(directory)
        assert cluster is not None
        network = Net(cluster, {f"peer-{p.index}": p.api for p in cluster.peers})
        yield network
    finally:
        for process in network.extra if network else []:
            stop_process(process, timeout=5.0)
        cluster_down(directory, timeout=5.0)


def test_chain_survives_faults_and_every_peer_agrees(net: Net) -> None:
    peers = net.cluster.peers
    ids = [p.peer_id for p in peers]
    validators = get(net.apis["peer-0"], "/query/validators")["validators"]
    assert sorted(v["address"] for v in validators) == sorted(ids[:4])
    assert len({v["power"] for v in validators}) == 1 and validators[0]["power"] > 0
    assert get(net.apis["peer-4"], "/ledger/status")["is_validator"] is False

    # Transfers from the non-validator, through the CLI and the API.
    alice, bob = Identity.generate().peer_id, Identity.generate().peer_id
    sender = net.home(4)
    for amount in (100, 250):
        net.transfer_cli(sender, alice, amount)
    net.transfers_api("peer-4", bob, [1, 2, 3, 4, 5])
    assert get(net.apis["peer-2"], f"/query/balance/{alice}")["balance"] == 350
    assert get(net.apis["peer-1"], f"/query/balance/{bob}")["balance"] == 15

    # kill -9 a validator while txs are on their way: the other three (3/4 > 2/3) keep committing.
    victim = peers[3]
    in_flight = net.submit("peer-4", alice, [10, 20])
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(victim.pid), 10, "the killed validator to exit")
    net.wait_committed("peer-4", in_flight + net.submit("peer-4", alice, [30, 40]))
    net.start("peer-3", net.home(3))  # same home: same key, its store survived the kill
    net.wait_caught_up("peer-3", ["peer-0", "peer-1", "peer-2"])

    # Freeze another validator; the chain goes on without it and it catches up once thawed.
    frozen = peers[2]
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        net.transfers_api("peer-4", bob, [7, 8])
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    net.wait_caught_up("peer-2", ["peer-0", "peer-1", "peer-3"])

    # Wipe the non-validator's block store: it resyncs the whole chain from its peers.
    stop_pids([peers[4].pid], timeout=10)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{net.home(4).ledger_path}{suffix}").unlink(missing_ok=True)
    net.start("peer-4", net.home(4))
    net.wait_caught_up("peer-4", ["peer-0", "peer-1"])
    net.transfers_api("peer-4", alice, [50])  # its nonce comes back from the resynced state

    # A late joiner with nothing but the genesis syncs from scratch.
    late = Home(net.cluster.root / "late")
    joined = hivemesh("--home", late.root, "init", "--genesis", net.cluster.root / "genesis.json", "--json")
    assert joined.returncode == 0 and json.loads(joined.stdout)["chain_id"], joined.stderr
    net.start("late", late)
    net.wait_caught_up("late", ["peer-0", "peer-1"])

    check_agreement(net, ids)


def chain_view(api: str, top: int, tx_hashes: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Blocks 1..top and the given txs as one peer reports them (one keep-alive connection)."""
    with httpx.Client(base_url=f"http://{api}", timeout=10.0, trust_env=False) as client:
        blocks = [client.get(f"/query/block/{h}").json() for h in range(1, top + 1)]
        txs = {h: client.get(f"/query/tx/{h}").json() for h in tx_hashes}
    return blocks, txs


def check_agreement(net: Net, ids: list[str]) -> None:
    """Same blocks, app hashes, acknowledged txs, balances and proposer fees on every peer."""
    apis = list(net.apis.values())
    common = min(height(api) for api in apis)
    assert common >= max(net.acked.values())
    acked = sorted(net.acked)
    with ThreadPoolExecutor(len(apis)) as pool:
        views = list(pool.map(lambda api: chain_view(api, common, acked), apis))
    blocks = views[0][0]
    assert [b["height"] for b in blocks] == list(range(1, common + 1))
    for api, (their_blocks, their_txs) in zip(apis, views, strict=True):
        # Block h carries the app hash after h - 1: equal blocks mean equal app hashes too.
        assert [(b["hash"], b["last_app_hash"]) for b in their_blocks] == [
            (b["hash"], b["last_app_hash"]) for b in blocks
        ], api
        for tx_hash in acked:
            found = their_txs[tx_hash]
            assert (found.get("height"), found.get("ok")) == (net.acked[tx_hash], True), (api, tx_hash, found)
        assert {h for b in their_blocks for h in b["tx_hashes"]} == set(acked), api

    # Balances moved exactly: recipients got what was sent; the sender paid amounts and fees.
    reference = net.apis["peer-0"]
    for recipient, total in net.sent.items():
        assert {get(api, f"/query/balance/{recipient}")["balance"] for api in apis} == {total}
    paid = sum(net.sent.values()) + FEE * len(net.acked)
    assert get(reference, f"/query/balance/{ids[4]}")["balance"] == DEFAULT_BALANCE - paid

    # Fees go to the proposer of the block that carried the tx (validators sent no txs).
    earned = dict.fromkeys(ids[:4], 0)
    for block in blocks:
        earned[block["proposer"]] += FEE * len(block["tx_hashes"])
    assert sum(earned.values()) == FEE * len(net.acked)
    for address, fees in earned.items():
        assert get(reference, f"/query/balance/{address}")["balance"] == DEFAULT_BALANCE + fees
