"""Dialer over real libp2p transports: background dialing, redial after drops and restarts."""

from __future__ import annotations

import socket
import time

import multiaddr
import pytest
import trio

from gossip.dialer import Dialer, peer_id_in_address
from gossip.errors import DialError
from gossip.identity import Identity
from gossip.libp2p_transport import Libp2pTransport
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


def port_of(addr: str) -> int:
    return int(multiaddr.Multiaddr(addr).value_for_protocol("tcp"))


def entry(dialer: Dialer, addr: str) -> dict[str, object]:
    [found] = [s for s in dialer.status() if s["addr"] == addr]
    return found


def test_peer_id_in_address() -> None:
    pid = Identity.generate().peer_id
    assert peer_id_in_address(f"/ip4/1.2.3.4/tcp/4001/p2p/{pid}") == pid
    assert peer_id_in_address(f"/memory/{pid}") == pid
    assert peer_id_in_address("/ip4/1.2.3.4/tcp/4001") is None
    assert peer_id_in_address("garbage") is None


async def test_start_is_immediate_and_dead_addresses_fail_quietly() -> None:
    with socket.socket() as hole, socket.socket() as closed:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)  # accepts TCP, never speaks
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        dead = f"/ip4/127.0.0.1/tcp/{closed.getsockname()[1]}/p2p/{Identity.generate().peer_id}"
        silent = f"/ip4/127.0.0.1/tcp/{hole.getsockname()[1]}/p2p/{Identity.generate().peer_id}"
        async with trio.open_nursery() as nursery:
            a, b = Libp2pTransport(Identity.generate()), Libp2pTransport(Identity.generate())
            await nursery.start(a.serve)
            await nursery.start(b.serve)
            good = b.listen_addrs()[0]
            dialer = Dialer(a, [dead, silent, good], min_backoff=0.2, max_backoff=1, dial_timeout=1)
            start = time.monotonic()
            await nursery.start(dialer.serve)
            assert time.monotonic() - start < 0.1  # never waits for a dial
            await wait_until(lambda: entry(dialer, good)["connected"], timeout=10)
            assert entry(dialer, good)["peer_id"] == b.peer_id and entry(dialer, good)["last_error"] is None
            await wait_until(lambda: all(entry(dialer, x)["last_error"] for x in (dead, silent)))
            assert entry(dialer, dead)["connected"] is False
            assert "timed out" in str(entry(dialer, silent)["last_error"])
            assert a.connected_peers() == [b.peer_id]
            nursery.cancel_scope.cancel()


async def test_own_and_duplicate_addresses_are_skipped() -> None:
    async with trio.open_nursery() as nursery:
        a, b = Libp2pTransport(Identity.generate()), Libp2pTransport(Identity.generate())
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        dialer = Dialer(a, [a.listen_addrs()[0], b.listen_addrs()[0], b.listen_addrs()[0], ""])
        assert [s["addr"] for s in dialer.status()] == [b.listen_addrs()[0]]
        nursery.cancel_scope.cancel()


async def test_redials_after_remote_drops_the_connection() -> None:
    async with trio.open_nursery() as nursery:
        a, b = Libp2pTransport(Identity.generate()), Libp2pTransport(Identity.generate())
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        dialer = Dialer(a, b.listen_addrs(), min_backoff=0.1, max_backoff=0.5)
        await nursery.start(dialer.serve)
        await wait_until(lambda: b.peer_id in a.connected_peers())
        await b.disconnect(a.peer_id)
        await wait_until(lambda: b.peer_id not in a.connected_peers(), timeout=5)
        await wait_until(lambda: dialer.status()[0]["connected"], timeout=10)  # dialed again
        assert a.peer_id in b.connected_peers()
        nursery.cancel_scope.cancel()


async def test_reconnects_after_remote_restarts_with_same_identity() -> None:
    remote_identity = Identity.generate()
    async with trio.open_nursery() as nursery:
        a = Libp2pTransport(Identity.generate())
        await nursery.start(a.serve)

        async with trio.open_nursery() as remote_nursery:
            b = Libp2pTransport(remote_identity)
            await remote_nursery.start(b.serve)
            addr = b.listen_addrs()[0]
            dialer = Dialer(a, [addr], min_backoff=0.1, max_backoff=0.5, dial_timeout=2.0)
            await nursery.start(dialer.serve)
            await wait_until(lambda: dialer.status()[0]["connected"])
            remote_nursery.cancel_scope.cancel()  # the remote goes away

        await wait_until(lambda: not dialer.status()[0]["connected"], timeout=5)
        # While it is down, dials fail (and libp2p would block the peer for 60 s after that).
        await wait_until(lambda: dialer.status()[0]["last_error"] is not None, timeout=10)

        async with trio.open_nursery() as remote_nursery:
            # Same identity, same port: the configured address works again and is redialled at once.
            b2 = Libp2pTransport(remote_identity, [f"/ip4/127.0.0.1/tcp/{port_of(addr)}"])
            await remote_nursery.start(b2.serve)
            await wait_until(lambda: dialer.status()[0]["connected"], timeout=10)
            assert dialer.status()[0]["last_error"] is None
            assert a.connected_peers() == [remote_identity.peer_id]

            # And gossip flows again over the new connection.
            sub = await a.subscribe("hivemesh/test/1")
            await b2.subscribe("hivemesh/test/1")
            with trio.fail_after(10):
                for i in range(100):
                    await b2.publish("hivemesh/test/1", b"after restart %d" % i)
                    with trio.move_on_after(0.2):
                        msg = await sub.receive()
                        assert msg.forwarder == remote_identity.peer_id
                        break
                else:
                    pytest.fail("no gossip from the restarted peer")
            remote_nursery.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


async def test_reaches_a_peer_restarted_on_a_new_port_despite_earlier_failures() -> None:
    # A bootstrap address pins a port. A remote that comes back elsewhere is reached through
    # its new address at once, although libp2p has blocked its id and still holds the old one.
    remote_identity = Identity.generate()
    async with trio.open_nursery() as nursery:
        a = Libp2pTransport(Identity.generate())
        await nursery.start(a.serve)
        async with trio.open_nursery() as remote_nursery:
            b = Libp2pTransport(remote_identity)
            await remote_nursery.start(b.serve)
            old = b.listen_addrs()[0]
            await a.connect(old)
            remote_nursery.cancel_scope.cancel()
        await wait_until(lambda: a.connected_peers() == [], timeout=5)
        with pytest.raises(DialError):
            await a.connect(old, timeout=3)  # the peer id now sits in libp2p's 60 s negative cache
        async with trio.open_nursery() as remote_nursery:
            b2 = Libp2pTransport(remote_identity)
            await remote_nursery.start(b2.serve)
            assert port_of(b2.listen_addrs()[0]) != port_of(old)
            dialer = Dialer(a, b2.listen_addrs(), min_backoff=0.1, max_backoff=0.5)
            await nursery.start(dialer.serve)
            await wait_until(lambda: dialer.status()[0]["connected"], timeout=10)
            remote_nursery.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
