"""The `hivemesh` command line (typer, noun-verb; one typer app per noun).

`init`, `id` and `run` work on the home directory; every other read command is a thin client
of the running daemon's local API (address from the home's run.json, or --api). Every read
command takes --json. User errors print one line on stderr and exit 1.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from peer import render
from peer.client import ApiClient, api_url
from peer.config import load_config
from peer.errors import ConfigError, PeerError
from peer.home import Home, init_home, load_identity, resolve_home
from peer.job_cli import job_app, model_app
from peer.tx_cli import genesis_app, ledger_app, query_app, tx_app
from peer.version import __version__

app = typer.Typer(
    name="hivemesh",
    help="hivemesh: a decentralized AI compute market. Run a peer, inspect it, start local clusters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
gossip_app = typer.Typer(help="Publish and read gossip through the running peer.", no_args_is_help=True)
cluster_app = typer.Typer(help="Local clusters of real peer processes on loopback.", no_args_is_help=True)
app.add_typer(gossip_app, name="gossip")
app.add_typer(cluster_app, name="cluster")
app.add_typer(tx_app, name="tx")
app.add_typer(query_app, name="query")
app.add_typer(ledger_app, name="ledger")
app.add_typer(genesis_app, name="genesis")
app.add_typer(model_app, name="model")
app.add_typer(job_app, name="job")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ApiOpt = Annotated[
    str | None,
    typer.Option("--api", metavar="HOST:PORT", help="Daemon API address (default: from run.json)."),
]
ListenOpt = Annotated[
    list[str] | None, typer.Option("--listen", metavar="MADDR", help="Listen multiaddr (repeatable).")
]
BootstrapOpt = Annotated[
    list[str] | None,
    typer.Option("--bootstrap", metavar="MADDR", help="Bootstrap multiaddr /p2p/<id> (repeatable)."),
]
TopicOpt = Annotated[str, typer.Option("--topic", help="Gossip topic: tx, consensus, tasks or votes.")]
DirOpt = Annotated[Path, typer.Option("--dir", help="Cluster directory (one home per peer inside).")]


@dataclass(frozen=True)
class State:
    home: Home


def _home(ctx: typer.Context) -> Home:
    state = ctx.find_object(State)
    assert state is not None, "root callback sets the state"
    return state.home


def _version(value: bool) -> None:
    if value:
        print(f"hivemesh {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", help="Home directory (default: $HIVEMESH_HOME, else ~/.hivemesh).", show_default=False
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    ctx.obj = State(resolve_home(home))


@app.command()
def init(
    ctx: typer.Context,
    listen: ListenOpt = None,
    bootstrap: BootstrapOpt = None,
    api: Annotated[str | None, typer.Option("--api", metavar="HOST:PORT", help="API listen address.")] = None,
    genesis: Annotated[
        Path | None,
        typer.Option("--genesis", metavar="FILE", help="Genesis file of the chain to follow (copied in)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the home directory, node key and a commented config.toml (idempotent)."""
    home = _home(ctx)
    given = {"listen": listen or None, "bootstrap": bootstrap or None, "api_listen": api}
    load_config(None, env={}, cli=given)  # validate before writing anything
    if genesis is not None:
        from peer.genesis_file import install_genesis, read_genesis  # loads the ledger: only when asked

        read_genesis(genesis)  # a bad file is refused before the home is touched
    result = init_home(home, listen=listen or None, bootstrap=bootstrap or None, api_listen=api)
    if not result.created_config and any(v is not None for v in given.values()):
        print(f"note: {home.config_path} already exists and was left unchanged", file=sys.stderr)
    chain = install_genesis(home, genesis).chain_id if genesis is not None else None
    if as_json:
        render.print_json(
            {
                "home": str(home.root),
                "peer_id": result.identity.peer_id,
                "created_key": result.created_key,
                "created_config": result.created_config,
                "chain_id": chain,
            }
        )
        return
    what = "initialised" if result.created_key or result.created_config else "already initialised"
    print(f"{what} {home.root}")
    print(f"peer id: {result.identity.peer_id}")
    if chain is not None:
        print(f"genesis: chain {chain} ({home.genesis_path})")


@app.command("id")
def show_id(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show this home's peer id (no daemon needed)."""
    home = _home(ctx)
    home.require_initialised()
    peer_id = load_identity(home).peer_id
    if as_json:
        render.print_json({"peer_id": peer_id, "home": str(home.root)})
    else:
        print(peer_id)


@app.command()
def run(
    ctx: typer.Context,
    listen: ListenOpt = None,
    bootstrap: BootstrapOpt = None,
    api: Annotated[str | None, typer.Option("--api", metavar="HOST:PORT", help="API listen address.")] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = None,
    log_format: Annotated[str | None, typer.Option("--log-format", help="auto, json or console.")] = None,
) -> None:
    """Run the peer daemon in the foreground until SIGINT/SIGTERM."""
    home = _home(ctx)
    home.require_initialised()
    overrides = {
        "listen": listen or None,
        "bootstrap": bootstrap or None,
        "api_listen": api,
        "log_level": log_level,
        "log_format": log_format,
    }
    config = load_config(home.config_path, cli=overrides)
    identity = load_identity(home)
    from peer.daemon import run_daemon  # libp2p is heavy: imported only once the inputs are valid

    run_daemon(home, config, identity)


def _client(ctx: typer.Context, api: str | None) -> ApiClient:
    return ApiClient(api_url(_home(ctx), api))


@app.command()
def status(ctx: typer.Context, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """Show the running peer: id, addresses, connections, bootstrap state."""
    with _client(ctx, api) as client:
        info = client.status()
    if as_json:
        render.print_json(info)
    else:
        render.status(info)


@app.command()
def peers(ctx: typer.Context, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """List connected peers with their gossip scores."""
    with _client(ctx, api) as client:
        rows = client.peers()
    if as_json:
        render.print_json(rows)
    else:
        render.peers(rows)


@gossip_app.command("publish")
def gossip_publish(
    ctx: typer.Context,
    body: Annotated[str, typer.Argument(metavar="JSON", help="Message body as JSON ('-' reads stdin).")],
    topic: TopicOpt = "tasks",
    kind: Annotated[str | None, typer.Option("--kind", help="Envelope kind (default: message).")] = None,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a signed message on a gossip topic."""
    text = sys.stdin.read() if body == "-" else body
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"JSON argument is not valid JSON ({e}); quote it, e.g. '{{\"job\": 1}}'") from None
    with _client(ctx, api) as client:
        result = client.publish(topic, value, kind)
    if as_json:
        render.print_json(result)
    else:
        print(result["msg_id"])


@gossip_app.command("received")
def gossip_received(
    ctx: typer.Context,
    topic: TopicOpt = "tasks",
    since: Annotated[int, typer.Option("--since", min=0, help="Only entries after this index.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=1, max=1000, help="At most this many.")] = None,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the envelopes the peer received on a topic."""
    with _client(ctx, api) as client:
        entries = client.received(topic, since, limit)
    if as_json:
        render.print_json(entries)
    else:
        render.received(topic, entries)


@cluster_app.command("up")
def cluster_up_cmd(
    peers: Annotated[int, typer.Option("--peers", min=1, max=64, help="Number of peers.")] = 3,
    directory: DirOpt = Path("cluster"),
    validators: Annotated[
        int | None,
        typer.Option("--validators", min=1, max=64, help="How many peers validate (default: min(N, 4))."),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the cluster.")] = 60.0,
    as_json: JsonOpt = False,
) -> None:
    """Start N peers on loopback sharing one genesis (the first K validate), bootstrapped from the first."""
    from peer.cluster import cluster_status, cluster_up

    cluster = cluster_up(directory, peers, timeout=timeout, validators=validators)
    rows = cluster_status(cluster.root)
    if as_json:
        render.print_json({"dir": str(cluster.root), "peers": rows})
        return
    render.cluster(rows, title=f"hivemesh cluster in {cluster.root}")
    print(f"stop it with: hivemesh cluster down --dir {cluster.root}")


@cluster_app.command("status")
def cluster_status_cmd(directory: DirOpt = Path("cluster"), as_json: JsonOpt = False) -> None:
    """Query every peer of a local cluster."""
    from peer.cluster import cluster_status

    rows = cluster_status(directory)
    if as_json:
        render.print_json(rows)
    else:
        render.cluster(rows, title=f"cluster in {directory}")
    unhealthy = [r["index"] for r in rows if not r["alive"] or r.get("error")]
    if unhealthy:
        print(f"error: peer(s) {unhealthy} down or not answering", file=sys.stderr)
        raise typer.Exit(1)


@cluster_app.command("down")
def cluster_down_cmd(
    directory: DirOpt = Path("cluster"),
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before SIGKILL.")] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Stop every peer of a local cluster (SIGTERM, then SIGKILL after the timeout). Idempotent."""
    from peer.cluster import cluster_down

    outcome = cluster_down(directory, timeout=timeout)
    if as_json:
        render.print_json({str(pid): state for pid, state in outcome.items()})
    elif not outcome:
        print(f"no cluster running in {directory}")
    else:
        for pid, state in outcome.items():
            print(f"pid {pid}: {state}")


@app.command()
def demo(
    peers: Annotated[int, typer.Option("--peers", min=3, max=16, help="Number of peers.")] = 4,
    cheat: Annotated[
        bool,
        typer.Option(
            "--cheat",
            help="Then a cheating solver (TEST behaviour) is caught by a verifier, disputed and slashed.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the compute market end to end on a local cluster: register, train, infer, pay, tear down."""
    from peer.market.demo import run_demo

    result = run_demo(peers, show=not as_json, cheat=cheat)
    if as_json:
        render.print_json(result)


def hoist_global_options(argv: list[str]) -> list[str]:
    """Let the global --home appear anywhere (`hivemesh run --home H`), as kubo's global flags do."""
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg == "--home" and i + 1 < len(argv):
            hoisted += argv[i : i + 2]
            i += 2
            continue
        (hoisted if arg.startswith("--home=") else rest).append(arg)
        i += 1
    return hoisted + rest


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 1."""
    args = hoist_global_options(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="hivemesh")
    except PeerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
