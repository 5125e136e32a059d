"""Trustless results across real peer processes: spot checks, disputes, canaries and votes.

One cluster of 8 peers started by `hivemesh cluster up` (homes prepared first so each peer gets
its own config.toml, and a genesis whose spot-check rate is 100%, so every cheat is in the sample):

  peer 0  validator, model owner, submitter (its canary agent seals every job)
  peer 1  validator, solver, TEST behaviour lazy         peer 5  verifier (honest)
  peer 2  validator, solver, TEST behaviour wrong        peer 6  verifier, TEST behaviour lazy
  peer 3  validator, solver, TEST behaviour fake-train   peer 7  solver, TEST behaviour noisy
  peer 4  validator, solver, TEST behaviour swap-model           (honest, float noise within bounds)

Steering each job to the intended solver: every solver takes one job at a time (solver_max_jobs =
1) and bids only once registered; the cheating solvers are validators (stake wins bids, and cheat
jobs require stake), and equal bids go to the lower address (so phase B registers its fresh cheats
highest address first). So each job is posted when exactly the intended solver is the best free
registered one.

Phase A (only the lazy verifier is registered): an honest job finalizes after a lazy "ok", so the
submitter learns its answer; the same spec solved by the "wrong" solver then fails the submitter's
real canary: the solver's whole bond and the lazy verifier's report bond are burned, both lose
reputation, the price goes to the verifier pool, and the submitter opens a reputation vote that
the validators commit and reveal.
Phase B (the honest verifier registered): the wrong, lazy, fake-train (several checkpoints, so the
dispute bisects) and swap-model solvers are each caught by a verify_report "bad", disputed,
refereed by the committee and slashed; the honest solver's tolerant-mode training job, whose
states carry float noise inside the spec's bounds (as another machine's would: its output hash is
not the local run's), is reported "ok" by both verifiers, never disputed, and paid in full.
Every balance moves exactly as the ledger's rules say (jackpot, committee pot, burn, price split,
fees) and no token is made or lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from compute.datasets import encode_inputs
from compute.determinism import tensors_hash
from compute.executor import run_training
from compute.jobs import TrainingSpec, job_from_wire
from compute.models import Model, decode_weights
from ledger.params import BPS
from ledger.payout import share
from peer.cluster import CLUSTER_API, CLUSTER_LISTEN, Cluster, cluster_down
from peer.config import LOCAL_CONSENSUS
from peer.genesis_file import LOCAL_PARAMS, local_genesis, write_genesis
from peer.home import Home, init_home
from peer.procs import wait_for
from tests.test_market_processes import balance_changes, fee_flows, get, hivemesh, post

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

N_PEERS, N_VALIDATORS = 8, 5
SUBMITTER, LAZY, WRONG, FAKE, SWAP, VERIFIER, LAZY_VERIFIER, HONEST = range(8)
SETTINGS: dict[int, dict[str, Any]] = {
    SUBMITTER: {"solver": False},
    LAZY: {"solver_behaviour": "lazy"},
    WRONG: {"solver_behaviour": "wrong"},
    FAKE: {"solver_behaviour": "fake-train"},
    SWAP: {"solver_behaviour": "swap-model"},
    VERIFIER: {"solver": False, "verifier": True},
    LAZY_VERIFIER: {"solver": False, "verifier": True, "verifier_behaviour": "lazy"},
    HONEST: {"solver_behaviour": "noisy"},  # honest, on "another machine": noise in tolerant jobs only
}
PARAMS = replace(
    LOCAL_PARAMS,
    spot_check_min_bps=BPS,  # every item of every job is sampled: a cheat cannot slip through
    spot_check_max_bps=BPS,
    min_challenge_window_blocks=4,
    verify_reward=0,  # the pool pays rewards in settlement order; 0 keeps the balance check exact
    repvote_commit_blocks=6,
    repvote_reveal_blocks=6,
)
MLP = {"arch": "mlp", "in": 16, "hidden": [32], "out": 4}
ROYALTY = 500
VALIDATORS_ONLY = {"min_stake": 10_000}  # the cheating solvers are validators; the honest one has no stake
CHEAT_WINDOW = 40  # blocks the honest verifier has to fetch, re-run, report and open the dispute
HONEST_WINDOW = 30  # the honest job finalizes when it ends: shorter, but room for both reports
TRAIN = {
    "dataset": {"kind": "classes", "seed": 4, "size": 64, "shape": [16], "classes": 4},
    "optimizer": {"name": "sgd", "lr": "1/20"},
    "batch_size": 16,
}


@dataclass
class Net:
    cluster: Cluster
    root: Path
    model_hash: str
    params: dict[str, int]

    def api(self, index: int) -> str:
        return self.cluster.peers[index].api

    def home(self, index: int) -> str:
        return self.cluster.peers[index].home

    def id(self, index: int) -> str:
        return self.cluster.peers[index].peer_id


def _prepare_homes(cluster_dir: Path) -> list[str]:
    """Create every peer's home with its own settings and a genesis with PARAMS; `cluster up` keeps both."""
    ids = []
    for i in range(N_PEERS):
        home = Home(cluster_dir / f"peer-{i}")
        ids.append(
            init_home(
                home, listen=[CLUSTER_LISTEN], api_listen=CLUSTER_API, consensus=LOCAL_CONSENSUS
            ).identity.peer_id
        )
        settings = {"solver_max_jobs": 1, **SETTINGS[i]}
        lines = home.config_path.read_text().splitlines()
        kept = [line for line in lines if line.split("=")[0].strip() not in settings]
        kept += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        home.config_path.write_text("\n".join(kept) + "\n")
    genesis = local_genesis(
        ids, ids[:N_VALIDATORS], chain_id=f"hivemesh-{cluster_dir.name}"[:64], params=PARAMS
    )
    write_genesis(cluster_dir / "genesis.json", genesis)
    return ids


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("verification")
    cluster_dir = root / "cluster"
    try:
        ids = _prepare_homes(cluster_dir)
        up = hivemesh("cluster", "up", "--peers", N_PEERS, "--validators", N_VALIDATORS, "--dir", cluster_dir,
                      "--json", timeout=240)  # fmt: skip
        assert up.returncode == 0, up.stderr
        mark("cluster up")
        cluster = Cluster.load(cluster_dir)
        assert cluster is not None and [p.peer_id for p in cluster.peers] == ids
        wait_for(
            lambda: all(get(p.api, "/market/status")["ready"] for p in cluster.peers), 90, "every market"
        )
        model = Model.init(MLP, seed=5)
        (root / "model.safetensors").write_bytes(model.weights)
        request = {
            "spec": model.spec,
            "weights_path": str(root / "model.safetensors"),
            "royalty_bps": ROYALTY,
        }
        model_hash = post(cluster.peers[SUBMITTER].api, "/market/models", request)["model_hash"]
        assert model_hash == model.hash
        params = json.loads((cluster_dir / "genesis.json").read_text())["params"]
        mark("model registered")
        yield Net(cluster, root, model_hash, params)
    finally:
        cluster_down(cluster_dir, timeout=5.0)


# ---- helpers ------------------------------------------------------------------------------------


_T0 = time.monotonic()


def mark(what: str) -> None:
    """A progress line with the time since import (pytest shows it when the test fails)."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {what}", flush=True)


def register(net: Net, *who: tuple[int, str]) -> None:
    """Register (peer, role) pairs at once; wait until each peer's own ledger shows its role (its
    agents act on that view)."""
    for index, role in who:
        post(net.api(index), "/tx", {"type": "register", "body": {"role": role}, "wait": False})
    for index, role in who:
        roles = lambda i=index: [r["role"] for r in get(net.api(i), f"/query/account/{net.id(i)}")["roles"]]  # noqa: E731
        wait_for(lambda r=role, f=roles: r in f(), 60, f"peer {index} to see its {role} registration")


def inputs_file(net: Net, name: str, seed: int, rows: int = 24) -> Path:
    path = net.root / f"{name}.safetensors"
    path.write_bytes(encode_inputs(torch.randn(rows, 16, generator=torch.Generator().manual_seed(seed))))
    return path


def submit(net: Net, kind: str, bounty: int, window: int, **fields: Any) -> str:
    request = {
        "model_hash": net.model_hash,
        "kind": kind,
        "bounty": bounty,
        "bid_window_blocks": 8,  # two re-announcements: gossip is best effort
        "deadline_blocks": 60,
        "challenge_window_blocks": window,
        **fields,
    }
    return str(post(net.api(SUBMITTER), "/market/jobs", request)["job_id"])


def job(net: Net, job_id: str, index: int = SUBMITTER) -> dict[str, Any]:
    return get(net.api(index), f"/market/jobs/{job_id}")  # type: ignore[no-any-return]


def assigned(net: Net, job_id: str, solver: int) -> dict[str, Any]:
    """Wait until the job is assigned to `solver` and that solver counts it as its one job."""
    view = wait_for(lambda: (v := job(net, job_id))["status"] != "open" and v, 60, f"job {job_id[:8]}'s bids")
    assert view["solver"] == net.id(solver), (solver, view["status"], view["solver"])
    working = lambda: job_id in get(net.api(solver), "/market/status")["solver"]["working"]  # noqa: E731
    closed = lambda: job(net, job_id)["status"] not in ("assigned", "committed", "disputed")  # noqa: E731
    wait_for(lambda: working() or closed(), 30, f"solver {solver} to take job {job_id[:8]}")
    return view


def closed(net: Net, job_id: str, timeout: float = 240) -> dict[str, Any]:
    view = wait_for(
        lambda: (v := job(net, job_id))["status"] in ("finalized", "reversed", "missed") and v,
        timeout,
        f"job {job_id[:8]} to settle",
    )
    wait_for(
        lambda: all(job(net, job_id, i)["status"] == view["status"] for i in (SUBMITTER, VERIFIER)),
        30,
        "views",
    )
    return view  # type: ignore[no-any-return]


def supply(net: Net) -> dict[str, Any]:
    snapshot = get(net.api(SUBMITTER), "/market/supply")
    assert snapshot["total"] + snapshot["burned"] == snapshot["minted"]  # nothing lost, nothing made
    return snapshot  # type: ignore[no-any-return]


def settled_supply(net: Net, height: int) -> dict[str, Any]:
    return wait_for(lambda: (s := supply(net))["height"] >= height and s, 30, "the settlement")  # type: ignore[no-any-return]


def reputation(net: Net, index: int, role: str) -> int:
    return int(get(net.api(SUBMITTER), f"/market/reputation/{net.id(index)}")["reputation"][role])


def checks_of(net: Net, index: int) -> dict[str, dict[str, Any]]:
    return {c["job_id"]: c for c in get(net.api(index), "/market/verification")["verifier"]["checks"]}


def local_output_hash(view: dict[str, Any]) -> str:
    """The output hash of an honest run of a training job's spec on this machine."""
    spec = job_from_wire(view["submitted_here"]["spec"])
    assert isinstance(spec, TrainingSpec)
    weights, _ = run_training(spec, Model.init(MLP, seed=5))
    return tensors_hash(decode_weights(weights))


# ---- the test -----------------------------------------------------------------------------------


def test_cheats_are_caught_slashed_and_honest_work_is_paid(net: Net) -> None:
    p = net.params
    lazy_verifier_rep = reputation(net, LAZY_VERIFIER, "verifier")
    register(net, (LAZY_VERIFIER, "verifier"), (HONEST, "solver"))
    mark("registered")

    # Phase A: an honest result the lazy verifier "checks" teaches the submitter the answer...
    known = inputs_file(net, "known", seed=1)
    first = submit(net, "inference", 1000, 4, inputs_path=str(known), spec={"batch_size": 8})
    assigned(net, first, HONEST)
    register(net, (WRONG, "solver"))  # only now: it would outbid the honest solver (validator stake)
    view = closed(net, first)
    mark("first job closed")
    assert view["status"] == "finalized"
    wait_for(lambda: get(net.api(SUBMITTER), "/market/verification")["canaries"]["known_answers"] >= 1, 30,
             "the submitter to learn the answer")  # fmt: skip

    # ...so the same spec, solved wrong, is a real canary that catches the solver and the lazy "ok".
    before = supply(net)
    wrong_rep = reputation(net, WRONG, "solver")
    canary_job = submit(net, "inference", 1000, 10, inputs_path=str(known), spec={"batch_size": 8},
                        requirements=VALIDATORS_ONLY)  # fmt: skip
    bond = assigned(net, canary_job, WRONG)["bond"]
    view = closed(net, canary_job)
    mark("canary job closed")
    assert view["status"] == "reversed" and view["challenger"] == net.id(SUBMITTER)
    after = settled_supply(net, view["closed_height"])
    lazy_ok = checks_of(net, LAZY_VERIFIER)[canary_job]
    assert (lazy_ok["phase"], lazy_ok["verdict"]) == ("reported", "ok")
    expected = dict.fromkeys(after["accounts"], 0)
    expected[net.id(SUBMITTER)] -= view["price"]  # a failed canary still pays the price...
    expected[net.id(WRONG)] -= bond  # ...the whole bond is burned...
    expected[net.id(LAZY_VERIFIER)] -= p["verify_report_bond"]  # ...and so is the lazy "ok"
    deposit = after["games"] - before["games"]  # the reputation vote the submitter may have opened by now
    assert deposit in (0, p["repvote_min_deposit"])
    expected[net.id(SUBMITTER)] -= deposit
    fees = fee_flows(net.api(SUBMITTER), before, after, p["min_fee"])
    assert balance_changes(before, after) == {a: expected[a] + fees.get(a, 0) for a in expected}
    assert after["burned"] - before["burned"] == bond + p["verify_report_bond"]
    assert after["verifier_pool"] - before["verifier_pool"] == view["price"]
    assert reputation(net, WRONG, "solver") < wrong_rep
    assert reputation(net, LAZY_VERIFIER, "verifier") < lazy_verifier_rep

    # Phase B: the honest verifier joins; each cheat goes to its solver, and one honest tolerant job.
    register(net, (VERIFIER, "verifier"))
    before = supply(net)
    reps = {i: reputation(net, i, "solver") for i in (LAZY, WRONG, FAKE, SWAP, HONEST)}
    verifier_rep = reputation(net, VERIFIER, "verifier")
    cheats: dict[int, str] = {}
    fresh = inputs_file(net, "fresh", seed=2)
    cheats[WRONG] = submit(net, "inference", 2000, CHEAT_WINDOW, inputs_path=str(fresh),
                           spec={"batch_size": 8}, requirements=VALIDATORS_ONLY)  # fmt: skip
    assigned(net, cheats[WRONG], WRONG)
    tolerant_spec = {**TRAIN, "steps": 12, "checkpoint_every": 4, "mode": "tolerant",
                     "tolerance": {"atol": "1e-5", "rtol": "1e-4"}}  # fmt: skip
    honest_job = submit(net, "training", 1500, HONEST_WINDOW, spec=tolerant_spec)
    assigned(net, honest_job, HONEST)
    swap_inputs = str(inputs_file(net, "swap", seed=3))
    jobs: dict[int, tuple[str, dict[str, Any]]] = {
        LAZY: ("training", {"spec": {**TRAIN, "steps": 8, "checkpoint_every": 4}}),
        FAKE: ("training", {"spec": {**TRAIN, "steps": 40, "checkpoint_every": 5}}),
        SWAP: ("inference", {"inputs_path": swap_inputs, "spec": {"batch_size": 8}}),
    }
    # Equal bids (same price, fresh reputation, stake over the bounty) go to the lower address. A
    # cheat is free again as soon as its job is disputed, before its reputation drops; so each cheat
    # registers just before its job, highest address first: the newcomer wins every tie, and a
    # slashed one (lower reputation) loses too.
    for solver in sorted(jobs, key=net.id, reverse=True):
        register(net, (solver, "solver"))
        kind, fields = jobs[solver]
        cheats[solver] = submit(net, kind, 2000, CHEAT_WINDOW, requirements=VALIDATORS_ONLY, **fields)
        assigned(net, cheats[solver], solver)

    mark("phase B posted")
    views = {solver: closed(net, job_id) for solver, job_id in cheats.items()}
    mark("phase B closed")
    honest_view = closed(net, honest_job)
    after = settled_supply(net, max(v["closed_height"] for v in [*views.values(), honest_view]))

    # Every cheat: reported "bad" by the honest verifier, disputed by it, refereed, reversed.
    honest_checks, lazy_checks = checks_of(net, VERIFIER), checks_of(net, LAZY_VERIFIER)
    expected = dict.fromkeys(after["accounts"], 0)
    burned = 0
    for solver in (LAZY, FAKE, SWAP):  # registered in this phase: the registration burn
        expected[net.id(solver)] -= p["registration_burn"]
        burned += p["registration_burn"]
    jackpot_bps, committee_bps = p["dispute_jackpot_bps"], p["dispute_committee_reward_bps"]
    for solver, view in views.items():
        job_id = view["job_id"]
        assert view["status"] == "reversed", (solver, view)
        assert (honest_checks[job_id]["verdict"], honest_checks[job_id]["phase"]) == ("bad", "disputed")
        dispute = get(net.api(SUBMITTER), f"/market/trust/{job_id}")["dispute"]
        assert (dispute["outcome"], dispute["reason"], dispute["challenger"]) == (
            "challenger",
            "referee",
            net.id(VERIFIER),
        )
        if view["kind"] == "training":  # narrowed to the one faked segment, then to one step of it
            assert (dispute["lo"] + 1, dispute["hi"]) == (dispute["claim_index"],) * 2
            assert dispute["stepwise"] and dispute["hi_step"] == dispute["lo_step"] + 1
            assert dispute["rounds"] >= 2  # checkpoint intervals of 4 and 5 steps: at least 2 step rounds
        bond = view["bond"]
        jackpot = share(bond, jackpot_bps)
        pot = share(bond, jackpot_bps + committee_bps) - jackpot
        weights = dict((m, w) for m, w in dispute["committee"])
        majority = {m: w for m, w in weights.items() if dispute["votes"].get(m) == "challenger"}
        assert 2 * sum(majority.values()) > sum(weights.values())
        expected[view["solver"]] -= bond
        expected[net.id(VERIFIER)] += jackpot
        paid = 0
        for member, weight in majority.items():
            expected[member] += pot * weight // sum(majority.values())
            paid += pot * weight // sum(majority.values())
        burned += bond - jackpot - paid
        if lazy_checks.get(job_id, {}).get("phase") == "reported":  # its "ok" came before the dispute
            expected[net.id(LAZY_VERIFIER)] -= p["verify_report_bond"]
            burned += p["verify_report_bond"]
        assert reputation(net, solver, "solver") < reps[solver]

    # The noisy tolerant job: not bitwise the local run, yet checked "ok" by both verifiers, never
    # disputed, and paid exactly as unchallenged.
    assert honest_view["status"] == "finalized" and not honest_view["challenger"]
    assert honest_view["output_hash"] != local_output_hash(honest_view)
    for checks in (honest_checks, lazy_checks):
        assert (checks[honest_job]["verdict"], checks[honest_job]["phase"]) == ("ok", "reported")
    assert get(net.api(SUBMITTER), f"/market/trust/{honest_job}")["dispute"] is None
    assert reputation(net, HONEST, "solver") >= reps[HONEST]
    price = honest_view["price"]
    royalty, verifiers, treasury = (share(price, b) for b in (ROYALTY, p["job_verifier_share_bps"],
                                                              p["job_treasury_share_bps"]))  # fmt: skip
    expected[net.id(SUBMITTER)] += royalty - price
    expected[net.id(HONEST)] += price - royalty - verifiers - treasury
    # Nothing else is held by the games at either snapshot but the submitter's vote deposit.
    assert {before["games"], after["games"]} <= {0, p["repvote_min_deposit"]}
    expected[net.id(SUBMITTER)] += before["games"] - after["games"]
    fees = fee_flows(net.api(SUBMITTER), before, after, p["min_fee"])
    assert balance_changes(before, after) == {a: expected[a] + fees.get(a, 0) for a in expected}
    assert after["burned"] - before["burned"] == burned
    assert (after["verifier_pool"] - before["verifier_pool"], after["treasury"] - before["treasury"]) == (
        verifiers,
        treasury,
    )
    assert (after["escrow"], after["job_bonds"], after["bid_bonds"]) == (0, 0, 0)
    assert reputation(net, VERIFIER, "verifier") > verifier_rep

    # The submitter's first-hand evidence opens a reputation vote; the validators commit and reveal.
    vote_id = wait_for(lambda: get(net.api(SUBMITTER), "/market/verification")["voter"]["opened"], 60,
                       "the reputation vote")[0]  # fmt: skip

    def tallied() -> dict[str, Any] | None:
        v = get(net.api(SUBMITTER), f"/market/repvotes/{vote_id}")
        return v if v["status"] != "voting" else None

    vote = wait_for(tallied, 90, "the tally")
    assert vote["subject"] == net.id(WRONG) and vote["status"] == "tallied"
    assert vote["tally"] < p["reputation_default"]
