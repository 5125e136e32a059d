"""Ledger commands of the CLI against one real single-validator peer: what success prints, and
user errors (insufficient balance, unknown account, malformed address, ...) as one clear line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gossip.identity import Identity
from peer.genesis_file import DEFAULT_BALANCE, DEFAULT_SELF_STAKE, local_genesis, write_genesis
from peer.home import Home, RunInfo, init_home
from peer.procs import running_peer

pytestmark = pytest.mark.timeout(180)

LOOPBACK = ("--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0")
COMMITTED = re.compile(r"^tx ([0-9a-f]{64}) committed at height (\d+) \(index (\d+)\)$")


def hivemesh(*args: str | Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["--home", str(home)] if home is not None else []
    return subprocess.run(
        [sys.executable, "-m", "peer", *prefix, *map(str, args)], capture_output=True, text=True, timeout=90
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 1, one line on stderr starting with 'error:', no traceback."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@dataclass(frozen=True)
class Chain:
    home: Home
    info: RunInfo
    address: str

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return hivemesh(*args, home=self.home.root)

    def json(self, *args: str | Path) -> dict:
        result = self.cli(*args, "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """One peer that is the only validator of its chain, its home set up through the CLI."""
    root = tmp_path_factory.mktemp("ledger-cli")
    home = Home(root / "validator")
    address = init_home(home).identity.peer_id
    genesis_file = root / "genesis.json"
    created = hivemesh("genesis", "create", genesis_file, "--validator", address, "--chain-id", "cli-test")
    assert created.returncode == 0, created.stderr
    installed = hivemesh("init", "--genesis", genesis_file, home=home.root)
    assert installed.returncode == 0 and "genesis: chain cli-test" in installed.stdout, installed
    with running_peer(home, *LOOPBACK) as (_, info):
        yield Chain(home, info, address)


def test_transfer_stake_and_queries(chain: Chain) -> None:
    other = Identity.generate().peer_id
    sent = chain.cli("tx", "transfer", other, "1234", "--fee", "3")
    assert sent.returncode == 0, sent.stderr
    match = COMMITTED.match(sent.stdout.strip())
    assert match, sent.stdout
    tx_hash, height = match.group(1), int(match.group(2))

    assert chain.cli("query", "balance", other).stdout.strip() == "1234"
    # The only validator proposes every block, so the fee comes back to it.
    assert chain.json("query", "balance")["balance"] == DEFAULT_BALANCE - 1234
    found = chain.json("query", "tx", tx_hash)
    assert (found["height"], found["ok"], found["code"], found["fee"]) == (height, True, "ok", 3)
    block = chain.json("query", "block", str(height))
    assert tx_hash in block["tx_hashes"] and block["height"] == height
    status = chain.json("ledger", "status")
    assert status["chain_id"] == "cli-test" and status["height"] >= height and status["is_validator"] is True

    registered = chain.json("tx", "register", "solver")
    assert registered["committed"] and registered["ok"], registered
    assert chain.json("tx", "stake", "100")["ok"]
    assert chain.json("tx", "unstake", "40")["ok"]
    account = chain.json("query", "account")
    assert [r["role"] for r in account["roles"]] == ["solver", "validator"]
    assert account["validator"]["self_stake"] == DEFAULT_SELF_STAKE + 60
    assert [e["amount"] for e in account["unbonding"]] == [40]
    validators = chain.json("query", "validators")["validators"]
    assert [(v["address"], v["bonded"]) for v in validators] == [(chain.address, DEFAULT_SELF_STAKE + 60)]

    table = chain.cli("query", "validators")
    assert table.returncode == 0 and chain.address in table.stdout


def test_ledger_rejections_are_one_clear_line(chain: Chain) -> None:
    before = chain.json("query", "account")
    balance = before["balance"]
    other = Identity.generate().peer_id
    assert_user_error(
        chain.cli("tx", "transfer", other, str(balance + 1)), "insufficient_balance", f"needs {balance + 1}"
    )
    assert chain.json("query", "account")["nonce"] == before["nonce"]  # refused before any fee was paid
    assert_user_error(chain.cli("query", "account", other), f"no account {other}", "unknown_account")
    assert_user_error(chain.cli("query", "balance", other), "unknown_account")
    assert_user_error(chain.cli("tx", "delegate", other, "5"), "unknown_validator")
    assert_user_error(chain.cli("tx", "delegate", chain.address, "5"), "self_delegation")
    assert_user_error(chain.cli("tx", "undelegate", chain.address, "5"), "unknown_delegation")


def test_malformed_input_is_one_clear_line(chain: Chain) -> None:
    for args in (
        ("tx", "transfer", "alice", "5"),
        ("tx", "delegate", "12D3KooWnot-a-key", "5"),
        ("query", "balance", "alice"),
        ("query", "account", "0xdeadbeef"),
    ):
        assert_user_error(chain.cli(*args), "malformed address")
    assert_user_error(chain.cli("query", "tx", "abc"), "malformed tx hash")
    assert_user_error(chain.cli("query", "tx", "ab" * 32), "unknown_tx")
    assert_user_error(chain.cli("query", "block", "999999"), "no block at height 999999", "unknown_block")
    assert_user_error(chain.cli("tx", "register", "king"), "unknown role 'king'")
    bad_amount = chain.cli("tx", "transfer", chain.address, "-5")
    assert bad_amount.returncode == 2 and "Traceback" not in bad_amount.stderr  # usage error from typer


def test_errors_without_a_ledger(tmp_path: Path) -> None:
    home = tmp_path / "plain"
    init_home(Home(home))
    assert_user_error(hivemesh("query", "balance", home=home), "no hivemesh daemon is running")
    assert_user_error(hivemesh("ledger", "status", home=home), "no hivemesh daemon is running")
    bad = tmp_path / "bad-genesis.json"
    bad.write_text('{"chain_id": "x", "validators": []}')
    assert_user_error(hivemesh("init", "--genesis", bad, home=home), "not a valid genesis")
    assert not Home(home).genesis_path.exists()
    assert_user_error(hivemesh("init", "--genesis", tmp_path / "missing.json", home=home), "no genesis file")
    assert_user_error(hivemesh("genesis", "create", tmp_path / "g.json"), "at least one --validator")
    with running_peer(Home(home), *LOOPBACK):
        assert_user_error(hivemesh("ledger", "status", home=home), "runs no ledger", "no_ledger")


def test_genesis_file_round_trip(tmp_path: Path) -> None:
    ids = [Identity.generate().peer_id for _ in range(3)]
    path = tmp_path / "genesis.json"
    write_genesis(path, local_genesis(ids, ids[:2], chain_id="rt"))
    shown = hivemesh("genesis", "show", path)
    assert shown.returncode == 0, shown.stderr
    raw = json.loads(shown.stdout)
    assert raw["chain_id"] == "rt" and sorted(raw["balances"]) == sorted(ids)
    assert [v["address"] for v in raw["validators"]] == ids[:2]
    refused = hivemesh("genesis", "create", path, "--validator", ids[0])
    assert_user_error(refused, "already exists")
