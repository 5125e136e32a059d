"""The peer daemon: one trio nursery that owns every task of a running peer.

`Peer.serve` starts, in order, the libp2p transport, the gossip node, the bootstrap dialer,
peer exchange, one drain task per application gossip topic (tasks, votes: feeding the received
log), the ledger when the home has a genesis (a `LedgerNode` over `<home>/data/ledger.sqlite`;
it owns the tx and consensus topics) with the compute market (`peer.market`: it drains the
tasks topic into the log, loads torch off the event loop, serves blobs from
`<home>/data/blobs`) and the local HTTP API, then reports a `RunInfo`.
`run_daemon` adds what a process needs around it (the CLI has already validated the config
and loaded the key; it reads the home's genesis.json here): logging, the home lock,
run.json, the start-up banner, and SIGINT/SIGTERM handling (first signal: cancel the root
nursery, which closes the host, releases the ports and removes run.json, exit code 0;
second signal: exit at once).

Error handling: problems the operator can fix (port in use, bad config, unreadable key)
surface as `PeerError` with one readable line; anything else propagates.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil
import trio
from prometheus_client import CollectorRegistry
from structlog.stdlib import BoundLogger

from compute import worker
from gossip.dialer import Dialer
from gossip.errors import GossipError
from gossip.identity import Identity
from gossip.libp2p_transport import Libp2pTransport
from gossip.node import GossipNode
from gossip.peerexchange import PeerExchange
from gossip.topics import TOPIC_TASKS, TOPIC_VOTES
from ledger.consensus import TimeoutConfig
from ledger.errors import LedgerError
from ledger.genesis import Genesis
from ledger.node import LedgerNode
from ledger.store import LedgerStore
from peer.api import ApiApp, serve_api
from peer.config import Config, parse_host_port
from peer.errors import PeerError
from peer.genesis_file import home_genesis
from peer.home import Home, RunInfo, daemon_lock, remove_run_info, write_run_info
from peer.ledger_api import LedgerRoutes
from peer.ledger_service import LedgerService
from peer.logs import configure_logging, get_logger
from peer.market.api import MarketRoutes
from peer.market.host import MarketHost
from peer.market.wire import validate_envelope
from peer.metrics import PeerMetrics
from peer.received import ReceivedLog
from peer.version import __version__

# Short names used by the API and the CLI ("tasks") for the gossip topics the daemon logs and
# publishes on. The ledger subscribes to the tx and consensus topics itself (one subscriber each).
TOPICS: dict[str, str] = {
    "tasks": TOPIC_TASKS,
    "votes": TOPIC_VOTES,
}
JOIN_HINT = "to connect other peers use: --bootstrap"


def dialable_addrs(addrs: list[str]) -> list[str]:
    """Replace wildcard hosts (0.0.0.0, ::) by this machine's interface addresses."""
    out: list[str] = []
    for addr in addrs:
        parts = addr.split("/")  # ["", "ip4", "0.0.0.0", "tcp", "4001", "p2p", id]
        if len(parts) > 2 and parts[1] in ("ip4", "ip6") and ipaddress.ip_address(parts[2]).is_unspecified:
            family = 4 if parts[1] == "ip4" else 6
            for ip in _interface_ips(family):
                out.append("/".join([*parts[:2], ip, *parts[3:]]))
        else:
            out.append(addr)
    # Loopback last: the first address is the one printed in the join hint.
    return sorted(dict.fromkeys(out), key=lambda a: "/127." in a or "/::1/" in a)


def _interface_ips(family: int) -> list[str]:
    ips = []
    for nics in psutil.net_if_addrs().values():
        for nic in nics:
            try:
                ip = ipaddress.ip_address(nic.address.split("%")[0])
            except ValueError:
                continue
            if ip.version == family and not ip.is_link_local:
                ips.append(str(ip))
    return ips


class Peer:
    """A running peer's components and the read-only view the API needs (`api.PeerView`)."""

    def __init__(
        self,
        config: Config,
        identity: Identity,
        registry: CollectorRegistry | None = None,
        *,
        genesis: Genesis | None = None,
        ledger_path: Path | None = None,
    ) -> None:
        if (genesis is None) != (ledger_path is None):
            raise ValueError("a ledger needs both a genesis and a store path")
        self.config = config
        self.genesis, self.ledger_path = genesis, ledger_path
        self.ledger: LedgerService | None = None
        self.market: MarketHost | None = None
        self.identity = identity
        self.peer_id = identity.peer_id
        self.registry = registry if registry is not None else CollectorRegistry()
        self.log = get_logger("hivemesh.peer", peer_id=self.peer_id)
        self.transport = Libp2pTransport(identity, listen=list(config.listen))
        self.node = GossipNode(self.transport, identity, self.registry, sync_interval=config.sync_interval)
        self.dialer = Dialer(self.transport, list(config.bootstrap))
        self.exchange = PeerExchange(
            self.node, own_addrs=lambda: dialable_addrs(self.transport.listen_addrs())
        )
        self.metrics = PeerMetrics(self.registry, lambda: len(self.transport.connected_peers()))
        self.received_logs = {name: ReceivedLog(name) for name in TOPICS}
        for name, log in self.received_logs.items():
            self.metrics.received.labels(topic=name).set_function(lambda log=log: float(len(log)))
        self.api_address: str | None = None

    async def serve(self, *, task_status: trio.TaskStatus[RunInfo] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every component until cancelled; `nursery.start` returns the RunInfo once all are up."""
        channels = {
            name: self.node.subscribe(topic, validate_envelope if topic == TOPIC_TASKS else None)
            for name, topic in TOPICS.items()
        }
        with ExitStack() as stack:
            if self.genesis is not None and self.ledger_path is not None:
                self.ledger = stack.enter_context(self._open_ledger(self.genesis, self.ledger_path))
                self.market = self._market_host(self.ledger, self.ledger_path.parent)
                stack.callback(self.market.close)  # after the nursery: nothing serves blobs any more
            async with trio.open_nursery() as nursery:
                await nursery.start(self.transport.serve)
                await nursery.start(self.node.serve)
                await nursery.start(self.dialer.serve)
                await nursery.start(self.exchange.serve)
                for name, channel in channels.items():
                    if name == "tasks" and self.market is not None:  # the market drains it into the log
                        await nursery.start(self.market.serve, channel, self.received_logs[name].append)
                        continue
                    nursery.start_soon(self.received_logs[name].drain, channel, name=f"received-log:{name}")
                if self.ledger is not None:
                    await nursery.start(self.ledger.node.serve)
                routes = {**LedgerRoutes(self.ledger).routes(), **MarketRoutes(self.market).routes()}
                api = ApiApp(self, self.log.bind(component="api"), extra_routes=routes)
                self.api_address = await nursery.start(serve_api, api, self.config.api_listen)
                self._started(task_status)

    def _started(self, task_status: trio.TaskStatus[RunInfo]) -> None:
        assert self.api_address is not None
        task_status.started(
            RunInfo(
                pid=os.getpid(),
                peer_id=self.peer_id,
                listen=self.transport.listen_addrs(),
                api=self.api_address,
                version=__version__,
                started_at=time.time(),
            )
        )

    def _market_host(self, ledger: LedgerService, data_dir: Path) -> MarketHost:
        c = self.config
        policy = {
            "enabled": c.solver,
            "price_bps": c.solver_price_bps,
            "min_price": c.solver_min_price,
            "max_jobs": c.solver_max_jobs,
            "behaviour": c.solver_behaviour,
        }
        return MarketHost(
            identity=self.identity,
            transport=self.transport,
            gossip=self.node,
            ledger=ledger,
            data_dir=data_dir,
            policy=policy,
            own_addrs=self.exchange.own_addrs,
            known_addrs=self.exchange.book.addrs,
            options={
                "verifier": c.verifier,
                "verifier_behaviour": c.verifier_behaviour,
                "verifier_min_rate_bps": c.verifier_min_rate_bps,
            },
        )

    @contextmanager
    def _open_ledger(self, genesis: Genesis, path: Path) -> Iterator[LedgerService]:
        """Open the block store and build the ledger node (it subscribes its topics now, before
        the gossip node serves); the store is closed when the peer stops."""
        with ExitStack() as stack:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                store = stack.enter_context(LedgerStore(path))
                reader = LedgerStore(path)  # queries read through their own connection
                stack.callback(reader.close, snapshot=False)
            except LedgerError as e:
                raise PeerError(f"cannot open the ledger store {path}: {e}") from None
            except OSError as e:
                raise PeerError(f"cannot open the ledger store {path}: {e.strerror or e}") from None
            node = LedgerNode(
                self.node,
                self.identity,
                store,
                genesis,
                registry=self.registry,
                timeouts=consensus_timeouts(self.config),
                max_block_txs=self.config.max_block_txs,
            )
            yield LedgerService(node, reader, self.identity, genesis)

    # --- api.PeerView -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        listen = self.transport.listen_addrs()
        return {
            "peer_id": self.peer_id,
            "version": __version__,
            "listen": listen,
            "dialable": dialable_addrs(listen),
            "api": self.api_address,
            "connected_peers": sorted(self.transport.connected_peers()),
            "bootstrap": self.dialer.status(),
            "uptime_s": round(self.metrics.uptime_seconds(), 3),
            "gossip": self.node.stats(),
            "received": {name: len(log) for name, log in self.received_logs.items()},
            "ledger": None if self.ledger is None else {"height": self.ledger.node.height},
            "market": None if self.market is None else self.market.status(),
        }

    def peers(self) -> list[dict[str, Any]]:
        scores = self.node.scores.snapshot()
        return [
            {"peer_id": p, "score": scores.get(p, 0.0), "banned": self.node.scores.is_banned(p)}
            for p in sorted(self.transport.connected_peers())
        ]

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    def topic_names(self) -> list[str]:
        return list(TOPICS)

    async def publish(self, topic: str, kind: str, body: Any) -> dict[str, Any]:
        envelope = await self.node.publish(TOPICS[topic], kind, body)
        self.log.info(
            "published", topic=topic, kind=kind, msg_id=envelope.msg_id.hex()[:16], seq=envelope.seq
        )
        return {"msg_id": envelope.msg_id.hex(), "topic": topic, "kind": kind, "seq": envelope.seq}

    def received(self, topic: str, since: int, limit: int) -> list[dict[str, Any]]:
        return self.received_logs[topic].since(since, limit)


def consensus_timeouts(config: Config) -> TimeoutConfig:
    """Round timeouts from the config: base + round * delta for each step."""
    vote, delta = config.consensus_vote_ms, config.consensus_delta_ms
    return TimeoutConfig(
        propose_ms=config.consensus_propose_ms,
        propose_delta_ms=delta,
        prevote_ms=vote,
        prevote_delta_ms=delta,
        precommit_ms=vote,
        precommit_delta_ms=delta,
        rebroadcast_ms=max(config.consensus_propose_ms, 2 * vote),
        rebroadcast_delta_ms=delta,
    )


def run_daemon(home: Home, config: Config, identity: Identity) -> None:
    """Run a peer in this process until SIGINT/SIGTERM. Raises PeerError for operator errors."""
    genesis = home_genesis(home)  # a bad genesis.json is refused before anything starts
    with daemon_lock(home):
        try:
            trio.run(_main, home, config, identity, genesis)
        finally:
            remove_run_info(home, os.getpid())


async def _main(home: Home, config: Config, identity: Identity, genesis: Genesis | None) -> None:
    configure_logging(config.log_level, config.log_format)
    worker.set_initializer(configure_logging, config.log_level, config.log_format)  # workers log alike
    log = get_logger("hivemesh.peer", peer_id=identity.peer_id)
    try:
        await _run_until_signal(home, config, identity, genesis, log)
    except BaseExceptionGroup as group:
        error = _operator_error(group)
        if error is None:
            raise
        log.error("peer failed", error=str(error))
        log.debug("peer failure details", exc_info=group)
        raise error from None
    log.info("peer stopped")


async def _run_until_signal(
    home: Home, config: Config, identity: Identity, genesis: Genesis | None, log: BoundLogger
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as outer:
            root = trio.CancelScope()
            outer.start_soon(_watch_signals, signals, root, log)
            try:
                with root:
                    async with trio.open_nursery() as nursery:
                        ledger_path = home.ledger_path if genesis is not None else None
                        peer = Peer(config, identity, genesis=genesis, ledger_path=ledger_path)
                        info = await nursery.start(peer.serve)
                        write_run_info(home, info)
                        _announce(info, log)
                        if not _is_loopback(info.api):
                            log.warning(
                                "the API is reachable from other machines and has no authentication",
                                api=info.api,
                            )
            finally:
                outer.cancel_scope.cancel()


async def _watch_signals(signals: AsyncIterator[int], root: trio.CancelScope, log: BoundLogger) -> None:
    count = 0
    async for signum in signals:
        count += 1
        if count == 1:
            log.info("shutting down", signal=signal.Signals(signum).name)
            root.cancel()
        else:
            log.warning("second signal, exiting immediately", signal=signal.Signals(signum).name)
            os._exit(1)


def _is_loopback(host_port: str) -> bool:
    host = parse_host_port(host_port)[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _announce(info: RunInfo, log: BoundLogger) -> None:
    addrs = dialable_addrs(info.listen)
    lines = [f"hivemesh {info.version} peer {info.peer_id} running (pid {info.pid})"]
    lines += [f"  listening on {addr}" for addr in info.listen]
    lines.append(f"  api: http://{info.api}")
    if addrs:
        lines.append(f"{JOIN_HINT} {addrs[0]}")
    print("\n".join(lines), flush=True)
    log.info(
        "peer started", listen=info.listen, api=info.api, join=f"--bootstrap {addrs[0]}" if addrs else None
    )


def _operator_error(group: BaseExceptionGroup) -> PeerError | None:
    """The first error in `group` an operator can act on, as one readable PeerError."""
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif isinstance(exc, PeerError):
            return exc
        elif isinstance(exc, OSError):
            hint = "" if exc.filename else " (check the --listen and --api addresses)"
            return PeerError(f"peer stopped: {exc}{hint}")
        elif isinstance(exc, GossipError):
            return PeerError(f"peer stopped: {exc}")
    return None
