"""`hivemesh demo`: the compute market end to end on a local cluster of real peer processes.

In a temporary directory: start 4 peers (all validators); peer 0 registers a small MLP as
its owner (royalty 5%), peers 2.. register as solvers, peer 1 submits a training job (a few
seconds of CPU on a synthetic dataset) and an inference job (private inputs, sealed to the
winner) through the market. Both are followed live until the ledger finalizes them. Then
the demo runs the same specs locally and checks the committed output hashes against that
run, shows who was paid what (balances before and after, each job's price split, fees) and
checks that every balance moved by exactly that; the cluster is torn down whatever happens.
With --cheat, two more peers join and a cheating solver is then caught (demo_cheat.py).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

from peer import render
from peer.client import ApiClient
from peer.cluster import DEFAULT_VALIDATORS, cluster_down, cluster_up
from peer.errors import ClusterError
from peer.market.render import follow_jobs
from peer.procs import wait_for

MODEL_SPEC = {"arch": "mlp", "in": 32, "hidden": [64, 64], "out": 10}
DATASET = {"kind": "classes", "seed": 7, "size": 512, "shape": [32], "classes": 10}
TRAINING = {"optimizer": {"name": "sgd", "lr": "1/20", "momentum": "9/10"}, "steps": 400, "batch_size": 32}
INFERENCE_ITEMS, INFERENCE_BATCH = 256, 64
ROYALTY_BPS = 500
BOUNTIES = {"training": 2_000, "inference": 1_000}
STEP_TIMEOUT = 120.0


def run_demo(peers: int = 4, timeout: float = 60.0, show: bool = True, cheat: bool = False) -> dict[str, Any]:
    """Run the demo (see the module docstring); returns what it found, for --json.

    With `cheat`, two more peers (a cheating solver and a verifier) join, and a cheat is caught
    after the normal round (peer/market/demo_cheat.py)."""
    if peers < 3:
        raise ClusterError("the market demo needs at least 3 peers (owner, submitter, solver)")
    say = render.console.print if show else (lambda *a, **k: None)
    with tempfile.TemporaryDirectory(prefix="hivemesh-demo-") as tmp:
        root = Path(tmp)
        try:
            validators = min(peers, DEFAULT_VALIDATORS)
            total = peers
            if cheat:
                from peer.market.demo_cheat import prepare_homes

                prepare_homes(root / "cluster", peers, validators)
                total += 2
            what = f"{validators} validators" if cheat else "all validators"
            say(f"starting {total} peers ({what}) in {root} …", markup=False)
            cluster = cluster_up(root / "cluster", total, timeout=timeout, validators=validators)
            clients = [ApiClient(p.api_url, timeout=STEP_TIMEOUT) for p in cluster.peers]
            ids = [p.peer_id for p in cluster.peers]
            try:
                result = _market_round(root, clients[:peers], ids[:peers], say, show)
                if cheat:
                    from peer.market.demo_cheat import cheat_round

                    result["cheat"] = cheat_round(
                        root, clients, ids, result["peers"], result["model"], say, show
                    )
                return result
            finally:
                for client in clients:
                    client.close()
        finally:
            say("tearing the cluster down", markup=False)
            cluster_down(root / "cluster")


def _market_round(
    root: Path, clients: list[ApiClient], ids: list[str], say: Any, show: bool
) -> dict[str, Any]:
    owner, submitter, solvers = clients[0], clients[1], clients[2:]
    roles = {ids[0]: "model owner", ids[1]: "submitter", **{i: "solver" for i in ids[2:]}}
    for peer_id, role in roles.items():
        say(f"  {peer_id}  {role}", markup=False)
    wait_for(lambda: all(c.get_json("/market/status")["ready"] for c in clients), STEP_TIMEOUT, "the markets")
    for client in solvers:
        client.submit("register", {"role": "solver"})
    say(f"registered {len(solvers)} solvers", markup=False)

    model, inputs_path = _write_model_and_inputs(root)
    registered = owner.post_json(
        "/market/models",
        {"spec": model.spec, "weights_path": str(root / "model.safetensors"), "royalty_bps": ROYALTY_BPS},
    )
    say(f"registered model {model.hash} (mlp 32→64→64→10, royalty {ROYALTY_BPS} bps)", markup=False)
    wait_for(
        lambda: any(m["announced_by"] for m in submitter.get_json("/market/models")),
        STEP_TIMEOUT,
        "the submitter to hear where the model is",
    )

    before = submitter.get_json("/market/supply")
    common = {"model_hash": model.hash, "bid_window_blocks": 3, "deadline_blocks": 60}
    jobs = [
        submitter.post_json(
            "/market/jobs",
            {
                **common,
                "kind": "training",
                "bounty": BOUNTIES["training"],
                "spec": {**TRAINING, "dataset": DATASET},
            },
        ),
        submitter.post_json(
            "/market/jobs",
            {
                **common,
                "bid_window_blocks": 0,  # awarded at post to the best solver quote...
                "accept": True,  # ...and accepted once our own spot check passes: final at once
                "kind": "inference",
                "bounty": BOUNTIES["inference"],
                "inputs_path": str(inputs_path),
                "spec": {"batch_size": INFERENCE_BATCH},
            },
        ),
    ]
    say(
        "submitted a training job (400 SGD steps, 3-block auction) and an inference job "
        "(256 private inputs, awarded to a solver quote):",
        markup=False,
    )
    views = _follow(submitter, [j["job_id"] for j in jobs], show)
    failed = [v for v in views if v["phase"] != "finalized"]
    if failed:
        raise ClusterError(f"job {failed[0]['job_id']} ended {failed[0]['phase']}")
    closed = max(v["closed_height"] for v in views)
    wait_for(
        lambda: submitter.get_json("/market/supply")["height"] >= closed, STEP_TIMEOUT, "the last payout"
    )
    after = submitter.get_json("/market/supply")

    checks = _check_against_local_runs(model, views, inputs_path, submitter)
    genesis = json.loads((root / "cluster" / "genesis.json").read_text())
    ledger = Accounts(submitter, before, after, genesis.get("params", {}))
    payouts = ledger.expected(views, registered["owner"], ROYALTY_BPS)
    if show:
        _show_results(checks)
        _show_payouts(ledger, payouts, roles)
    if not all(c["matches"] for c in checks):
        raise ClusterError("a committed output hash differs from the local run of the same spec")
    if not ledger.exact(payouts):
        raise ClusterError("balances did not move exactly by the price split and the fees")
    say("every balance moved exactly by the price split and the fees ✓", markup=False)
    return {"peers": roles, "model": model.hash, "jobs": views, "checks": checks, "supply": [before, after]}


def _write_model_and_inputs(root: Path) -> tuple[Any, Path]:
    from compute.datasets import SyntheticClasses, encode_inputs  # torch: only in the demo's own process
    from compute.models import Model

    model = Model.init(MODEL_SPEC, seed=1)
    (root / "model.safetensors").write_bytes(model.weights)
    x = SyntheticClasses(99, INFERENCE_ITEMS, (32,), 10).generate().x
    path = root / "inputs.safetensors"
    path.write_bytes(encode_inputs(x))
    return model, path


def _follow(client: ApiClient, job_ids: list[str], show: bool) -> list[dict[str, Any]]:
    return follow_jobs(client, job_ids, show=show, timeout=600.0)


def _check_against_local_runs(
    model: Any, views: list[dict[str, Any]], inputs_path: Path, client: ApiClient
) -> list[dict[str, Any]]:
    """Run each job's spec here and compare with what the solver committed and served."""
    from compute.datasets import decode_inputs
    from compute.determinism import tensors_hash
    from compute.executor import run_inference, run_training
    from compute.jobs import job_from_wire
    from compute.models import decode_weights

    checks = []
    for view in views:
        spec = job_from_wire(view["submitted_here"]["spec"])
        if view["kind"] == "training":
            weights, trace = run_training(spec, model)  # type: ignore[arg-type]
            local, local_root = tensors_hash(decode_weights(weights)), trace.root
        else:
            result = run_inference(spec, model, decode_inputs(inputs_path.read_bytes()))  # type: ignore[arg-type]
            local, local_root = result.outputs_hash, result.root
        served = client.request("GET", f"/market/jobs/{view['job_id']}/result").content
        checks.append(
            {
                "job_id": view["job_id"],
                "kind": view["kind"],
                "committed": view["output_hash"],
                "local": local,
                "served": tensors_hash(decode_weights(served)),
                "trace_root": view["trace_root"],
                "local_trace_root": local_root,
                "matches": view["output_hash"] == local == tensors_hash(decode_weights(served))
                and view["trace_root"] == local_root,
            }
        )
    return checks


class Accounts:
    """Balances before and after, and what the ledger's rules say each account should have got."""

    def __init__(
        self, client: ApiClient, before: dict[str, Any], after: dict[str, Any], params: dict[str, int]
    ) -> None:
        self.before, self.after = before, after
        self.verifier_bps = params.get("job_verifier_share_bps", 500)
        self.treasury_bps = params.get("job_treasury_share_bps", 200)
        self.max_royalty_bps = params.get("max_royalty_bps", 1_000)
        self.min_fee = params.get("min_fee", 1)
        self.fees_received = self._fees_received(client, before["height"], after["height"])
        self.pools = {"verifier pool": 0, "treasury": 0}  # expected pool changes (expected() fills them)

    @staticmethod
    def _fees_received(client: ApiClient, low: int, high: int) -> dict[str, int]:
        received: dict[str, int] = {}
        for height in range(low + 1, high + 1):
            block = client.query("block", height)
            fees = sum(client.query("tx", tx)["fee"] for tx in block["tx_hashes"])
            received[block["proposer"]] = received.get(block["proposer"], 0) + fees
        return received

    def fee_rows(self) -> dict[str, dict[str, int]]:
        """Per account: fees received as proposer less fees paid; "market" left at 0 for the caller."""
        rows: dict[str, dict[str, int]] = {}
        for address in self.after["accounts"]:
            nonces = self.after["accounts"][address]["nonce"] - self.before["accounts"].get(address, {}).get(
                "nonce", 0
            )
            rows[address] = {"market": 0, "fees": self.fees_received.get(address, 0) - nonces * self.min_fee}
        return rows

    def expected(
        self, views: list[dict[str, Any]], owner: str, royalty_bps: int
    ) -> dict[str, dict[str, int]]:
        """Per account: market income, market spending (from the finalized jobs), fees paid and received."""
        rows = self.fee_rows()
        pools = {"verifier pool": 0, "treasury": 0}
        for v in views:
            price = v["price"]
            royalty = price * min(royalty_bps, self.max_royalty_bps) // 10_000
            verifiers, treasury = price * self.verifier_bps // 10_000, price * self.treasury_bps // 10_000
            rows[v["submitter"]]["market"] -= price
            rows[v["solver"]]["market"] += price - royalty - verifiers - treasury
            rows[owner]["market"] += royalty
            pools["verifier pool"] += verifiers
            pools["treasury"] += treasury
        self.pools = pools
        return rows

    def delta(self, address: str) -> int:
        return self.after["accounts"][address]["balance"] - self.before["accounts"][address]["balance"]

    def exact(self, rows: dict[str, dict[str, int]]) -> bool:
        accounts = all(self.delta(a) == r["market"] + r["fees"] for a, r in rows.items())
        pools = (
            self.after["verifier_pool"] - self.before["verifier_pool"] == self.pools["verifier pool"]
            and self.after["treasury"] - self.before["treasury"] == self.pools["treasury"]
        )
        return accounts and pools and self.after["minted"] == self.after["total"] + self.after["burned"]


def _show_results(checks: list[dict[str, Any]]) -> None:
    table = Table(
        "job", "kind", "committed output hash", "= local run", "= served blob", "trace root = local"
    )
    for c in checks:
        ok = "✓" if c["committed"] == c["local"] else "✗"
        served = "✓" if c["served"] == c["committed"] else "✗"
        trace = "✓" if c["trace_root"] == c["local_trace_root"] else "✗"
        table.add_row(c["job_id"][:12] + "…", c["kind"], c["committed"][:24] + "…", ok, served, trace)
    render.console.print(table)


def _show_payouts(ledger: Accounts, rows: dict[str, dict[str, int]], roles: dict[str, str]) -> None:
    b, a = ledger.before, ledger.after
    table = Table(
        "account",
        "role",
        "before",
        "after",
        "change",
        "from jobs",
        "fees",
        title=f"who was paid what (heights {b['height']} → {a['height']})",
    )
    for address, row in rows.items():
        if address not in roles:
            continue
        table.add_row(
            render.short(address),
            roles[address],
            str(b["accounts"][address]["balance"]),
            str(a["accounts"][address]["balance"]),
            f"{ledger.delta(address):+d}",
            f"{row['market']:+d}",
            f"{row['fees']:+d}",
        )
    for name, key in (("verifier pool", "verifier_pool"), ("treasury", "treasury")):
        table.add_row(
            name, "", str(b[key]), str(a[key]), f"{a[key] - b[key]:+d}", f"{ledger.pools[name]:+d}", ""
        )
    render.console.print(table)
    render.console.print(
        f"the model owner's royalty is {ROYALTY_BPS} bps of each price; fees go to each block's proposer",
        markup=False,
    )
