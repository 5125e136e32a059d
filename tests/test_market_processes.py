"""The compute market across real peer processes: 4 validators started by `hivemesh cluster up`.

Peer 0 creates a model with `hivemesh model init` and registers it (royalty 5%), peers 2 and 3
register as solvers, peer 1 submits jobs with `hivemesh job submit`. Checked:
- an inference job submitted with no bid window is awarded in its post block to the best
  solver quote, spot-checked and accepted by its submitter, and finalized within a few heights;
- an inference job (private inputs, sealed to the winner) and a training job run concurrently
  and are finalized; their committed output hashes and trace roots equal a local run of the
  same spec in strict mode, and so does what `hivemesh job result` writes;
- every balance moved by exactly the price split (solver, royalty to the owner, verifier pool,
  treasury) and the fees (paid per tx, received by each block's proposer);
- user errors are one line and exit 1: unknown model, malformed spec, bounty over balance, a
  job that expires without bids;
- a solver killed (SIGKILL) while running a job: after the deadline the bounty is refunded,
  the bond slashed (half to the submitter, the rest burned), and no token is lost: balances +
  stake + escrow + bonds + pools + burned stays what was minted, at every step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from compute.datasets import SyntheticClasses, decode_inputs, encode_inputs
from compute.determinism import tensors_hash
from compute.executor import run_inference, run_training
from compute.jobs import job_from_wire
from compute.models import Model, decode_weights
from peer.cluster import Cluster, cluster_down
from peer.procs import pid_alive, wait_for

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

ROYALTY_BPS = 500
DATASET = "classes:seed=3,size=256,shape=16,classes=4"
SUPPLY_PARTS = (
    "balances",
    "bonded",
    "unbonding",
    "fee_pool",
    "deposits",
    "escrow",
    "job_bonds",
    "bid_bonds",
    "verifier_pool",
    "treasury",
    "games",
)


def hivemesh(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peer", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def get(api: str, path: str) -> Any:
    response = httpx.get(f"http://{api}{path}", timeout=30.0, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


def post(api: str, path: str, payload: dict[str, Any]) -> Any:
    response = httpx.post(f"http://{api}{path}", json=payload, timeout=120.0, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


@dataclass
class Market:
    cluster: Cluster
    model: Model
    model_file: Path
    params: dict[str, int]

    def api(self, index: int) -> str:
        return self.cluster.peers[index].api

    def home(self, index: int) -> str:
        return self.cluster.peers[index].home

    def peer_id(self, index: int) -> str:
        return self.cluster.peers[index].peer_id


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    root = tmp_path_factory.mktemp("market")
    try:
        up = hivemesh("cluster", "up", "--peers", "4", "--dir", root / "cluster", "--json")
        assert up.returncode == 0, up.stderr
        cluster = Cluster.load(root / "cluster")
        assert cluster is not None
        apis = [p.api for p in cluster.peers]
        wait_for(lambda: all(get(api, "/market/status")["ready"] for api in apis), 60, "every market")
        for peer in cluster.peers[2:]:
            registered = hivemesh("--home", peer.home, "tx", "register", "solver")
            assert registered.returncode == 0, registered.stderr
        made = hivemesh("model", "init", "--arch", "mlp", "--spec", '{"in": 16, "hidden": [32], "out": 4}',
                        "--seed", "5", "-o", root / "model.safetensors", "--json")  # fmt: skip
        assert made.returncode == 0, made.stderr
        model_file = root / "model.safetensors"
        model = Model.create(json.loads((root / "model.json").read_text()), model_file.read_bytes())
        assert json.loads(made.stdout)["model_hash"] == model.hash
        reg = hivemesh("--home", cluster.peers[0].home, "model", "register", model_file,
                       "--royalty", str(ROYALTY_BPS), "--arch", "mlp", "--json")  # fmt: skip
        assert reg.returncode == 0, reg.stderr
        assert json.loads(reg.stdout)["model_hash"] == model.hash
        submitter = apis[1]
        announced = lambda: any(m["announced_by"] for m in get(submitter, "/market/models"))  # noqa: E731
        wait_for(announced, 60, "the model announcement")
        params = json.loads((root / "cluster" / "genesis.json").read_text())["params"]
        yield Market(cluster, model, model_file, params)
    finally:
        cluster_down(root / "cluster", timeout=5.0)


def supply(market: Market, index: int = 1) -> dict[str, Any]:
    snapshot = get(market.api(index), "/market/supply")
    assert sum(snapshot[part] for part in SUPPLY_PARTS) == snapshot["total"]
    assert snapshot["total"] + snapshot["burned"] == snapshot["minted"]  # nothing lost, nothing made
    return snapshot


def fee_flows(api: str, before: dict[str, Any], after: dict[str, Any], min_fee: int) -> dict[str, int]:
    """Per account between two snapshots: fees received as block proposer minus fees paid (per tx)."""
    flows: dict[str, int] = {}
    for height in range(before["height"] + 1, after["height"] + 1):
        block = get(api, f"/query/block/{height}")
        fees = sum(get(api, f"/query/tx/{tx}")["fee"] for tx in block["tx_hashes"])
        flows[block["proposer"]] = flows.get(block["proposer"], 0) + fees
    for address, account in after["accounts"].items():
        sent = account["nonce"] - before["accounts"].get(address, {"nonce": 0})["nonce"]
        flows[address] = flows.get(address, 0) - sent * min_fee
    return flows


def balance_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    return {a: after["accounts"][a]["balance"] - before["accounts"][a]["balance"] for a in after["accounts"]}


def test_inference_and_training_jobs_are_finalized_and_paid_exactly(market: Market, tmp_path: Path) -> None:
    x = SyntheticClasses(11, 100, (16,), 4).generate().x
    inputs = tmp_path / "inputs.safetensors"
    inputs.write_bytes(encode_inputs(x))
    before = supply(market)
    home, m = market.home(1), market.model.hash
    common = ["--home", home, "job", "submit", "--model", m, "--bid-window", "3", "--json"]
    commands = [
        [*common, "--bounty", "1000", "--inference", inputs, "--batch-size", "32"],
        [
            *common,
            "--bounty",
            "3000",
            "--train",
            DATASET,
            "--steps",
            "300",
            "--batch-size",
            "16",
            "--lr",
            "0.05",
        ],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "peer", *map(str, c)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for c in commands
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err.decode()[-2000:] for _, err in outs]
    views = [json.loads(out) for out, _ in outs]
    assert [v["status"] for v in views] == ["finalized", "finalized"]
    assert all(v["submitted_here"]["verified"] for v in views)
    wait_for(lambda: supply(market)["height"] >= max(v["closed_height"] for v in views), 60, "the payouts")
    after = supply(market)

    # Outputs equal a local run of the same spec (strict mode: bitwise), and so does the served result.
    inference, training = views
    spec = job_from_wire(inference["submitted_here"]["spec"])
    local = run_inference(spec, market.model, decode_inputs(inputs.read_bytes()))  # type: ignore[arg-type]
    assert (inference["output_hash"], inference["trace_root"]) == (local.outputs_hash, local.root)
    spec = job_from_wire(training["submitted_here"]["spec"])
    weights, trace = run_training(spec, market.model)  # type: ignore[arg-type]
    assert (training["output_hash"], training["trace_root"]) == (
        tensors_hash(decode_weights(weights)),
        trace.root,
    )
    for view in views:
        out = tmp_path / f"{view['kind']}.safetensors"
        fetched = hivemesh("--home", market.home(3), "job", "result", view["job_id"], "-o", out)
        assert fetched.returncode == 0, fetched.stderr
        assert tensors_hash(decode_weights(out.read_bytes())) == view["output_hash"]

    assert_paid_exactly(market, before, after, views)


def assert_paid_exactly(
    market: Market, before: dict[str, Any], after: dict[str, Any], views: list[dict[str, Any]]
) -> None:
    """Balances moved by exactly the price split of the finalized jobs `views` and the fees."""
    p = market.params
    owner, submitter = market.peer_id(0), market.peer_id(1)
    expected = dict.fromkeys(after["accounts"], 0)
    pools = {"verifier_pool": 0, "treasury": 0}
    for view in views:
        price = view["price"]
        royalty = price * ROYALTY_BPS // 10_000
        verifiers = price * p.get("job_verifier_share_bps", 500) // 10_000
        treasury = price * p.get("job_treasury_share_bps", 200) // 10_000
        expected[submitter] -= price
        expected[view["solver"]] += price - royalty - verifiers - treasury
        expected[owner] += royalty
        pools["verifier_pool"] += verifiers
        pools["treasury"] += treasury
        assert view["solver"] in (market.peer_id(2), market.peer_id(3))
    fees = fee_flows(market.api(1), before, after, p.get("min_fee", 1))
    assert balance_changes(before, after) == {a: expected[a] + fees.get(a, 0) for a in expected}
    assert {k: after[k] - before[k] for k in pools} == pools
    assert (after["escrow"], after["job_bonds"], after["bid_bonds"]) == (0, 0, 0)
    assert (after["minted"], after["burned"]) == (before["minted"], before["burned"])


def test_an_inference_job_awarded_to_a_quote_is_accepted_and_finalized_at_once(
    market: Market, tmp_path: Path
) -> None:
    """No bid window: the job is assigned in its post block to the best quote, and the submitter's
    own spot check of the result accepts it, long before the challenge window would end."""
    x = SyntheticClasses(12, 64, (16,), 4).generate().x
    inputs = tmp_path / "inputs.safetensors"
    inputs.write_bytes(encode_inputs(x))
    before = supply(market)
    result = hivemesh("--home", market.home(1), "job", "submit", "--model", market.model.hash,
                      "--bounty", "1000", "--inference", inputs, "--batch-size", "16",
                      "--bid-window", "0", "--accept", "--challenge-window", "50", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    view = json.loads(result.stdout)
    assert (view["status"], view["bid_window_blocks"]) == ("finalized", 0)
    assert view["solver"] in (market.peer_id(2), market.peer_id(3))
    assert view["assigned_height"] == view["post_height"]  # awarded in the block that posted it
    accepted = lambda: get(market.api(1), f"/market/jobs/{view['job_id']}")["submitted_here"]["accepted"]  # noqa: E731
    wait_for(lambda: accepted() == "sent", 30, "the submitter's accept")  # the tx that finalized it
    assert view["closed_height"] < view["commit_height"] + 50  # accepted, not timed out
    assert view["closed_height"] - view["post_height"] <= 4
    spec = job_from_wire(view["submitted_here"]["spec"])
    local = run_inference(spec, market.model, decode_inputs(inputs.read_bytes()))  # type: ignore[arg-type]
    assert (view["output_hash"], view["trace_root"]) == (local.outputs_hash, local.root)
    wait_for(lambda: supply(market)["height"] >= view["closed_height"], 60, "the payout")
    assert_paid_exactly(market, before, supply(market), [view])


def test_user_errors_are_one_line(market: Market, tmp_path: Path) -> None:
    home, m = market.home(1), market.model.hash
    inputs = tmp_path / "inputs.safetensors"
    inputs.write_bytes(encode_inputs(SyntheticClasses(1, 8, (16,), 4).generate().x))
    cases = {
        "unknown model": ("--model", "ab" * 32, "--bounty", "10", "--inference", inputs),
        "malformed": ("--model", m, "--bounty", "10", "--train", DATASET, "--optimizer", "rmsprop"),
        "must have shape": (
            "--model",
            m,
            "--bounty",
            "10",
            "--train",
            "classes:seed=1,size=64,shape=8,classes=4",
        ),
        "over the balance": ("--model", m, "--bounty", str(10**15), "--inference", inputs),
        "expired": ("--model", m, "--bounty", "10", "--inference", inputs, "--min-reputation", "10000"),
    }
    for words, args in cases.items():
        result = hivemesh("--home", home, "job", "submit", *args, "--quiet")
        assert result.returncode == 1, (words, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (
            words,
            result.stderr,
        )
        assert "Traceback" not in result.stderr
    expired = get(market.api(1), "/market/jobs?status=expired&mine=1")
    assert len(expired) == 1
    result = hivemesh("--home", home, "job", "result", expired[0]["job_id"], "-o", tmp_path / "none")
    assert result.returncode == 1 and "no solver bid" in result.stderr


def test_a_job_cancelled_while_bidding_refunds_the_bounty(market: Market, tmp_path: Path) -> None:
    home, api = market.home(1), market.api(1)
    inputs = tmp_path / "inputs.safetensors"
    inputs.write_bytes(encode_inputs(SyntheticClasses(2, 8, (16,), 4).generate().x))
    before = supply(market)
    posted = hivemesh("--home", home, "job", "submit", "--model", market.model.hash, "--bounty", "50",
                      "--inference", inputs, "--bid-window", "1000", "--no-wait", "--json")  # fmt: skip
    assert posted.returncode == 0, posted.stderr
    job_id = json.loads(posted.stdout)["job_id"]
    wait_for(lambda: get(api, f"/market/jobs/{job_id}")["status"] == "open", 60, "the job on the ledger")
    cancelled = hivemesh("--home", home, "job", "cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"job {job_id} cancelled at height ")
    view = get(api, f"/market/jobs/{job_id}")
    assert (view["status"], view["phase"]) == ("cancelled", "cancelled")
    after = supply(market)
    assert after["escrow"] == before["escrow"]  # the bounty left escrow again
    again = hivemesh("--home", home, "job", "cancel", job_id)  # no longer open: one clear line
    assert again.returncode == 1 and again.stderr.startswith("error: ") and "Traceback" not in again.stderr
    other = hivemesh("--home", market.home(0), "job", "cancel", job_id)
    assert other.returncode == 1 and other.stderr.startswith("error: "), other.stderr


def test_a_solver_killed_mid_job_is_slashed_and_nothing_is_lost(market: Market) -> None:
    before = supply(market)
    request = {
        "model_hash": market.model.hash,
        "kind": "training",
        "bounty": 5000,
        "bid_window_blocks": 3,
        "deadline_blocks": 12,
        "spec": {
            "dataset": {"kind": "classes", "seed": 4, "size": 256, "shape": [16], "classes": 4},
            "optimizer": {"name": "sgd", "lr": "1/20"},
            "steps": 100_000,
            "batch_size": 16,
            "checkpoint_every": 10_000,
        },
    }
    job_id = post(market.api(1), "/market/jobs", request)["job_id"]
    view = wait_for(
        lambda: (v := get(market.api(1), f"/market/jobs/{job_id}"))["phase"] == "running" and v,
        60,
        "the job to run",
    )
    victim = next(p for p in market.cluster.peers if p.peer_id == view["solver"])
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(victim.pid), 10, "the killed solver to exit")
    held = supply(market)
    assert held["escrow"] >= request["bounty"] and held["job_bonds"] >= view["bond"]

    missed = wait_for(
        lambda: (v := get(market.api(1), f"/market/jobs/{job_id}"))["status"] == "missed" and v,
        120,
        "the deadline",
    )
    wait_for(lambda: supply(market)["height"] >= missed["closed_height"], 30, "the refund")
    after = supply(market)
    bond = view["bond"]
    compensation = bond * market.params.get("job_miss_compensation_bps", 5_000) // 10_000
    expected = dict.fromkeys(after["accounts"], 0)
    expected[market.peer_id(1)] += compensation  # the bounty came back whole, plus half the bond
    expected[victim.peer_id] -= bond
    fees = fee_flows(market.api(1), before, after, market.params.get("min_fee", 1))
    assert balance_changes(before, after) == {a: expected[a] + fees.get(a, 0) for a in expected}
    assert after["burned"] - before["burned"] == bond - compensation
    assert after["minted"] == before["minted"]
    assert (after["escrow"], after["job_bonds"]) == (0, 0)
    assert get(market.api(2 if victim.index == 3 else 3), f"/market/jobs/{job_id}")["status"] == "missed"
