"""Peer settings: the config.toml model, its sources and their precedence.

Precedence, highest first: command-line options > environment (`HIVEMESH_<FIELD>`, lists
comma-separated) > `<home>/config.toml` > defaults. Every invalid value, wherever it came
from, becomes one `ConfigError` line that names the setting and its source.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import multiaddr
from multiaddr.exceptions import Error as MultiaddrError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from peer.errors import ConfigError

DEFAULT_LISTEN = "/ip4/0.0.0.0/tcp/4001"
DEFAULT_API = "127.0.0.1:7480"
ENV_PREFIX = "HIVEMESH_"
_HOST_PROTOCOLS = frozenset({"ip4", "ip6", "dns", "dns4", "dns6"})


def parse_host_port(value: str) -> tuple[str, int]:
    """Split "HOST:PORT" (IPv6 as "[::1]:PORT"); raises ValueError with a readable reason."""
    text = value.strip()
    if text.startswith("http://"):
        text = text.removeprefix("http://").rstrip("/")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or (":" in host and not text.startswith("[")):
        raise ValueError(f"expected HOST:PORT (IPv6 as [ADDR]:PORT), got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r}")
    return host, int(port_text)


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_multiaddr(value: str, *, need_peer_id: bool) -> str:
    try:
        addr = multiaddr.Multiaddr(value)
    except (MultiaddrError, ValueError, TypeError) as e:
        raise ValueError(f"{value!r} is not a multiaddr ({e})") from None
    names = [p.name for p in addr.protocols()]
    if not names or names[0] not in _HOST_PROTOCOLS or "tcp" not in names:
        raise ValueError(f"{value!r} must look like /ip4/<addr>/tcp/<port>")
    if need_peer_id and names[-1] != "p2p":
        raise ValueError(
            f"{value!r} must end with /p2p/<peer id> (copy it from the other peer's start-up line)"
        )
    if not need_peer_id and "p2p" in names:
        raise ValueError(f"{value!r}: a listen address must not contain /p2p/")
    return value


class Config(BaseModel):
    """Contents of config.toml. Unknown keys are an error (they are usually typos)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: list[str] = Field(default_factory=lambda: [DEFAULT_LISTEN], min_length=1)
    bootstrap: list[str] = Field(default_factory=list)
    api_listen: str = DEFAULT_API
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    sync_interval: float = Field(default=1.0, gt=0, le=3600)
    consensus_propose_ms: int = Field(default=3000, ge=10, le=600_000)
    consensus_vote_ms: int = Field(default=1000, ge=10, le=600_000)
    consensus_delta_ms: int = Field(default=500, ge=0, le=600_000)
    max_block_txs: int = Field(default=5000, ge=1, le=10_000)
    solver: bool = True
    solver_price_bps: int = Field(default=8_000, ge=1, le=10_000)
    solver_min_price: int = Field(default=1, ge=1)
    solver_max_jobs: int = Field(default=2, ge=1, le=64)
    # Test behaviours (peer/market/behaviours.py): anything but "honest" cheats on purpose.
    solver_behaviour: Literal["honest", "lazy", "wrong", "fake-train", "swap-model", "noisy"] = "honest"
    verifier: bool = False
    verifier_min_rate_bps: int = Field(default=0, ge=0, le=10_000)
    verifier_behaviour: Literal["honest", "lazy"] = "honest"

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: list[str]) -> list[str]:
        return [_check_multiaddr(v, need_peer_id=False) for v in value]

    @field_validator("bootstrap")
    @classmethod
    def _valid_bootstrap(cls, value: list[str]) -> list[str]:
        return [_check_multiaddr(v, need_peer_id=True) for v in value]

    @field_validator("api_listen")
    @classmethod
    def _valid_api(cls, value: str) -> str:
        host, port = parse_host_port(value)
        return format_host_port(host, port)

    @field_validator("log_level", "log_format", "solver_behaviour", "verifier_behaviour", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def api_host_port(self) -> tuple[str, int]:
        return parse_host_port(self.api_listen)


FIELDS: tuple[str, ...] = tuple(Config.model_fields)
_LIST_FIELDS = frozenset({"listen", "bootstrap"})


def env_var(field: str) -> str:
    return ENV_PREFIX + field.upper()


def read_file(path: Path) -> dict[str, Any]:
    """The raw table of config.toml ({} when the file does not exist)."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None


def read_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings given as HIVEMESH_<FIELD> variables; lists are comma-separated."""
    values: dict[str, Any] = {}
    for field in FIELDS:
        raw = env.get(env_var(field))
        if raw is None:
            continue
        values[field] = [s.strip() for s in raw.split(",") if s.strip()] if field in _LIST_FIELDS else raw
    return values


def load_config(
    path: Path | None, env: Mapping[str, str] | None = None, cli: Mapping[str, Any] | None = None
) -> Config:
    """Merge defaults < file < env < cli and validate. Raises ConfigError naming the bad setting."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((str(path), read_file(path)))
    layers.append(("environment", read_env(os.environ if env is None else env)))
    layers.append(("command line", {k: v for k, v in (cli or {}).items() if v is not None}))
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, values in layers:
        for key, value in values.items():
            merged[key] = value
            sources[key] = env_var(key) if source == "environment" else source
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_describe(e, sources)) from None


def _describe(error: ValidationError, sources: Mapping[str, str]) -> str:
    parts = []
    for err in error.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        where = ".".join(str(p) for p in err["loc"])
        source = sources.get(field, "defaults")
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown setting {field!r} (in {source}; known: {', '.join(FIELDS)})")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where} = {json.dumps(err.get('input'), default=str)} (from {source}): {msg}")
    return "invalid configuration: " + "; ".join(parts)


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


# Round timeouts of a local test net (`hivemesh cluster up`): every peer is on this machine.
LOCAL_CONSENSUS = {"consensus_propose_ms": 1000, "consensus_vote_ms": 500, "consensus_delta_ms": 250}
# Genesis defaults of a local test net (`hivemesh cluster up`, `hivemesh genesis create`).
DEFAULT_CHAIN_ID = "hivemesh-local"
DEFAULT_BALANCE = 1_000_000_000
DEFAULT_SELF_STAKE = 1_000_000
DEFAULT_COMMISSION_BPS = 500


def config_template(
    listen: list[str] | None = None,
    bootstrap: list[str] | None = None,
    api_listen: str | None = None,
    consensus: dict[str, int] | None = None,
) -> str:
    """The commented config.toml written by `hivemesh init` (`consensus`: non-default timeouts)."""
    defaults = Config()
    timeouts = {name: getattr(defaults, name) for name in LOCAL_CONSENSUS} | (consensus or {})
    return f"""\
# hivemesh peer configuration.
# Precedence: command-line options > environment (HIVEMESH_<SETTING>, lists comma-separated)
#             > this file > built-in defaults.

# Multiaddrs to listen on for other peers (TCP, Noise, Yamux). Port 0 picks a free port.
listen = {_toml_list(listen if listen is not None else [DEFAULT_LISTEN])}

# Peers to dial at start-up and keep redialling: multiaddrs ending in /p2p/<peer id>.
# A running peer prints its own ("to connect other peers use: --bootstrap ...").
bootstrap = {_toml_list(bootstrap or [])}

# Local HTTP API (status, peers, metrics, gossip). Keep it on loopback unless you
# put something in front of it: it has no authentication.
api_listen = {json.dumps(api_listen or DEFAULT_API)}

# debug | info | warning | error
log_level = "info"

# auto (console on a terminal, JSON otherwise) | json | console
log_format = "auto"

# Seconds between anti-entropy rounds with neighbours.
sync_interval = 1.0

# Ledger consensus round timeouts in milliseconds (used when the home has a genesis.json):
# waiting for a proposal, for votes after a +2/3 of any votes, and the growth per round
# (round r waits base + r * delta). Every validator of a chain should use the same values.
consensus_propose_ms = {timeouts["consensus_propose_ms"]}
consensus_vote_ms = {timeouts["consensus_vote_ms"]}
consensus_delta_ms = {timeouts["consensus_delta_ms"]}

# Most txs in a block this peer proposes (a block also stays under the gossip size limit).
max_block_txs = 5000

# Compute market solver. The peer bids on announced jobs only once its account is registered
# as a solver (`hivemesh tx register solver`); `solver = false` turns bidding off altogether.
# Price: solver_price_bps of the bounty (at least solver_min_price); at most solver_max_jobs
# assigned jobs at a time.
solver = true
solver_price_bps = 8000
solver_min_price = 1
solver_max_jobs = 2

# Verifier: spot-check other solvers' results and challenge wrong ones. Needs the account to
# be registered as a verifier (`hivemesh tx register verifier`). verifier_min_rate_bps: check at
# least this share of a result's units even when the ledger samples fewer (more work, more caught).
verifier = false
verifier_min_rate_bps = 0

# Test behaviours, for exercising the checks on a test net only: "honest" in production.
# solver_behaviour: honest | lazy | wrong | fake-train | swap-model | noisy (honest, with float noise
# inside a tolerant job's bounds); verifier_behaviour: honest | lazy.
solver_behaviour = "honest"
verifier_behaviour = "honest"
"""
