"""Genesis files: reading, writing and creating the `genesis.json` a peer's ledger starts from.

The file is `Genesis.to_dict()` as JSON. A home holding `genesis.json` runs a ledger; without
one the peer only gossips. `local_genesis` builds the genesis of a local test net (what
`hivemesh cluster up` and `hivemesh genesis create` write): every listed account funded with
the same balance, the validators bonded with equal self-stake, and parameters scaled down for
a chain that lives minutes (short unbonding, jail and voting periods).

Error handling: every problem with a file (missing, unreadable, not JSON, not a valid genesis)
is one `GenesisError` line naming the file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from gossip.identity import public_from_peer_id
from ledger.errors import InvalidGenesis, InvalidTx
from ledger.genesis import Genesis, GenesisValidator
from ledger.params import Params
from ledger.tx import check_address
from peer.config import DEFAULT_BALANCE, DEFAULT_CHAIN_ID, DEFAULT_COMMISSION_BPS, DEFAULT_SELF_STAKE
from peer.errors import GenesisError
from peer.home import Home, write_atomic

# A local test net lives for minutes: everything measured in blocks is short.
LOCAL_PARAMS = Params(
    min_fee=1,
    registration_burn=1_000,
    unbonding_blocks=20,
    evidence_max_age_blocks=20,
    jail_blocks=20,
    gov_voting_blocks=20,
    gov_deposit=1_000,
)


def local_genesis(
    accounts: Sequence[str],
    validators: Sequence[str],
    *,
    chain_id: str = DEFAULT_CHAIN_ID,
    balance: int = DEFAULT_BALANCE,
    self_stake: int = DEFAULT_SELF_STAKE,
    commission_bps: int = DEFAULT_COMMISSION_BPS,
    params: Params = LOCAL_PARAMS,
    genesis_time_ms: int = 0,
) -> Genesis:
    """A genesis funding every address in `accounts` and bonding every one in `validators`.

    Validators need not be in `accounts` (then they start with a zero balance). Raises
    GenesisError for a malformed address or an invalid result (no validator, bad amounts).
    """
    for address in [*accounts, *validators]:
        try:
            check_address(address)
        except InvalidTx as e:
            raise GenesisError(str(e)) from None
    try:
        genesis = Genesis(
            chain_id=chain_id,
            balances=dict.fromkeys(accounts, balance),
            validators=tuple(
                GenesisValidator(address, public_from_peer_id(address), self_stake, commission_bps)
                for address in dict.fromkeys(validators)
            ),
            params=params,
            genesis_time_ms=genesis_time_ms,
        )
        genesis.check()
    except InvalidGenesis as e:
        raise GenesisError(f"invalid genesis: {e}") from None
    return genesis


def genesis_json(genesis: Genesis) -> bytes:
    return json.dumps(genesis.to_dict(), indent=2).encode() + b"\n"


def write_genesis(path: Path, genesis: Genesis) -> None:
    """Write `genesis` as JSON, atomically."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, genesis_json(genesis))
    except OSError as e:
        raise GenesisError(f"cannot write {path}: {e.strerror or e}") from None


def read_genesis(path: Path) -> Genesis:
    """Parse and check a genesis file. Raises GenesisError with one line naming the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GenesisError(f"no genesis file at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GenesisError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise GenesisError(f"{path} is not valid JSON: {e}") from None
    try:
        return Genesis.from_dict(raw)
    except InvalidGenesis as e:
        raise GenesisError(f"{path} is not a valid genesis: {e}") from None


def home_genesis(home: Home) -> Genesis | None:
    """The genesis of `home`, or None when it has none (the peer then runs without a ledger)."""
    if not home.genesis_path.exists():
        return None
    return read_genesis(home.genesis_path)


def install_genesis(home: Home, source: Path) -> Genesis:
    """Copy a genesis file into `home` after checking it.

    Refuses to replace a different genesis once the home has a ledger database, since its
    blocks belong to the old chain. Returns the installed genesis.
    """
    genesis = read_genesis(source)
    current = home.genesis_path
    if current.exists() and current.resolve() == source.resolve():
        return genesis
    if current.exists() and read_genesis(current) != genesis and home.ledger_path.exists():
        raise GenesisError(
            f"{home.root} already follows another chain ({current}) and has blocks in {home.ledger_path}; "
            "use a new home for a new chain"
        )
    try:
        home.root.mkdir(parents=True, exist_ok=True)
        tmp = current.with_name(f".{current.name}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(current)
    except OSError as e:
        raise GenesisError(f"cannot copy {source} to {current}: {e.strerror or e}") from None
    return genesis
