"""Errors raised by the peer package.

Every `PeerError` is a user-facing condition (bad config, missing home, daemon not running):
the CLI prints its message as one line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class PeerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(PeerError):
    """config.toml, an environment variable or a command-line option holds an invalid value."""


class HomeError(PeerError):
    """The home directory is missing, not initialised, or already in use by another daemon."""


class DaemonNotRunning(PeerError):
    """No daemon answers on the local API."""


class ApiError(PeerError):
    """The daemon answered with an error (4xx/5xx); `code` is the ledger's error code when it gave one."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        what = f"{code}: " if code else ""
        super().__init__(f"daemon refused the request ({status}): {what}{message}")
        self.status, self.message, self.code = status, message, code


class ClusterError(PeerError):
    """A local cluster could not be started, queried or stopped."""


class GenesisError(PeerError):
    """A genesis file is missing, unreadable or not a valid genesis."""
