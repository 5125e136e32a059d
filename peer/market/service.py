"""MarketService: the compute market of one peer (blob store, executor, solver and submitter agents).

Tasks (all in `serve`'s nursery):
- the owner task (`_owner`): the only writer of the announcement book and of the local model
  index. It takes, one at a time, the market messages the daemon hands over from the tasks
  topic (`deliver`) and model records from `register_model` (models.py);
- the height watch (chain.py), which the agents wait on for new committed states;
- the solver actor and the submitter actor (and their per-job tasks);
- the dispute defender (defender.py), which answers disputes over jobs this peer solved;
- the checking agents: verifier (spot checks, when enabled), challenger (its disputes), referee
  (committees it is drawn into), canaries (on the jobs it submits) and voter (reputation votes);
- a loop re-announcing the models this peer serves, so late joiners learn where they are.

Blobs live in `<home>/data/blobs` (gossip.blobs.BlobStore) and are served to any peer over
the blob protocol; only sealed inputs, never plaintext ones, are put there. Two
request/response protocols serve verifiers: checkpoint states of the jobs this peer solved
(checkpoints.py, `/hivemesh/market/checkpoint/1`) and the private inputs of the jobs it
submitted, sealed to the requester (inputs.py, `/hivemesh/market/input/1`). Blocking work
(hashing, torch decoding, disk) runs in worker threads behind a limiter; jobs run on the
compute Executor (one at a time).

Error handling: requests raise MarketError subclasses (one line each); a malformed market
message never gets here (the topic validator rejects it); a failure inside an agent's job is
recorded on that job and logged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import structlog
import trio

from compute import worker
from compute.errors import ComputeError
from compute.jobs import JobSpec, decode_job
from compute.models import Model, warm_up
from compute.runner import Executor
from gossip.blobs import BlobError, BlobExchange, BlobStore
from gossip.envelope import Envelope
from gossip.errors import GossipError
from gossip.identity import Identity
from gossip.node import GossipNode
from gossip.topics import TOPIC_TASKS
from gossip.transport import Transport
from peer.ledger_service import LedgerService
from peer.market import checkpoints, inputs, quotes, solving, wire
from peer.market.behaviours import VerifierBehaviour
from peer.market.book import Book
from peer.market.bundles import open_model_bundle
from peer.market.canaries import CanaryAgent
from peer.market.chain import HeightWatch, MarketLedger
from peer.market.challenger import Challenger
from peer.market.checkpoints import CheckpointStore
from peer.market.defender import Defender
from peer.market.errors import MarketError, Unavailable
from peer.market.models import ModelIndex, list_models, register_model
from peer.market.referee import Referee
from peer.market.sealed import public_bytes, x25519_key
from peer.market.solver import Solver, SolverPolicy
from peer.market.submitter import Submitter
from peer.market.verifier import Verifier
from peer.market.voter import Voter

log = structlog.get_logger(__name__)

R = TypeVar("R")
EVENTS_SIZE = 4096
MODEL_REANNOUNCE_S = 30.0
WORKER_THREADS = 4
DIAL_ATTEMPTS = 3
DIAL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class _RecordModel:
    model_hash: str
    entry: dict[str, Any]
    reply: trio.MemorySendChannel[str]  # "" or why the index could not be written


class MarketService:
    """The market agents of one peer over its gossip node, transport and ledger."""

    def __init__(
        self,
        *,
        identity: Identity,
        transport: Transport,
        gossip: GossipNode,
        ledger: LedgerService,
        data_dir: Path,
        policy: SolverPolicy,
        own_addrs: Callable[[], list[str]] = list,
        known_addrs: Callable[[str], Sequence[str]] = lambda peer: (),
        verifier: bool = False,
        verifier_behaviour: str = "honest",
        verifier_min_rate_bps: int = 0,
    ) -> None:
        self.identity, self.transport, self.gossip = identity, transport, gossip
        self.data_dir = data_dir  # the agents' journals live under data_dir/market (journal.py)
        self._own_addrs, self._known_addrs = own_addrs, known_addrs
        self.ledger = MarketLedger(ledger)
        self.watch = HeightWatch(self.ledger)
        self.book = Book()
        self.store = BlobStore(data_dir / "blobs")
        self.exchange = BlobExchange(transport, self.store, on_misbehaviour=gossip.penalize)
        self.executor = Executor(max_concurrent=1)
        self.models = ModelIndex(data_dir / "market" / "models.json")
        self.checkpoints = CheckpointStore(self.store, data_dir / "market" / "checkpoints")
        self.x25519 = x25519_key(identity)
        self.encryption_key = public_bytes(self.x25519)
        self.verifier_enabled = verifier  # run the verifier agent (needs the "verifier" role too)
        self.verifier_behaviour = VerifierBehaviour(verifier_behaviour)
        self.solver = Solver(self, policy)
        self.defender = Defender(self)
        self.submitter = Submitter(self)
        self.canaries = CanaryAgent(self, data_dir / "market" / "canaries.json")
        self.voter = Voter(self)
        self.challenger = Challenger(self)
        self.referee = Referee(self)
        self.verifier = Verifier(
            self,
            self.challenger,
            enabled=verifier,
            behaviour=self.verifier_behaviour.name,
            voter=self.voter,
            min_rate_bps=verifier_min_rate_bps,
        )
        self._threads = trio.CapacityLimiter(WORKER_THREADS)
        self._events_send, self._events = trio.open_memory_channel[object](EVENTS_SIZE)
        gossip.rpc.set_handler(
            checkpoints.PROTOCOL, checkpoints.make_handler(self), max_request=checkpoints.MAX_REQUEST
        )
        gossip.rpc.set_handler(inputs.PROTOCOL, inputs.make_handler(self), max_request=inputs.MAX_REQUEST)
        gossip.rpc.set_handler(quotes.PROTOCOL, quotes.make_handler(self), max_request=quotes.MAX_REQUEST)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every market task until cancelled; `started()` once messages are being taken."""
        self._warn_test_behaviours()
        await self._warm_up()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watch.run)
            nursery.start_soon(self.solver.run)
            nursery.start_soon(self.defender.run)
            nursery.start_soon(self.submitter.run)
            for agent in (self.canaries, self.voter, self.challenger, self.referee, self.verifier):
                nursery.start_soon(agent.run)
            nursery.start_soon(self._reannounce_models)
            task_status.started()
            await self._owner()

    async def _warm_up(self) -> None:
        """compute.models.warm_up in a worker thread, before any agent can touch torch: torch's
        lazy imports are not safe to run in two threads at once (a circular import then fails)."""
        try:
            if self.solver.policy.enabled:  # its jobs run in a compute worker process: start one now
                await trio.to_thread.run_sync(worker.prestart, solving.__name__)
            await trio.to_thread.run_sync(warm_up, abandon_on_cancel=True)
        except Exception as e:  # a slower first job, not a reason to stop the market
            log.warning("torch warm-up failed", error=repr(e))

    def _warn_test_behaviours(self) -> None:
        if not self.solver.behaviour.honest:
            log.warning("TEST BEHAVIOUR: this solver departs from honest work on purpose",
                        behaviour=self.solver.behaviour.name)  # fmt: skip
        if not self.verifier_behaviour.honest:
            log.warning(
                "TEST BEHAVIOUR: this verifier cheats on purpose", behaviour=self.verifier_behaviour.name
            )

    def close(self) -> None:
        """Close the blob store; only once nothing serves blobs any more (the daemon's nursery is done)."""
        self.store.close()

    async def deliver(self, envelope: Envelope) -> None:
        """A market message from the tasks topic (already validated by wire.validate_envelope)."""
        await self._events_send.send(envelope)

    async def _owner(self) -> None:
        async for event in self._events:
            match event:
                case Envelope():
                    self._on_envelope(event)
                case _RecordModel(model_hash=model_hash, entry=entry, reply=reply):
                    try:
                        self.models.put(model_hash, entry)
                    except OSError as e:
                        reply.send_nowait(f"cannot write the model index {self.models.path}: {e}")
                    else:
                        reply.send_nowait("")

    def _on_envelope(self, envelope: Envelope) -> None:
        try:
            note = wire.parse(envelope.kind, envelope.body)
        except wire.WireError:
            return  # validated on the way in; only our own odd publishes could get here
        if self.book.add(note, envelope.author_id) and isinstance(note, wire.JobNote):
            self.solver.notify(note)

    async def record_model(self, model_hash: str, entry: dict[str, Any]) -> None:
        """Add a model to the local index (through the owner task) and announce it."""
        reply_send, reply = trio.open_memory_channel[str](1)
        await self._events_send.send(_RecordModel(model_hash, entry, reply_send))
        problem = await reply.receive()
        if problem:
            raise MarketError(problem, status=500, code="local_storage")
        await self.publish(wire.ModelNote(model_hash, entry["blob"], entry["arch"], entry["size"]))

    async def _reannounce_models(self) -> None:
        while True:
            await trio.sleep(MODEL_REANNOUNCE_S)  # pacing, not synchronisation
            for model_hash, entry in self.models.items():
                await self.publish(wire.ModelNote(model_hash, entry["blob"], entry["arch"], entry["size"]))

    # ---- helpers for the agents --------------------------------------------------------------

    async def in_thread(self, fn: Callable[..., R], *args: Any) -> R:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._threads)

    async def publish(self, note: wire.Note) -> None:
        """Gossip a note on the tasks topic with our dialable addresses (best effort: logged on failure)."""
        own = [a for a in self._own_addrs() if a.endswith(f"/p2p/{self.identity.peer_id}")]
        kind, body = wire.encode(replace(note, addrs=tuple(own[: wire.MAX_ADDRS])))
        try:
            await self.gossip.publish(TOPIC_TASKS, kind, body)
        except GossipError as e:  # best effort: every announcement is repeated while it matters
            log.info("market publish failed", kind=kind, error=str(e))

    async def put_blob(self, data: bytes) -> str:
        return await self.in_thread(self.store.put_bytes, data)

    async def read_blob(self, blob_id: str) -> bytes:
        return await self.in_thread(self.store.read, blob_id)

    async def fetch_blob(self, blob_id: str, preferred: list[str], max_size: int | None = None) -> bytes:
        """The blob's bytes: ours, or fetched from `preferred` peers first, then every connected one.
        `max_size`: the size the caller expects at most (e.g. a job's committed result size); a blob
        announced larger is refused before anything is fetched.

        Raises BlobError (FetchFailed, BlobTooLarge) when no peer serves it within the limits.
        """
        me = self.identity.peer_id
        if not await self.in_thread(self.store.has, blob_id):
            connected = set(self.transport.connected_peers())
            for peer in dict.fromkeys(preferred):
                if peer != me and peer not in connected:
                    await self._dial(peer)
        others = sorted(set(self.transport.connected_peers()) - {me})
        peers = list(dict.fromkeys([p for p in preferred if p != me] + others))
        path = await self.exchange.fetch(blob_id, peers, max_size=max_size)
        return await self.in_thread(path.read_bytes)

    async def ensure_connected(self, peer: str) -> None:
        """Dial `peer` unless already connected (best effort: a request to it then says why not)."""
        if peer != self.identity.peer_id and peer not in set(self.transport.connected_peers()):
            await self._dial(peer)

    async def _dial(self, peer: str) -> None:
        """Connect to `peer` through the addresses it announced or peer exchange learned (best effort)."""
        addrs = [*self.book.addrs.get(peer, ()), *self._known_addrs(peer)]
        for addr in list(dict.fromkeys(addrs))[:DIAL_ATTEMPTS]:
            try:
                if await self.transport.connect(addr, timeout=DIAL_TIMEOUT_S) == peer:
                    return
            except GossipError as e:
                log.debug("market dial failed", peer=peer, addr=addr, error=str(e))

    async def load_spec(self, spec_blob: str, job: dict[str, Any]) -> JobSpec:
        """The job's spec from its blob, checked against the ledger's record. Raises MarketError."""
        try:
            data = await self.fetch_blob(spec_blob, [job["submitter"]])
        except BlobError as e:
            raise Unavailable(f"cannot get the spec of job {job['job_id']}: {e}") from None
        try:
            spec = await self.in_thread(decode_job, data)
        except ComputeError as e:
            raise MarketError(f"the spec blob of job {job['job_id']} is malformed: {e}") from None
        if (spec.hash, spec.kind, spec.model_hash) != (job["spec_hash"], job["kind"], job["model_hash"]):
            raise MarketError(f"the spec blob of job {job['job_id']} is not the spec the ledger names")
        return spec

    async def load_model(self, model_hash: str, blob_id: str, preferred: list[str]) -> Model:
        """The model from its bundle blob (fetched if needed), checked against its hash."""
        sources = [peer for peer, _ in self.book.model_sources(model_hash)]
        try:
            data = await self.fetch_blob(blob_id, [*preferred, *sources])
        except BlobError as e:
            raise Unavailable(f"cannot get model {model_hash}: {e}") from None
        return await self.in_thread(open_model_bundle, data, model_hash)

    async def register_model(self, spec: Any, weights_path: str, royalty_bps: int) -> dict[str, Any]:
        return await register_model(self, spec, weights_path, royalty_bps)

    def list_models(self) -> list[dict[str, Any]]:
        return list_models(self)

    def status(self) -> dict[str, Any]:
        stats = self.exchange.stats
        return {
            "ready": True,
            "address": self.ledger.address,
            "encryption_key": self.encryption_key.hex(),
            "height": self.ledger.height,
            "solver": self.solver.status(),
            "checkpoints_kept": len(self.checkpoints.jobs()),
            "dispute_moves": [asdict(m) for m in self.defender.moves[-20:]],
            "submitted": len(self.submitter.jobs),
            "models_served": len(self.models),
            "executor_running": self.executor.running,
            "blobs": {"bytes_served": stats.bytes_served, "bytes_fetched": stats.bytes_fetched},
        }
