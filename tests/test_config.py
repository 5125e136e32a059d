"""Peer configuration: precedence of its sources, clear errors for bad values, home layout, keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from peer.config import DEFAULT_API, DEFAULT_LISTEN, Config, config_template, load_config, read_env
from peer.errors import ConfigError, HomeError
from peer.home import DEFAULT_HOME, Home, init_home, load_identity, resolve_home

pytestmark = pytest.mark.timeout(30)

PEER_ADDR = "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
OTHER_ADDR = "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWBKZV965C78gEZRY66KGVMRD3hVc2o7A2TvogDnvpxFxs"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_env_or_cli(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.toml", env={}, cli={})
    assert config.listen == [DEFAULT_LISTEN] == ["/ip4/0.0.0.0/tcp/4001"]
    assert config.bootstrap == []
    assert config.api_listen == DEFAULT_API == "127.0.0.1:7480"
    assert config.api_host_port == ("127.0.0.1", 7480)
    assert (config.log_level, config.log_format, config.sync_interval) == ("info", "auto", 1.0)


def test_cli_beats_env_beats_file_beats_defaults(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f'listen = ["/ip4/127.0.0.1/tcp/0"]\nbootstrap = ["{PEER_ADDR}"]\napi_listen = "127.0.0.1:1111"\n'
        'log_level = "warning"\nsync_interval = 2.5\n',
    )
    env = {
        "HIVEMESH_API_LISTEN": "127.0.0.1:2222",
        "HIVEMESH_LOG_LEVEL": "DEBUG",
        "HIVEMESH_HOME": "/ignored",
    }
    config = load_config(path, env=env, cli={"api_listen": "127.0.0.1:3333", "bootstrap": None})
    assert config.api_listen == "127.0.0.1:3333"  # cli over env over file
    assert config.log_level == "debug"  # env over file (case-insensitive)
    assert config.bootstrap == [PEER_ADDR]  # file; an option left unset (None) does not override
    assert config.sync_interval == 2.5  # file over default
    assert config.log_format == "auto"  # default
    assert load_config(path, env=env, cli={}).api_listen == "127.0.0.1:2222"
    assert load_config(path, env={}, cli={}).api_listen == "127.0.0.1:1111"


def test_env_lists_are_comma_separated() -> None:
    env = {"HIVEMESH_BOOTSTRAP": f" {PEER_ADDR} , {OTHER_ADDR},", "HIVEMESH_LISTEN": "/ip4/127.0.0.1/tcp/0"}
    assert read_env(env) == {"bootstrap": [PEER_ADDR, OTHER_ADDR], "listen": ["/ip4/127.0.0.1/tcp/0"]}
    assert load_config(None, env={"HIVEMESH_BOOTSTRAP": ""}, cli={}).bootstrap == []


@pytest.mark.parametrize(
    ("layer", "field", "value", "expected"),
    [
        (
            "cli",
            "listen",
            ["garbage"],
            "listen = [\"garbage\"] (from command line): 'garbage' is not a multiaddr",
        ),
        ("cli", "listen", ["/ip4/1.2.3.4/tcp/70000"], "is not a multiaddr"),
        ("cli", "listen", [], "listen = [] (from command line)"),
        (
            "env",
            "bootstrap",
            "/ip4/1.2.3.4/tcp/4001",
            "(from HIVEMESH_BOOTSTRAP): '/ip4/1.2.3.4/tcp/4001' must end",
        ),
        ("env", "api_listen", "localhost", "(from HIVEMESH_API_LISTEN): expected HOST:PORT"),
        ("env", "api_listen", "127.0.0.1:99999", "port must be a number from 0 to 65535"),
        ("env", "sync_interval", "fast", 'sync_interval = "fast" (from HIVEMESH_SYNC_INTERVAL)'),
        ("file", "log_format", "xml", 'log_format = "xml"'),
        ("file", "sync_interval", -1, "greater than 0"),
        ("file", "listen", "/ip4/127.0.0.1/tcp/0", "Input should be a valid list"),
    ],
)
def test_bad_values_name_the_setting_and_its_source(
    tmp_path: Path, layer: str, field: str, value: object, expected: str
) -> None:
    path = tmp_path / "config.toml"
    env: dict[str, str] = {}
    cli: dict[str, object] = {}
    if layer == "file":
        rendered = f'"{value}"' if isinstance(value, str) else str(value)
        path.write_text(f"{field} = {rendered}\n")
    elif layer == "env":
        env[f"HIVEMESH_{field.upper()}"] = str(value)
    else:
        cli[field] = value
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env, cli=cli)
    message = str(info.value)
    assert message.startswith("invalid configuration: ")
    assert expected in message
    if layer == "file":
        assert str(path) in message
    assert "\n" not in message


def test_unknown_setting_and_broken_toml_are_clear_errors(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'listn = ["/ip4/127.0.0.1/tcp/0"]\n')
    with pytest.raises(ConfigError, match=r"unknown setting 'listn' \(in .*config.toml; known: listen,"):
        load_config(path, env={}, cli={})
    path.write_text("listen = [\n")
    with pytest.raises(ConfigError, match=r"config.toml is not valid TOML"):
        load_config(path, env={}, cli={})


def test_template_parses_to_the_values_it_was_given(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, config_template()), env={}, cli={}) == Config()
    text = config_template(["/ip4/127.0.0.1/tcp/0"], [PEER_ADDR], "127.0.0.1:0")
    config = load_config(write_config(tmp_path, text), env={}, cli={})
    assert (config.listen, config.bootstrap, config.api_listen) == (
        ["/ip4/127.0.0.1/tcp/0"],
        [PEER_ADDR],
        "127.0.0.1:0",
    )
    assert text.count("\n#") >= 8  # a commented template, not a bare dump


def test_home_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_home("/a/b", env={"HIVEMESH_HOME": "/c"}).root == Path("/a/b")
    assert resolve_home(None, env={"HIVEMESH_HOME": "/c"}).root == Path("/c")
    assert resolve_home(None, env={}).root == tmp_path / ".hivemesh" == DEFAULT_HOME.expanduser()


def test_init_is_idempotent_and_keeps_an_edited_config(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    first = init_home(home, listen=["/ip4/127.0.0.1/tcp/0"], api_listen="127.0.0.1:0")
    assert first.created_key and first.created_config
    assert (home.key_path.stat().st_mode & 0o777) == 0o600
    assert home.data_dir.is_dir() and not home.run_path.exists()
    home.config_path.write_text(
        home.config_path.read_text().replace('log_level = "info"', 'log_level = "debug"')
    )
    second = init_home(home)
    assert not second.created_key and not second.created_config
    assert second.identity.peer_id == first.identity.peer_id == load_identity(home).peer_id
    assert load_config(home.config_path, env={}, cli={}).log_level == "debug"


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    os.chmod(home.key_path, 0o640)
    with pytest.raises(HomeError, match=r"accessible by group/others \(mode 640\); run `chmod 600"):
        load_identity(home)
    # Through the CLI: one line on stderr, exit code 1, no traceback.
    result = subprocess.run(
        [sys.executable, "-m", "peer", "--home", str(home.root), "id"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: key file ") and "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    os.chmod(home.key_path, 0o600)
    assert load_identity(home).peer_id


def test_corrupt_key_is_refused(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    init_home(home)
    home.key_path.write_bytes(b"short")
    with pytest.raises(HomeError, match="must hold a 32-byte Ed25519 seed, found 5 bytes"):
        load_identity(home)
