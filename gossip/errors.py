"""Errors raised by the gossip package. Catch `GossipError` at I/O edges."""

from __future__ import annotations


class GossipError(Exception):
    """Base of every error this package raises on purpose."""


class DialError(GossipError):
    """Could not reach a peer (refused, timed out, wrong identity, partitioned)."""


class ProtocolNotSupported(DialError):
    """The remote peer does not speak the protocol we asked for."""


class StreamBroken(GossipError):
    """The stream was reset, closed under us, or timed out mid-operation."""


class MessageTooLarge(GossipError):
    """A gossip message or frame exceeds its size limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds limit of {limit} bytes")
        self.size, self.limit = size, limit


class InvalidMessage(GossipError):
    """Bytes from the network that do not decode to a valid message (a REJECT)."""


class UnknownVersion(InvalidMessage):
    """An envelope with a schema version we do not speak."""
