"""`hivemesh demo --cheat`: after the market round, a cheating solver is caught, disputed and slashed.

Two more peers join the demo's cluster (neither a validator): a solver running the TEST
behaviour "wrong" (peer/market/behaviours.py: it perturbs a batch of every inference result)
that undercuts the honest solvers' price, and an honest verifier agent. Their homes get their
config.toml before `cluster up`, with a genesis whose spot-check rate is 100% (every batch of a
result is re-run) and no per-report reward (so the balances can be checked exactly); `cluster
up` keeps both. They register only after the normal round (the cheap cheater would win its
jobs), then the submitter posts an inference job whose max_price is below the honest solvers'
solver_min_price (set above the normal round's prices): only the cheater bids.

The demo follows it live: the verifier's "bad" report, the dispute the verifier opens, the
committee's verdict, the job reversed; then shows who gained and lost what: the cheater's bond
slashed (jackpot to the verifier, a share to the committee's majority, the rest burned), the
registration burns, the fees, and the reputations, and checks every balance moved by exactly that.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.table import Table

from ledger.payout import share
from peer import render
from peer.client import ApiClient
from peer.cluster import CLUSTER_API, CLUSTER_LISTEN
from peer.config import LOCAL_CONSENSUS
from peer.errors import ClusterError
from peer.genesis_file import LOCAL_PARAMS, local_genesis, write_genesis
from peer.home import Home, init_home
from peer.market.demo import Accounts
from peer.procs import wait_for

BPS = 10_000
BOUNTY = 1_000
MAX_PRICE = 500  # the honest solvers work for no less than HONEST_MIN_PRICE: only the cheater bids
HONEST_MIN_PRICE = 700  # below the normal round's prices (800 and up), above the cheat job's
HONEST_SETTINGS = {"solver_min_price": HONEST_MIN_PRICE}
CHEATER_SETTINGS = {"solver_behaviour": "wrong", "solver_price_bps": 5_000, "solver_max_jobs": 1}
VERIFIER_SETTINGS = {"solver": False, "verifier": True}
WINDOW_BLOCKS = 40  # time for the verifier to fetch, re-run, report and open the dispute
ITEMS, BATCH = 64, 16
STEP_TIMEOUT = 120.0
CLOSE_TIMEOUT = 300.0
POLL_S = 0.25


def prepare_homes(cluster_dir: Path, peers: int, validators: int) -> list[str]:
    """Homes for `peers` + 2 peers (the last two: cheater, verifier) and the genesis; returns the ids."""
    ids = []
    for i in range(peers + 2):
        home = Home(cluster_dir / f"peer-{i}")
        identity = init_home(home, listen=[CLUSTER_LISTEN], api_listen=CLUSTER_API, consensus=LOCAL_CONSENSUS)
        ids.append(identity.identity.peer_id)
        settings = {peers: CHEATER_SETTINGS, peers + 1: VERIFIER_SETTINGS}.get(i, HONEST_SETTINGS)
        if i >= 2:  # 0 and 1 (owner, submitter) never register as solvers
            lines = home.config_path.read_text().splitlines()
            kept = [line for line in lines if line.split("=")[0].strip() not in settings]
            kept += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
            home.config_path.write_text("\n".join(kept) + "\n")
    params = replace(LOCAL_PARAMS, spot_check_min_bps=BPS, spot_check_max_bps=BPS, verify_reward=0)
    genesis = local_genesis(
        ids, ids[:validators], chain_id=f"hivemesh-{cluster_dir.name}"[:64], params=params
    )
    write_genesis(cluster_dir / "genesis.json", genesis)
    return ids


def cheat_round(
    root: Path,
    clients: list[ApiClient],
    ids: list[str],
    roles: dict[str, str],
    model_hash: str,
    say: Any,
    show: bool,
) -> dict[str, Any]:
    """The cheat (see the module docstring); `clients`/`ids` end with the cheater's and verifier's."""
    submitter, cheater, verifier = clients[1], clients[-2], clients[-1]
    cheater_id, verifier_id = ids[-2], ids[-1]
    roles = {**roles, cheater_id: "solver, TEST behaviour wrong", verifier_id: "verifier"}
    say("\n[bold]the cheat[/bold]: a solver that perturbs its results, and a verifier that checks them")
    say(f"  {cheater_id}  solver (TEST behaviour wrong, asks 50% of the bounty, any price)", markup=False)
    say(f"  {verifier_id}  verifier", markup=False)
    before = submitter.get_json("/market/supply")
    watched = {cheater_id: "solver", verifier_id: "verifier"}  # whose reputation the table shows
    reps_before = {a: _reputation(submitter, a, role) for a, role in watched.items()}
    _register(cheater, cheater_id, "solver")
    _register(verifier, verifier_id, "verifier")
    say("registered the cheater as a solver and the verifier", markup=False)

    inputs = _write_inputs(root)
    job_id = submitter.post_json(
        "/market/jobs",
        {
            "model_hash": model_hash,
            "kind": "inference",
            "bounty": BOUNTY,
            "bid_window_blocks": 3,
            "deadline_blocks": 60,
            "challenge_window_blocks": WINDOW_BLOCKS,
            "inputs_path": str(inputs),
            "spec": {"batch_size": BATCH},
            "requirements": {"max_price": MAX_PRICE},
        },
    )["job_id"]
    say(
        f"submitted inference job {job_id[:12]}… (max price {MAX_PRICE}; "
        f"the honest solvers ask at least {HONEST_MIN_PRICE})",
        markup=False,
    )
    view, dispute = _follow(submitter, verifier, job_id, say)
    if view["status"] != "reversed" or view["solver"] != cheater_id:
        raise ClusterError(f"the cheat job ended {view['status']} (solver {view['solver']}), not reversed")
    if dispute is None or (dispute["outcome"], dispute["challenger"]) != ("challenger", verifier_id):
        raise ClusterError(f"the dispute did not go to the verifier: {dispute}")
    wait_for(
        lambda: submitter.get_json("/market/supply")["height"] >= view["closed_height"],
        STEP_TIMEOUT,
        "the settlement",
    )
    after = submitter.get_json("/market/supply")
    genesis = json.loads((root / "cluster" / "genesis.json").read_text())
    params = genesis["params"]
    ledger = Accounts(submitter, before, after, params)
    rows, burned = _expected(ledger, params, view, dispute, cheater_id, verifier_id)
    reps = {a: (reps_before[a], _reputation(submitter, a, role)) for a, role in watched.items()}
    for member, _ in dispute["committee"]:
        roles[member] = roles.get(member, "validator") + ", committee"
    if show:
        _show(ledger, rows, burned, roles, reps, params.get("registration_burn", 0))
    problems = []
    if not ledger.exact(rows):
        problems.append("balances did not move exactly by the slashing rules and the fees")
    if after["burned"] - before["burned"] != burned:
        problems.append(f"burned {after['burned'] - before['burned']}, expected {burned}")
    if not reps[cheater_id][1] < reps[cheater_id][0]:
        problems.append("the cheater's reputation did not go down")
    if problems:
        raise ClusterError("; ".join(problems))
    say("the cheater was caught and slashed; every balance moved exactly by the rules ✓", markup=False)
    return {
        "job": view,
        "dispute": dispute,
        "cheater": cheater_id,
        "verifier": verifier_id,
        "reputation": {a: {"before": b, "after": n} for a, (b, n) in reps.items()},
        "burned": burned,
        "changes": {a: ledger.delta(a) for a in rows},
        "supply": [before, after],
    }


def _register(client: ApiClient, peer_id: str, role: str) -> None:
    client.submit("register", {"role": role})
    wait_for(
        lambda: role in [r["role"] for r in client.query("account", peer_id)["roles"]],
        STEP_TIMEOUT,
        f"{peer_id[:12]} to see its {role} registration",
    )


def _reputation(client: ApiClient, address: str, role: str) -> int:
    return int(client.get_json(f"/market/reputation/{address}")["reputation"][role])


def _write_inputs(root: Path) -> Path:
    from compute.datasets import SyntheticClasses, encode_inputs  # torch: only in the demo's own process

    path = root / "cheat-inputs.safetensors"
    path.write_bytes(encode_inputs(SyntheticClasses(5, ITEMS, (32,), 10).generate().x))
    return path


def _follow(
    submitter: ApiClient, verifier: ApiClient, job_id: str, say: Any
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Print each step of the cheat as it happens; returns the closed job and its dispute."""
    seen: set[str] = set()
    deadline = time.monotonic() + CLOSE_TIMEOUT
    while True:
        view = submitter.get_json(f"/market/jobs/{job_id}")
        check = next(
            (
                c
                for c in verifier.get_json("/market/verification")["verifier"]["checks"]
                if c["job_id"] == job_id
            ),
            None,
        )
        dispute = submitter.get_json(f"/market/trust/{job_id}")["dispute"]
        for line in _events(view, check, dispute):
            if line not in seen:
                seen.add(line)
                say(f"  • {line}", markup=False)
        if view["status"] in ("finalized", "reversed", "missed"):
            return view, dispute
        if time.monotonic() > deadline:
            raise ClusterError(f"the cheat job is still {view['status']} after {CLOSE_TIMEOUT:.0f} s")
        time.sleep(POLL_S)  # polling the daemons' views, not synchronisation


def _events(view: dict[str, Any], check: dict[str, Any] | None, dispute: dict[str, Any] | None) -> list[str]:
    lines = []
    if view.get("solver"):
        lines.append(
            f"assigned to {render.short(view['solver'])} at price {view['price']}, bond {view['bond']}"
        )
    if view.get("output_hash"):
        lines.append(f"result committed {view['output_hash'][:12]}…")
    if check is not None and (check["verdict"] == "ok" or check["bad_index"] >= 0):
        items = ", ".join(map(str, check["items"]))
        found = (
            f" (batch {check['bad_index']} is not what the model gives)" if check["verdict"] == "bad" else ""
        )
        lines.append(f'verifier re-ran batches [{items}]: report "{check["verdict"]}"{found}')
    if check is not None and check["phase"] == "failed":
        lines.append(f"the verifier could not run its check: {check['error']}")
    if dispute is not None:
        lines.append(
            f"dispute opened by {render.short(dispute['challenger'])} over batch {dispute['claim_index']}"
        )
        if dispute["committee"]:
            lines.append(f"committee drawn: {len(dispute['committee'])} validator(s) re-run the batch")
        for member, vote in sorted(dispute["votes"].items()):
            lines.append(f"committee member {render.short(member)} votes for the {vote}")
        if dispute["outcome"]:
            lines.append(f"verdict: the {dispute['outcome']} wins ({dispute['reason']})")
    if view["status"] in ("finalized", "reversed", "missed"):
        lines.append(f"job {view['status']}")
    return lines


def _expected(
    ledger: Accounts,
    params: dict[str, int],
    view: dict[str, Any],
    dispute: dict[str, Any],
    cheater: str,
    verifier: str,
) -> tuple[dict[str, dict[str, int]], int]:
    """Per account the market change the rules give (ledger.disputes: jackpot to the challenger, the
    committee pot to its majority by weight, the rest of the bond burned) and the total burned."""
    rows = ledger.fee_rows()  # the pools stay as they were: a reversed job pays no share of its price
    burn = params.get("registration_burn", 0)
    bond = view["bond"]
    jackpot = share(bond, params["dispute_jackpot_bps"])
    pot = share(bond, params["dispute_jackpot_bps"] + params["dispute_committee_reward_bps"]) - jackpot
    weights = dict((m, w) for m, w in dispute["committee"])
    majority = {m: w for m, w in weights.items() if dispute["votes"].get(m) == "challenger"}
    rows[cheater]["market"] -= burn + bond  # registered in this round, like the verifier
    rows[verifier]["market"] += jackpot - burn
    paid = 0
    for member, weight in majority.items():
        rows[member]["market"] += pot * weight // sum(majority.values())
        paid += pot * weight // sum(majority.values())
    return rows, 2 * burn + bond - jackpot - paid


def _show(
    ledger: Accounts,
    rows: dict[str, dict[str, int]],
    burned: int,
    roles: dict[str, str],
    reps: dict[str, tuple[int, int]],
    registration_burn: int,
) -> None:
    """Who gained and lost what. The newcomers (cheater, verifier: the accounts in `reps`) paid the
    registration burn, which their "market" change includes; it gets its own column here."""
    b, a = ledger.before, ledger.after
    table = Table(
        "account",
        "role",
        "before",
        "after",
        "change",
        "registration",
        "dispute",
        "fees",
        "reputation",
        title=f"who gained and lost what (heights {b['height']} → {a['height']})",
    )
    for address, row in rows.items():
        if address not in roles:
            continue
        registration = -registration_burn if address in reps else 0
        table.add_row(
            render.short(address),
            roles[address],
            str(b["accounts"][address]["balance"]),
            str(a["accounts"][address]["balance"]),
            f"{ledger.delta(address):+d}",
            f"{registration:+d}" if registration else "",
            f"{row['market'] - registration:+d}",
            f"{row['fees']:+d}",
            f"{reps[address][0]} → {reps[address][1]}" if address in reps else "",
        )
    registrations = registration_burn * len(reps)
    burned_now = a["burned"] - b["burned"]
    table.add_row(
        "burned",
        "",
        str(b["burned"]),
        str(a["burned"]),
        f"{burned_now:+d}",
        f"{registrations:+d}",
        f"{burned - registrations:+d}",
        "",
        "",
    )
    render.console.print(table)
    render.console.print(
        "the cheater's bond: a jackpot to the verifier, a share to the committee's majority, the rest burned",
        markup=False,
    )
