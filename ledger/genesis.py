"""Genesis: the chain's starting point, read from a JSON/TOML-like dict, and the state it gives.

Dict form (JSON-friendly; public keys as 64 hex characters or raw bytes):
    {"chain_id": "hivemesh-test", "genesis_time_ms": 0,
     "balances": {"<peer id>": 1000, ...},
     "validators": [{"address": "<peer id>", "pubkey": "<hex>", "self_stake": 100, "commission_bps": 500}],
     "params": {"min_fee": 1, ...}}          # missing params take their defaults
Everything at genesis is minted: minted = balances + self-stakes. Genesis validators are
registered as "validator" at height 0 without paying the registration burn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gossip.identity import peer_id_from_public
from ledger.errors import InvalidGenesis, InvalidParams, InvalidTx
from ledger.params import Params
from ledger.staking import compute_validator_set
from ledger.state import MAX_SUPPLY, Account, State, Validator, check_invariants
from ledger.tx import MAX_CHAIN_ID_LEN, check_address

_KEYS = frozenset({"chain_id", "genesis_time_ms", "balances", "validators", "params"})
_VALIDATOR_KEYS = frozenset({"address", "pubkey", "self_stake", "commission_bps"})


@dataclass(frozen=True, slots=True)
class GenesisValidator:
    address: str
    pubkey: bytes
    self_stake: int
    commission_bps: int


@dataclass(frozen=True, slots=True)
class Genesis:
    chain_id: str
    balances: dict[str, int] = field(default_factory=dict)
    validators: tuple[GenesisValidator, ...] = ()
    params: Params = field(default_factory=Params)
    genesis_time_ms: int = 0

    @classmethod
    def from_dict(cls, raw: Any) -> Genesis:
        """Strict parse. Raises InvalidGenesis naming the first problem found."""
        if not isinstance(raw, dict) or not set(raw) <= _KEYS or "chain_id" not in raw:
            raise InvalidGenesis(f"genesis must be a map with chain_id and only the keys {sorted(_KEYS)}")
        try:
            params = Params.from_dict(raw.get("params", {}))
        except InvalidParams as e:
            raise InvalidGenesis(f"params: {e}") from e
        balances = raw.get("balances", {})
        if not isinstance(balances, dict):
            raise InvalidGenesis("balances must be a map of address to amount")
        vals = raw.get("validators", [])
        if not isinstance(vals, list):
            raise InvalidGenesis("validators must be a list")
        genesis = cls(
            chain_id=raw["chain_id"],
            balances=dict(balances),
            validators=tuple(_parse_validator(i, v) for i, v in enumerate(vals)),
            params=params,
            genesis_time_ms=raw.get("genesis_time_ms", 0),
        )
        genesis.check()
        return genesis

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "balances": dict(sorted(self.balances.items())),
            "validators": [
                {
                    "address": v.address,
                    "pubkey": v.pubkey.hex(),
                    "self_stake": v.self_stake,
                    "commission_bps": v.commission_bps,
                }
                for v in self.validators
            ],
            "params": self.params.to_dict(),
        }

    def check(self) -> None:
        if not isinstance(self.chain_id, str) or not 0 < len(self.chain_id) <= MAX_CHAIN_ID_LEN:
            raise InvalidGenesis(f"chain_id must be a string of 1..{MAX_CHAIN_ID_LEN} characters")
        if not _is_uint(self.genesis_time_ms):
            raise InvalidGenesis("genesis_time_ms must be a non-negative integer")
        for address, amount in sorted(self.balances.items(), key=lambda kv: str(kv[0])):
            _check_address(address, "balance")
            if not _is_uint(amount):
                raise InvalidGenesis(f"balance of {address} must be a non-negative integer, got {amount!r}")
        seen: set[str] = set()
        for v in self.validators:
            _check_address(v.address, "validator")
            if (
                not isinstance(v.pubkey, bytes)
                or len(v.pubkey) != 32
                or peer_id_from_public(v.pubkey) != v.address
            ):
                raise InvalidGenesis(f"validator {v.address}: pubkey must be the 32-byte key of that address")
            if not _is_uint(v.self_stake) or not _is_uint(v.commission_bps):
                raise InvalidGenesis(
                    f"validator {v.address}: self_stake and commission_bps must be non-negative integers"
                )
            if v.address in seen:
                raise InvalidGenesis(f"validator {v.address} listed twice")
            seen.add(v.address)
            if v.commission_bps > self.params.max_commission_bps:
                raise InvalidGenesis(
                    f"validator {v.address} commission {v.commission_bps} bps is over the maximum"
                )
        total = sum(self.balances.values()) + sum(v.self_stake for v in self.validators)
        if total > MAX_SUPPLY:
            raise InvalidGenesis(f"total supply {total} exceeds {MAX_SUPPLY}")
        if not any(v.self_stake >= self.params.power_reduction for v in self.validators):
            raise InvalidGenesis("genesis needs at least one validator with voting power")


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_address(address: Any, what: str) -> None:
    try:
        check_address(address)
    except InvalidTx as e:
        raise InvalidGenesis(f"{what}: {e}") from e


def _parse_validator(index: int, raw: Any) -> GenesisValidator:
    if not isinstance(raw, dict) or set(raw) != _VALIDATOR_KEYS:
        raise InvalidGenesis(
            f"validator #{index} must be a map with exactly the keys {sorted(_VALIDATOR_KEYS)}"
        )
    pubkey = raw["pubkey"]
    if isinstance(pubkey, str):
        try:
            pubkey = bytes.fromhex(pubkey)
        except ValueError as e:
            raise InvalidGenesis(f"validator #{index}: pubkey is not hex") from e
    return GenesisValidator(raw["address"], pubkey, raw["self_stake"], raw["commission_bps"])


def genesis_state(genesis: Genesis) -> State:
    """The state before block 1. Its validator set signs heights 1 and 2 (and on, until changed)."""
    genesis.check()
    state = State(chain_id=genesis.chain_id, params=genesis.params, time_ms=genesis.genesis_time_ms)
    for address, amount in sorted(genesis.balances.items()):
        state.accounts[address] = Account(balance=amount)
    for v in genesis.validators:
        acct = state.accounts.get(v.address, Account())
        roles = tuple(sorted({*acct.roles, ("validator", 0)}))
        state.accounts[v.address] = Account(acct.balance, acct.nonce, roles)
        state.validators[v.address] = Validator(v.pubkey, v.self_stake, 0, v.commission_bps)
    state.minted = sum(genesis.balances.values()) + sum(v.self_stake for v in genesis.validators)
    state.validator_set = compute_validator_set(state)
    check_invariants(state)
    return state
