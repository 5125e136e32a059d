"""The market agents survive a restart without losing a job: real peer processes (`hivemesh cluster up`).

Peer 0 registers a model, peer 3 is the only solver, peer 1 submits. Checked:
- the submitter killed (SIGKILL) right after posting a private-input inference job and started
  again on the same home: it seals the input to the winner, the job finalizes and the
  submitter holds the checked result, equal to a local run of the spec;
- the solver killed while running an assigned training job (once it has persisted a
  checkpoint past step 0) and started again before the deadline: it goes on from its last
  recorded checkpoint (not step 0), commits, the job finalizes and it is paid its share of the
  price (no bond slashed, nothing burned);
- each agent's journal forgets the job once it has settled.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compute.datasets import SyntheticClasses, decode_inputs, encode_inputs
from compute.determinism import tensors_hash
from compute.executor import run_inference
from compute.jobs import job_from_wire
from compute.models import Model, decode_weights
from peer.cluster import CLUSTER_API, CLUSTER_LISTEN, Cluster, cluster_down
from peer.home import Home
from peer.procs import pid_alive, spawn_peer, wait_for, wait_serving
from tests.test_market_processes import (
    ROYALTY_BPS,
    Market,
    balance_changes,
    fee_flows,
    get,
    hivemesh,
    post,
    supply,
)

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SUBMITTER, SOLVER = 1, 3
DEADLINE_BLOCKS = 150  # room for a restart (process start, block sync) and a whole re-run
JOB_WAIT_S = 150.0


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    root = tmp_path_factory.mktemp("restart")
    try:
        up = hivemesh("cluster", "up", "--peers", "4", "--dir", root / "cluster", "--json")
        assert up.returncode == 0, up.stderr
        cluster = Cluster.load(root / "cluster")
        assert cluster is not None
        apis = [p.api for p in cluster.peers]
        wait_for(lambda: all(get(api, "/market/status")["ready"] for api in apis), 60, "every market")
        registered = hivemesh("--home", cluster.peers[SOLVER].home, "tx", "register", "solver")
        assert registered.returncode == 0, registered.stderr
        made = hivemesh("model", "init", "--arch", "mlp", "--spec", '{"in": 16, "hidden": [32], "out": 4}',
                        "--seed", "7", "-o", root / "model.safetensors", "--json")  # fmt: skip
        assert made.returncode == 0, made.stderr
        model_file = root / "model.safetensors"
        model = Model.create(json.loads((root / "model.json").read_text()), model_file.read_bytes())
        reg = hivemesh("--home", cluster.peers[0].home, "model", "register", model_file,
                       "--royalty", str(ROYALTY_BPS), "--arch", "mlp", "--json")  # fmt: skip
        assert reg.returncode == 0, reg.stderr
        for api in (apis[SUBMITTER], apis[SOLVER]):
            announced = lambda a=api: any(m["announced_by"] for m in get(a, "/market/models"))  # noqa: E731
            wait_for(announced, 60, "the model announcement")
        params = json.loads((root / "cluster" / "genesis.json").read_text())["params"]
        yield Market(cluster, model, model_file, params)
    finally:
        cluster_down(root / "cluster", timeout=5.0)


def kill(market: Market, index: int) -> None:
    peer = market.cluster.peers[index]
    os.kill(peer.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(peer.pid), 10, "the killed peer to exit")


def restart(market: Market, index: int) -> None:
    """Start peer `index` again on the same home, bootstrapped from peer 0."""
    peer = market.cluster.peers[index]
    home = Home(Path(peer.home))
    bootstrap = market.cluster.peers[0].multiaddr
    process = spawn_peer(home, "--listen", CLUSTER_LISTEN, "--api", CLUSTER_API, "--bootstrap", bootstrap)
    peer.pid = process.pid
    market.cluster.save()  # so that cluster_down stops the new process
    info = wait_serving(home, process.pid, timeout=60)
    peer.api = info.api
    wait_for(lambda: get(peer.api, "/market/status")["ready"], 60, "the restarted market")


def job_view(market: Market, index: int, job_id: str) -> dict[str, Any]:
    return get(market.api(index), f"/market/jobs/{job_id}")  # type: ignore[no-any-return]


def journal(market: Market, index: int, name: str) -> dict[str, Any]:
    path = Path(market.home(index)) / "data" / "market" / name
    return json.loads(path.read_text())["records"] if path.exists() else {}  # type: ignore[no-any-return]


def journal_jobs(market: Market, index: int, name: str) -> set[str]:
    return set(journal(market, index, name))


def recorded_steps(market: Market, index: int, job_id: str) -> list[int]:
    """Steps of the checkpoints an unfinished training run on peer `index` has persisted."""
    path = Path(market.home(index)) / "data" / "market" / "checkpoints" / "running" / f"{job_id}.json"
    try:
        return [step for step, _ in json.loads(path.read_text())["checkpoints"]]
    except (FileNotFoundError, ValueError):  # not written yet, or being replaced
        return []


def test_a_submitter_killed_after_posting_still_gets_its_checked_result(
    market: Market, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.safetensors"
    inputs.write_bytes(encode_inputs(SyntheticClasses(13, 64, (16,), 4).generate().x))
    request = {
        "model_hash": market.model.hash,
        "kind": "inference",
        "bounty": 1_000,
        "inputs_path": str(inputs),
        "spec": {"batch_size": 16},
        "bid_window_blocks": 15,  # assigned only once the submitter is down
        "deadline_blocks": DEADLINE_BLOCKS,
    }
    job_id = post(market.api(SUBMITTER), "/market/jobs", request)["job_id"]
    assert job_id in journal_jobs(market, SUBMITTER, "submitter.json")  # on disk before the API answered
    # The solver needs the spec blob (only the submitter has it) to bid: kill once it did.
    wait_for(lambda: job_view(market, SUBMITTER, job_id)["phase"] == "bidding", 60, "the solver's bid")
    kill(market, SUBMITTER)
    assert journal(market, SUBMITTER, "submitter.json")[job_id]["input_blob"] == ""  # not sent before
    restart(market, SUBMITTER)

    view = wait_for(
        lambda: (v := job_view(market, SUBMITTER, job_id))["status"] == "finalized" and v,
        JOB_WAIT_S,
        "the job to finalize",
    )
    mine = wait_for(
        lambda: (
            (v := job_view(market, SUBMITTER, job_id)["submitted_here"])["result_state"] != "waiting" and v
        ),
        60,
        "the submitter's check of the result",
    )
    assert (mine["result_state"], mine["verified"], mine["error"]) == ("verified", True, "")
    spec = job_from_wire(mine["spec"])
    local = run_inference(spec, market.model, decode_inputs(inputs.read_bytes()))  # type: ignore[arg-type]
    assert (view["output_hash"], view["trace_root"]) == (local.outputs_hash, local.root)
    out = tmp_path / "result.safetensors"
    fetched = hivemesh("--home", market.home(SUBMITTER), "job", "result", job_id, "-o", out)
    assert fetched.returncode == 0, fetched.stderr
    assert tensors_hash(decode_weights(out.read_bytes())) == view["output_hash"]
    wait_for(
        lambda: job_id not in journal_jobs(market, SUBMITTER, "submitter.json"), 30, "the journal to prune"
    )


def test_a_solver_killed_mid_job_finishes_after_a_restart_and_is_paid(market: Market) -> None:
    before = supply(market)
    request = {
        "model_hash": market.model.hash,
        "kind": "training",
        "bounty": 3_000,
        "bid_window_blocks": 3,
        "deadline_blocks": DEADLINE_BLOCKS,
        "spec": {
            "dataset": {"kind": "classes", "seed": 4, "size": 256, "shape": [16], "classes": 4},
            "optimizer": {"name": "sgd", "lr": "1/20"},
            "steps": 20_000,  # seconds of work left once the first checkpoint past 0 is persisted
            "batch_size": 16,
            "checkpoint_every": 1_000,
        },
    }
    job_id = post(market.api(SUBMITTER), "/market/jobs", request)["job_id"]
    running = wait_for(
        lambda: (v := job_view(market, SUBMITTER, job_id))["phase"] == "running" and v,
        60,
        "the job to run",
    )
    assert running["solver"] == market.peer_id(SOLVER)
    assert job_id in journal_jobs(market, SOLVER, "solver.json")
    wait_for(lambda: len(recorded_steps(market, SOLVER, job_id)) >= 2, 60, "a checkpoint past step 0")
    kill(market, SOLVER)
    persisted = recorded_steps(market, SOLVER, job_id)
    restart(market, SOLVER)
    assert job_view(market, SUBMITTER, job_id)["status"] in ("assigned", "committed")  # before the deadline

    done = wait_for(
        lambda: (v := job_view(market, SUBMITTER, job_id))["status"] not in ("assigned", "committed") and v,
        JOB_WAIT_S,
        "the job to settle",
    )
    assert done["status"] == "finalized", done
    resumed = job_view(market, SOLVER, job_id)["solved_here"]
    assert resumed is not None and 0 < persisted[-1] == resumed["start_step"] < 20_000, (persisted, resumed)
    wait_for(lambda: supply(market)["height"] >= done["closed_height"], 60, "the payout")
    after = supply(market)
    p, price, solver = market.params, done["price"], market.peer_id(SOLVER)
    royalty = price * ROYALTY_BPS // 10_000
    verifiers = price * p.get("job_verifier_share_bps", 500) // 10_000
    treasury = price * p.get("job_treasury_share_bps", 200) // 10_000
    fees = fee_flows(market.api(SUBMITTER), before, after, p.get("min_fee", 1))
    changes = balance_changes(before, after)
    paid = price - royalty - verifiers - treasury
    assert changes[solver] == paid + fees.get(solver, 0)  # paid its share, no bond slashed
    assert (after["burned"], after["job_bonds"], after["escrow"]) == (before["burned"], 0, 0)
    wait_for(lambda: job_id not in journal_jobs(market, SOLVER, "solver.json"), 30, "the journal to prune")
