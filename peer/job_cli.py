"""Market commands of the `hivemesh` CLI: `model init|register|list` and `job submit|show|list|result|cancel`.

`model init` works on files (it builds a model from a built-in architecture and a seed and
writes FILE.safetensors plus FILE.json, its spec). Every other command is a thin client of
the running daemon's market API; files are passed by absolute path, since the daemon reads
them itself. `job submit` follows the job live (posted -> bidding -> assigned -> running x%
-> committed -> finalized) until the ledger settles it; `--json` / `--quiet` print only the
outcome. A job that ends expired, missed, cancelled or reversed exits 1 with one error line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from peer import render
from peer.client import ApiClient, api_url
from peer.errors import ApiError, PeerError
from peer.home import Home
from peer.market import render as market_render

model_app = typer.Typer(help="Models of the compute market: create, register, list.", no_args_is_help=True)
job_app = typer.Typer(
    help="Jobs of the compute market: submit, follow, inspect, fetch results.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ApiOpt = Annotated[
    str | None,
    typer.Option("--api", metavar="HOST:PORT", help="Daemon API address (default: from run.json)."),
]
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"in": 32, "hidden": [64, 64], "out": 10},
    "cnn": {"in_shape": [1, 28, 28], "channels": [8, 16], "out": 10},
    "transformer": {"vocab": 64, "context": 32, "d_model": 32, "heads": 4, "layers": 2, "ff": 128},
}
FAILED = market_render.FAILED


class MarketRejected(PeerError):
    """The daemon refused a market request (its message and code, on one line)."""


def _home(ctx: typer.Context) -> Home:
    home = getattr(ctx.find_root().obj, "home", None)
    assert isinstance(home, Home), "the root callback sets the home"
    return home


@contextmanager
def _client(ctx: typer.Context, api: str | None, timeout: float = 660.0) -> Iterator[ApiClient]:
    with ApiClient(api_url(_home(ctx), api), timeout=timeout) as client:
        try:
            yield client
        except ApiError as e:
            raise MarketRejected(e.message if e.code is None else f"{e.message} ({e.code})") from None


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MarketRejected(f"{what} is not valid JSON ({e}); quote it, e.g. '{{\"in\": 32}}'") from None


# ---- models -------------------------------------------------------------------------------------


def spec_path_for(weights: Path) -> Path:
    return weights.with_suffix(".json")


@model_app.command("init")
def model_init(
    out: Annotated[
        Path, typer.Option("-o", "--out", metavar="FILE", help="Weights file to write (.safetensors).")
    ],
    arch: Annotated[str, typer.Option("--arch", help="mlp, cnn or transformer.")] = "mlp",
    spec: Annotated[
        str | None,
        typer.Option("--spec", metavar="JSON", help="Architecture fields over the arch's defaults."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the initial weights.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Create a model from a built-in architecture and a seed: FILE plus its spec FILE.json."""
    if arch not in ARCH_DEFAULTS:
        raise MarketRejected(f"unknown architecture {arch!r}; built in: {', '.join(ARCH_DEFAULTS)}")
    fields = _json_arg(spec, "--spec") if spec is not None else {}
    if not isinstance(fields, dict):
        raise MarketRejected("--spec must be a JSON object of architecture fields")
    from compute.errors import ComputeError  # torch: only for the one command that needs it
    from compute.models import Model

    try:
        model = Model.init({**ARCH_DEFAULTS[arch], **fields, "arch": arch}, seed=seed)
    except ComputeError as e:
        raise MarketRejected(str(e)) from None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(model.weights)
        spec_path_for(out).write_text(json.dumps(model.spec, indent=2) + "\n")
    except OSError as e:
        raise MarketRejected(f"cannot write {out}: {e.strerror or e}") from None
    result = {
        "model_hash": model.hash,
        "weights": str(out),
        "spec_file": str(spec_path_for(out)),
        "spec": model.spec,
    }
    if as_json:
        render.print_json(result)
    else:
        print(f"model {model.hash}")
        print(f"wrote {out} and {spec_path_for(out)}")


@model_app.command("register")
def model_register(
    ctx: typer.Context,
    weights: Annotated[
        Path, typer.Argument(metavar="FILE", help="Weights (.safetensors); spec in FILE.json.")
    ],
    royalty: Annotated[
        int, typer.Option("--royalty", min=0, max=10_000, help="Royalty in basis points.")
    ] = 0,
    arch: Annotated[
        str | None, typer.Option("--arch", help="Architecture (checked against the spec).")
    ] = None,
    spec_file: Annotated[Path | None, typer.Option("--spec", metavar="JSON_FILE", help="Spec file.")] = None,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a model on the ledger (as its owner, earning the royalty) and serve its weights."""
    spec_file = spec_file or spec_path_for(weights)
    if not weights.is_file():
        raise MarketRejected(f"no weights file at {weights}")
    try:
        spec = json.loads(spec_file.read_text())
    except FileNotFoundError:
        raise MarketRejected(f"no spec at {spec_file}; write one or pass --spec FILE") from None
    except (OSError, ValueError) as e:
        raise MarketRejected(f"cannot read the spec {spec_file}: {e}") from None
    if not isinstance(spec, dict):
        raise MarketRejected(f"{spec_file} must hold a JSON object")
    if arch is not None and spec.setdefault("arch", arch) != arch:
        raise MarketRejected(f"--arch {arch} does not match the spec's arch {spec['arch']!r}")
    payload = {"spec": spec, "weights_path": str(weights.absolute()), "royalty_bps": royalty}
    with _client(ctx, api) as client:
        result = client.post_json("/market/models", payload)
    if as_json:
        render.print_json(result)
        return
    if result["role_registered_tx"]:
        print(f"registered as model_owner (burned {result['registration_burn']})")
    verb = "already registered" if result["already_registered"] else "registered"
    print(
        f"model {result['model_hash']} {verb} ({result['arch']}, royalty {result['royalty_bps']} bps, "
        f"height {result['registered_height']}); serving blob {result['blob']}"
    )


@model_app.command("list")
def model_list(ctx: typer.Context, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """Every model registered on the chain."""
    with _client(ctx, api) as client:
        rows = client.get_json("/market/models")
    if as_json:
        render.print_json(rows)
    else:
        market_render.model_table(rows)


# ---- jobs ---------------------------------------------------------------------------------------


def parse_dataset(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(dataset reference, None) for JSON or "classes:k=v,..."/"tokens:k=v,...", else (None, path)."""
    if text.lstrip().startswith("{"):
        ref = _json_arg(text, "--train")
        return ref, None
    kind, sep, rest = text.partition(":")
    if sep and kind in ("classes", "tokens"):
        ref: dict[str, Any] = {"kind": kind}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise MarketRejected(f"--train {text!r}: expected key=value items, got {item!r}")
            ref[key] = [int(v) for v in value.split("x")] if key == "shape" else _number(value)
        return ref, None
    path = Path(text)
    if not path.is_file():
        raise MarketRejected(
            f"--train {text!r} is neither a dataset file nor a reference like classes:seed=1,..."
        )
    return None, str(path.absolute())


def _number(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def build_request(
    *,
    model: str,
    bounty: int,
    inference: Path | None,
    train: str | None,
    batch_size: int,
    steps: int,
    lr: str,
    optimizer: str,
    seed: int,
    checkpoint_every: int | None,
    mode: str,
    windows: dict[str, int | None],
    requirements: dict[str, int | None],
) -> dict[str, Any]:
    if (inference is None) == (train is None):
        raise MarketRejected("give exactly one of --inference INPUTS or --train DATASET")
    request: dict[str, Any] = {"model_hash": model, "bounty": bounty}
    request |= {k: v for k, v in windows.items() if v is not None}
    request["requirements"] = {k: v for k, v in requirements.items() if v is not None}
    if inference is not None:
        if not inference.is_file():
            raise MarketRejected(f"no inputs file at {inference}")
        request |= {"kind": "inference", "inputs_path": str(inference.absolute())}
        request["spec"] = {"batch_size": batch_size, "mode": mode}
        return request
    assert train is not None
    ref, path = parse_dataset(train)
    opt: dict[str, Any] = {"name": optimizer, "lr": lr}
    spec: dict[str, Any] = {
        "optimizer": opt,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "mode": mode,
    }
    if checkpoint_every is not None:
        spec["checkpoint_every"] = checkpoint_every
    if ref is not None:
        spec["dataset"] = ref
    request |= {"kind": "training", "spec": spec}
    if path is not None:
        request["dataset_path"] = path
    return request


@job_app.command("submit")
def job_submit(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", metavar="HASH", help="Registered model hash.")],
    bounty: Annotated[int, typer.Option("--bounty", min=1, help="Bounty escrowed from your balance.")],
    inference: Annotated[
        Path | None, typer.Option("--inference", metavar="INPUTS", help="Inputs file (safetensors 'x').")
    ] = None,
    train: Annotated[
        str | None,
        typer.Option("--train", metavar="DATASET", help="Dataset file, JSON reference or classes:k=v,...."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps.")] = 100,
    lr: Annotated[str, typer.Option("--lr", help="Learning rate (exact: 0.01 or 1/100).")] = "0.01",
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd or adam.")] = "sgd",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the data order.")] = 0,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", min=1)] = None,
    mode: Annotated[str, typer.Option("--mode", help="strict (bitwise) or tolerant.")] = "strict",
    bid_window: Annotated[
        int | None,
        typer.Option(
            "--bid-window", min=0, help="Blocks bids stay open; 0: award it at once to the best solver quote."
        ),
    ] = None,
    accept: Annotated[
        bool | None,
        typer.Option(
            "--accept/--no-accept",
            help="Spot-check the result yourself and accept it, finalizing it at once "
            "(default: leave it to verifiers until the challenge window closes).",
        ),
    ] = None,
    deadline: Annotated[int | None, typer.Option("--deadline", min=1, help="Blocks to deliver.")] = None,
    challenge_window: Annotated[int | None, typer.Option("--challenge-window", min=1)] = None,
    max_price: Annotated[int | None, typer.Option("--max-price", min=1)] = None,
    min_reputation: Annotated[int | None, typer.Option("--min-reputation", min=0, max=10_000)] = None,
    min_stake: Annotated[int | None, typer.Option("--min-stake", min=0)] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once posted.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the job id.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds to follow the job.")] = 1800.0,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Post a job with an escrowed bounty and follow it until the ledger settles it."""
    request = build_request(
        model=model,
        bounty=bounty,
        inference=inference,
        train=train,
        batch_size=batch_size,
        steps=steps,
        lr=lr,
        optimizer=optimizer,
        seed=seed,
        checkpoint_every=checkpoint_every,
        mode=mode,
        windows={
            "bid_window_blocks": bid_window,
            "deadline_blocks": deadline,
            "challenge_window_blocks": challenge_window,
        },
        requirements={"max_price": max_price, "min_reputation": min_reputation, "min_stake": min_stake},
    )
    if accept is not None:
        request["accept"] = accept
    with _client(ctx, api) as client:
        posted = client.post_json("/market/jobs", request)
        job_id = posted["job_id"]
        if not (quiet or as_json):
            print(f"job {job_id} posted at height {posted['post_height']} (bounty {bounty} in escrow)")
        view = (
            posted
            if no_wait
            else market_render.follow_jobs(client, [job_id], show=not (quiet or as_json), timeout=timeout)[0]
        )
    if as_json:
        render.print_json(view)
    elif quiet:
        print(job_id)
    elif not no_wait:
        market_render.job_summary(view)
    if view["phase"] in FAILED:
        raise MarketRejected(f"job {job_id} {view['phase']}: {_failure(view)}")


def _failure(view: dict[str, Any]) -> str:
    return {
        "expired": "no solver bid before the bid window closed; the bounty was refunded",
        "missed": "the solver missed its deadline; the bounty was refunded and its bond slashed",
        "cancelled": "cancelled by the submitter; the bounty was refunded",
        "reversed": "the result was overturned in a dispute; the bounty was refunded",
    }.get(view["phase"], view["phase"])


@job_app.command("show")
def job_show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A job: its ledger record, phase and progress, and what this peer did with it."""
    with _client(ctx, api) as client:
        view = client.get_json(f"/market/jobs/{job_id}")
    if as_json:
        render.print_json(view)
        return
    render.console.print(market_render.job_line(view))
    market_render.job_summary(view)


@job_app.command("list")
def job_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option("--status", help="Only jobs with this status.")] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only jobs this peer submitted.")] = False,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs on the ledger, oldest first."""
    with _client(ctx, api) as client:
        rows = client.get_json("/market/jobs", status=status, mine="1" if mine else None)
    if as_json:
        render.print_json(rows)
    else:
        market_render.job_table(rows)


@job_app.command("cancel")
def job_cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a job this peer posted while its bids are open; the bounty and bid bonds are refunded."""
    with _client(ctx, api) as client:
        result = client.submit("job_cancel", {"job_id": job_id}, wait=True, timeout=60.0)
    if result.get("committed") and not result.get("ok"):
        raise MarketRejected(f"job {job_id} not cancelled: {result['message']} ({result['code']})")
    if as_json:
        render.print_json(result)
    else:
        print(f"job {job_id} cancelled at height {result['height']}; the bounty was refunded")


@job_app.command("result")
def job_result(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    out: Annotated[Path, typer.Option("-o", "--out", metavar="FILE", help="Where to write the output.")],
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a job's output (inference outputs or trained weights, safetensors) to FILE."""
    with _client(ctx, api) as client:
        data = client.request("GET", f"/market/jobs/{job_id}/result").content
    try:
        out.write_bytes(data)
    except OSError as e:
        raise MarketRejected(f"cannot write {out}: {e.strerror or e}") from None
    if as_json:
        render.print_json({"job_id": job_id, "file": str(out), "bytes": len(data)})
    else:
        print(f"wrote {len(data)} bytes to {out} (checked against the job's commitment)")
