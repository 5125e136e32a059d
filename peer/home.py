"""The peer's home directory: where it lives and what it holds.

Layout (like CometBFT's): `config.toml` (commented, written by `hivemesh init`),
`keys/node.key` (Ed25519 seed, mode 0600; refused when group/world-readable),
`genesis.json` (the chain this peer follows; without it the peer runs no ledger),
`data/` (blobs, `ledger.sqlite`: the block store), `run.json` (written by a running daemon: pid,
peer id, listen addresses, API address; removed on clean exit) and `daemon.lock` (held by
the running daemon so two daemons never share a home).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gossip.identity import Identity, KeyFileError
from peer.config import config_template
from peer.errors import HomeError

HOME_ENV = "HIVEMESH_HOME"
DEFAULT_HOME = Path("~/.hivemesh")


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def key_path(self) -> Path:
        return self.root / "keys" / "node.key"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def genesis_path(self) -> Path:
        return self.root / "genesis.json"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    @property
    def run_path(self) -> Path:
        return self.root / "run.json"

    @property
    def lock_path(self) -> Path:
        return self.root / "daemon.lock"

    def is_initialised(self) -> bool:
        return self.key_path.exists()

    def require_initialised(self) -> None:
        if not self.root.is_dir():
            raise HomeError(
                f"no hivemesh home at {self.root}; run `hivemesh init` (or pass --home / set {HOME_ENV})"
            )
        if not self.key_path.exists():
            raise HomeError(
                f"{self.root} has no key at {self.key_path}; run `hivemesh --home {self.root} init`"
            )


def resolve_home(cli_value: str | Path | None, env: Mapping[str, str] | None = None) -> Home:
    """--home, else $HIVEMESH_HOME, else ~/.hivemesh."""
    env = os.environ if env is None else env
    raw = cli_value if cli_value not in (None, "") else env.get(HOME_ENV) or DEFAULT_HOME
    return Home(Path(raw).expanduser().absolute())


@dataclass(frozen=True)
class InitResult:
    identity: Identity
    created_key: bool
    created_config: bool


def init_home(
    home: Home,
    *,
    listen: list[str] | None = None,
    bootstrap: list[str] | None = None,
    api_listen: str | None = None,
    consensus: dict[str, int] | None = None,
) -> InitResult:
    """Create the layout; keep an existing key and config.toml untouched (idempotent)."""
    try:
        home.root.mkdir(parents=True, exist_ok=True)
        home.key_path.parent.mkdir(mode=0o700, exist_ok=True)
        home.blobs_dir.mkdir(parents=True, exist_ok=True)
        created_key = not home.key_path.exists()
        identity = Identity.generate() if created_key else load_identity(home)
        if created_key:
            identity.save(home.key_path)
        created_config = not home.config_path.exists()
        if created_config:
            write_atomic(home.config_path, config_template(listen, bootstrap, api_listen, consensus).encode())
    except OSError as e:
        raise HomeError(f"cannot initialise {home.root}: {e.strerror or e}") from None
    return InitResult(identity, created_key, created_config)


def load_identity(home: Home) -> Identity:
    """The node key; HomeError when missing, malformed, unreadable or readable by others."""
    try:
        return Identity.load(home.key_path)
    except KeyFileError as e:
        raise HomeError(str(e)) from None
    except OSError as e:
        raise HomeError(f"cannot read key file {home.key_path}: {e.strerror or e}") from None


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunInfo:
    """What a running daemon publishes about itself in run.json."""

    pid: int
    peer_id: str
    listen: list[str]
    api: str  # HOST:PORT actually bound (never port 0)
    version: str
    started_at: float

    @property
    def api_url(self) -> str:
        return f"http://{self.api}"


def write_run_info(home: Home, info: RunInfo) -> None:
    write_atomic(home.run_path, json.dumps(asdict(info), indent=2).encode() + b"\n")


def read_run_info(home: Home) -> RunInfo | None:
    """run.json of the daemon using this home, or None when there is none."""
    try:
        raw: Any = json.loads(home.run_path.read_text())
        return RunInfo(
            pid=int(raw["pid"]),
            peer_id=str(raw["peer_id"]),
            listen=[str(a) for a in raw["listen"]],
            api=str(raw["api"]),
            version=str(raw["version"]),
            started_at=float(raw["started_at"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HomeError(
            f"{home.run_path} is unreadable or corrupt ({e}); remove it if no daemon is running"
        ) from None


def remove_run_info(home: Home, pid: int) -> None:
    """Remove run.json if it is still ours."""
    try:
        info = read_run_info(home)
    except HomeError:
        return
    if info is not None and info.pid == pid:
        home.run_path.unlink(missing_ok=True)


@contextmanager
def daemon_lock(home: Home) -> Iterator[None]:
    """Hold the home's lock for the lifetime of a daemon; HomeError if another daemon holds it."""
    try:
        fd = os.open(home.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise HomeError(f"cannot open {home.lock_path}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = None
            try:
                info = read_run_info(home)
            except HomeError:
                pass
            who = f" (pid {info.pid}, API {info.api})" if info else ""
            raise HomeError(
                f"another hivemesh daemon is already running with home {home.root}{who}"
            ) from None
        yield
    finally:
        os.close(fd)
