"""The version of the installed hivemesh distribution."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hivemesh")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
