"""Ledger commands of the `hivemesh` CLI: `tx ...`, `query ...`, `ledger status`, `genesis ...`.

`tx` and `query` commands are thin clients of the running daemon's API: `tx` has the daemon
sign with its node key (POST /tx) and, by default, wait for the commit. Success prints the tx
hash and the commit height; a rejection (or a tx that committed but failed) prints one
`error:` line and exits 1. Addresses are checked here first, so a typo is reported without
asking the daemon. `genesis create` / `genesis show` work on files and need no daemon.
The ledger package is imported only inside the commands that need it (CLI start-up time).
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
from peer.config import DEFAULT_BALANCE, DEFAULT_CHAIN_ID, DEFAULT_COMMISSION_BPS, DEFAULT_SELF_STAKE
from peer.errors import ApiError, PeerError
from peer.home import Home

tx_app = typer.Typer(help="Send ledger transactions signed by the running peer's key.", no_args_is_help=True)
query_app = typer.Typer(help="Query the ledger state of the running peer.", no_args_is_help=True)
ledger_app = typer.Typer(help="The running peer's ledger.", no_args_is_help=True)
genesis_app = typer.Typer(help="Create and inspect genesis files.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ApiOpt = Annotated[
    str | None,
    typer.Option("--api", metavar="HOST:PORT", help="Daemon API address (default: from run.json)."),
]
FeeOpt = Annotated[int | None, typer.Option("--fee", min=0, help="Fee (default: the chain's minimum fee).")]
NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="Return once accepted, without waiting for commit.")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=0.1, max=600, help="Seconds to wait for commit.")]
Amount = Annotated[int, typer.Argument(min=1, help="Amount (a positive integer).")]


class LedgerRejected(PeerError):
    """The ledger refused a tx or a query (its message and error code, on one line)."""


def _home(ctx: typer.Context) -> Home:
    home = getattr(ctx.find_root().obj, "home", None)
    assert isinstance(home, Home), "the root callback sets the home"
    return home


@contextmanager
def _client(ctx: typer.Context, api: str | None) -> Iterator[ApiClient]:
    """A client whose ledger rejections become one `error: <message> (<code>)` line."""
    with ApiClient(api_url(_home(ctx), api), timeout=660.0) as client:
        try:
            yield client
        except ApiError as e:
            if e.code is None:
                raise
            raise LedgerRejected(f"{e.message} ({e.code})") from None


def _address(value: str) -> str:
    from ledger.errors import InvalidTx
    from ledger.tx import check_address

    try:
        check_address(value)
    except InvalidTx:
        raise LedgerRejected(f"malformed address {value!r}: expected a peer id like 12D3KooW...") from None
    return value


def _send(
    ctx: typer.Context,
    api: str | None,
    tx_type: str,
    body: dict[str, Any],
    *,
    fee: int | None,
    no_wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    with _client(ctx, api) as client:
        result = client.submit(tx_type, body, fee=fee, wait=not no_wait, timeout=timeout)
    if as_json:
        render.print_json(result)
    if result.get("committed") and not result.get("ok"):
        raise LedgerRejected(
            f"tx {result['tx_hash']} committed at height {result['height']} but failed: "
            f"{result['message']} ({result['code']})"
        )
    if as_json:
        return
    if result.get("committed"):
        print(f"tx {result['tx_hash']} committed at height {result['height']} (index {result['index']})")
    else:
        print(f"tx {result['tx_hash']} accepted (nonce {result['nonce']}); not waiting for commit")


@tx_app.command("transfer")
def transfer(
    ctx: typer.Context,
    to: Annotated[str, typer.Argument(metavar="TO", help="Recipient address (peer id).")],
    amount: Amount,
    fee: FeeOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Transfer AMOUNT from the peer's account to TO."""
    body = {"to": _address(to), "amount": amount}
    _send(ctx, api, "transfer", body, fee=fee, no_wait=no_wait, timeout=timeout, as_json=as_json)


@tx_app.command("stake")
def stake(
    ctx: typer.Context,
    amount: Amount,
    commission: Annotated[
        int | None, typer.Option("--commission", min=0, max=10_000, help="Commission in basis points.")
    ] = None,
    fee: FeeOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bond AMOUNT as the peer's own validator stake (commission: kept from a first stake)."""
    if commission is None:
        with _client(ctx, api) as client:
            own = client.health()["peer_id"]
            validator = client.query("account", own).get("validator")
        commission = validator["commission_bps"] if validator else DEFAULT_COMMISSION_BPS
    body = {"amount": amount, "commission_bps": commission}
    _send(ctx, api, "stake", body, fee=fee, no_wait=no_wait, timeout=timeout, as_json=as_json)


@tx_app.command("unstake")
def unstake(
    ctx: typer.Context,
    amount: Amount,
    fee: FeeOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start unbonding AMOUNT of the peer's own stake."""
    _send(ctx, api, "unstake", {"amount": amount}, fee=fee, no_wait=no_wait, timeout=timeout, as_json=as_json)


@tx_app.command("delegate")
def delegate(
    ctx: typer.Context,
    validator: Annotated[str, typer.Argument(metavar="VALIDATOR", help="Validator address.")],
    amount: Amount,
    fee: FeeOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delegate AMOUNT to VALIDATOR."""
    body = {"validator": _address(validator), "amount": amount}
    _send(ctx, api, "delegate", body, fee=fee, no_wait=no_wait, timeout=timeout, as_json=as_json)


@tx_app.command("undelegate")
def undelegate(
    ctx: typer.Context,
    validator: Annotated[str, typer.Argument(metavar="VALIDATOR", help="Validator address.")],
    amount: Amount,
    fee: FeeOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start unbonding AMOUNT delegated to VALIDATOR."""
    body = {"validator": _address(validator), "amount": amount}
    _send(ctx, api, "undelegate", body, fee=fee, no_wait=no_wait, timeout=timeout, as_json=as_json)


@tx_app.command("register")
def register(
    ctx: typer.Context,
    role: Annotated[str, typer.Argument(metavar="ROLE", help="model_owner, solver, validator or verifier.")],
    fee: FeeOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register the peer's account for ROLE (burns the registration fee)."""
    from ledger.tx import ROLES

    if role not in ROLES:
        raise LedgerRejected(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    _send(ctx, api, "register", {"role": role}, fee=fee, no_wait=no_wait, timeout=timeout, as_json=as_json)


# ---- queries ---------------------------------------------------------------------------------


def _show(value: dict[str, Any], as_json: bool) -> None:
    if as_json:
        render.print_json(value)
        return
    for key, item in value.items():
        shown = (
            item if isinstance(item, str | int | float | bool) or item is None else render.compact(item, 200)
        )
        print(f"{key}: {shown}")


OptionalAddr = Annotated[
    str | None, typer.Argument(metavar="[ADDR]", help="Address (default: the peer's own).")
]


def _own_or(client: ApiClient, address: str | None) -> str:
    return address if address is not None else str(client.health()["peer_id"])


@query_app.command("balance")
def query_balance(
    ctx: typer.Context, address: OptionalAddr = None, api: ApiOpt = None, as_json: JsonOpt = False
) -> None:
    """Balance of ADDR."""
    address = None if address is None else _address(address)
    with _client(ctx, api) as client:
        result = client.query("balance", _own_or(client, address))
    if as_json:
        render.print_json(result)
    else:
        print(result["balance"])


@query_app.command("account")
def query_account(
    ctx: typer.Context, address: OptionalAddr = None, api: ApiOpt = None, as_json: JsonOpt = False
) -> None:
    """Balance, nonce, roles, stake, delegations and unbonding entries of ADDR."""
    address = None if address is None else _address(address)
    with _client(ctx, api) as client:
        _show(client.query("account", _own_or(client, address)), as_json)


@query_app.command("block")
def query_block(
    ctx: typer.Context,
    height: Annotated[int | None, typer.Argument(min=1, help="Height (default: the latest).")] = None,
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A committed block: header, hash and tx hashes."""
    with _client(ctx, api) as client:
        _show(client.query("block", "latest" if height is None else height), as_json)


@query_app.command("validators")
def query_validators(ctx: typer.Context, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """Every validator with its stake, commission and voting power."""
    with _client(ctx, api) as client:
        result = client.query("validators")
    if as_json:
        render.print_json(result)
        return
    print(f"validators at height {result['height']}:")
    for v in result["validators"]:
        jailed = " jailed" if v["jailed"] else ""
        print(
            f"  {v['address']}  power {v['power']}  bonded {v['bonded']}  {v['commission_bps']} bps{jailed}"
        )


@query_app.command("tx")
def query_tx(
    ctx: typer.Context,
    tx_hash: Annotated[str, typer.Argument(metavar="HASH", help="Tx hash (64 hex characters).")],
    api: ApiOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a committed tx is (height, index) and its receipt."""
    if len(tx_hash) != 64 or any(c not in "0123456789abcdefABCDEF" for c in tx_hash):
        raise LedgerRejected(f"malformed tx hash {tx_hash!r}: expected 64 hex characters")
    with _client(ctx, api) as client:
        _show(client.query("tx", tx_hash), as_json)


@ledger_app.command("status")
def ledger_status(ctx: typer.Context, api: ApiOpt = None, as_json: JsonOpt = False) -> None:
    """Height, last block and app hash, chain id and consensus state of the running peer."""
    with _client(ctx, api) as client:
        _show(client.ledger_status(), as_json)


# ---- genesis files -------------------------------------------------------------------------


@genesis_app.command("create")
def genesis_create(
    out: Annotated[Path, typer.Argument(metavar="FILE", help="Where to write the genesis JSON.")],
    validator: Annotated[
        list[str] | None, typer.Option("--validator", metavar="ADDR", help="Validator address (repeatable).")
    ] = None,
    account: Annotated[
        list[str] | None, typer.Option("--account", metavar="ADDR", help="Funded account (repeatable).")
    ] = None,
    chain_id: Annotated[str, typer.Option("--chain-id", help="Chain id.")] = DEFAULT_CHAIN_ID,
    balance: Annotated[int, typer.Option("--balance", min=0, help="Initial balance of each account.")] = (
        DEFAULT_BALANCE
    ),
    self_stake: Annotated[int, typer.Option("--stake", min=1, help="Self-stake of each validator.")] = (
        DEFAULT_SELF_STAKE
    ),
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a local test-net genesis: validators bonded with equal stake, accounts funded."""
    from peer.genesis_file import local_genesis, write_genesis

    validators = [_address(v) for v in validator or []]
    if not validators:
        raise LedgerRejected("a genesis needs at least one --validator ADDR (e.g. from `hivemesh id`)")
    accounts = [_address(a) for a in account or []] or validators
    if out.exists() and not force:
        raise LedgerRejected(f"{out} already exists; pass --force to overwrite it")
    genesis = local_genesis(accounts, validators, chain_id=chain_id, balance=balance, self_stake=self_stake)
    write_genesis(out, genesis)
    if as_json:
        render.print_json(genesis.to_dict())
    else:
        print(
            f"wrote {out}: chain {chain_id}, {len(validators)} validator(s), "
            f"{len(accounts)} funded account(s)"
        )


@genesis_app.command("show")
def genesis_show(
    ctx: typer.Context,
    path: Annotated[
        Path | None, typer.Argument(metavar="[FILE]", help="Default: the home's genesis.json.")
    ] = None,
) -> None:
    """Check a genesis file and print it as JSON."""
    from peer.genesis_file import read_genesis

    genesis = read_genesis(path if path is not None else _home(ctx).genesis_path)
    print(json.dumps(genesis.to_dict(), indent=2))
