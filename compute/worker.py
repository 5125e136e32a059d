"""Compute worker processes: a job runs in a pre-started child process instead of a daemon thread.

Why: a training loop in a thread of the daemon shares the GIL with the event loop (gossip,
consensus, the API), so the two run their Python in turns and the job waits whenever the
loop holds the lock. In a process of its own the job runs beside the daemon; and a job that
crashes its interpreter, or ignores its cancel flag, takes down only the worker, never the
daemon (a worker still busy CANCEL_GRACE_S after its cancel is killed).

`call(fn, args, ...)` is blocking: the Executor's worker thread (runner.py) makes it, so the
Executor's concurrency limit, progress coalescing and cancellation work as for thread jobs.
Idle workers are kept in a process-wide cache (like a thread cache) and reused; `prestart()`
starts one ahead of the first job (a fresh worker imports torch and warms it up: seconds).

Wire (pickled tuples over a socket pair, multiprocessing.connection framing):
  parent -> worker  ("init", fn, args, modules) once (set_initializer: e.g. the daemon's logging;
                    prestart's modules to import), then
                    ("run", n, fn, args): job number n, fn a module-level function called as
                    fn(*args, cancel=flag, progress=progress, emit=emit); ("cancel", n)
  worker -> parent  ("ready",) once, then per job any number of ("progress", done, total) and
                    ("event", obj) (emit: e.g. checkpoint states), then ("done", result) or
                    ("error", exception type, message, attributes)
The worker's messages go out from a sender thread of its own, in order, so writing a big
state to the pipe does not hold up the computation; a reader thread takes the parent's, so a
cancel reaches the running job's flag at once. Exceptions travel as type, message and
attributes, so a ComputeError subclass with its own __init__ arrives intact.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from compute.errors import ComputeError, JobCancelled

CANCEL_GRACE_S = 10.0  # a cancelled job still running this long after is killed with its worker
POLL_S = 0.05  # how often a waiting caller looks at its cancel flag
SEND_AHEAD = 4  # worker messages queued for its sender thread at most
PARENT_CHECK_S = 1.0  # how often a worker checks that its daemon is still alive

OnEvent = Callable[[Any], None]
Init = tuple[Callable[..., Any], tuple[Any, ...]]  # run first in every worker (e.g. the daemon's logging)


class WorkerCrashed(ComputeError):
    """The worker process died during a job (killed, out of memory, a crash in native code)."""


class _Sender:
    """The worker's sender thread: messages leave in the order they are queued."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue(SEND_AHEAD)
        threading.Thread(target=self._run, name="worker-sender", daemon=True).start()

    def __call__(self, *message: Any) -> None:
        self._queue.put(message)

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the parent is gone
                os._exit(0)
            except Exception as e:  # it does not pickle
                if message[0] != "done":
                    os._exit(1)  # the job goes on, the parent could not tell its messages apart: crash
                self._conn.send(_portable(ComputeError(f"the job's result cannot be sent: {e}")))


def _portable(e: BaseException) -> tuple[Any, ...]:
    """("error", type, message, attributes) that unpickle in the parent, else a ComputeError's."""
    message = f"{e}" or type(e).__name__
    try:
        attrs = dict(vars(e))
        pickle.loads(pickle.dumps((type(e), attrs)))
    except Exception:
        return ("error", ComputeError, f"{type(e).__name__}: {message}", {})
    return ("error", type(e), message, attrs)


def _rebuilt(kind: type[BaseException], message: str, attrs: dict[str, Any]) -> BaseException:
    """The exception a worker raised, built without its own __init__ (whose arguments differ)."""
    try:
        e = kind.__new__(kind)
        BaseException.__init__(e, message)
        e.__dict__.update(attrs)
    except Exception:
        return ComputeError(f"{kind.__name__}: {message}")
    return e


def _watch_parent(parent: int) -> None:
    """Exit once the daemon that started us is gone (it may have been killed, not stopped)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


class _Jobs:
    """The worker's side of the pipe: a reader thread takes the parent's messages; jobs wait in
    a queue for the main thread, and a cancel sets the flag of the job it names (also when
    it comes before that job has started)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cancel = threading.Event()  # the running job's flag
        self._lock = threading.Lock()
        self._current: int | None = None
        self._cancelled: set[int] = set()
        self._queue: queue.Queue[tuple[int, Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue()
        threading.Thread(target=self._read, name="worker-reader", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self._queue.put(None)  # the parent closed the pipe: it is done with us
                return
            if message[0] == "run":
                self._queue.put(message[1:])
            elif message[0] == "cancel":
                with self._lock:
                    self._cancelled.add(message[1])
                    if self._current == message[1]:
                        self.cancel.set()

    def next(self) -> tuple[Callable[..., Any], tuple[Any, ...]] | None:
        """The next job (its cancel flag set up), or None once the parent is gone."""
        item = self._queue.get()
        if item is None:
            return None
        number, fn, args = item
        with self._lock:
            self._current = number
            if number in self._cancelled:
                self.cancel.set()
            else:
                self.cancel.clear()
            self._cancelled = {n for n in self._cancelled if n > number}
        return fn, args


def serve(fd: int, parent: int) -> None:
    """The worker process: run the parent's jobs until it closes the pipe (or is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle; it stops us
    threading.Thread(target=_watch_parent, args=(parent,), name="worker-watch", daemon=True).start()
    conn = Connection(fd)
    _, init, init_args, preload = conn.recv()
    if init is not None:
        init(*init_args)
    from compute.models import warm_up

    warm_up()  # torch's first-call costs, paid before the first job
    for name in preload:  # and the imports its first job would make
        importlib.import_module(name)
    send = _Sender(conn)
    send("ready")
    jobs = _Jobs(conn)
    while (job := jobs.next()) is not None:
        fn, args = job

        def progress(done: int, total: int) -> None:
            send("progress", done, total)

        def emit(obj: Any) -> None:
            send("event", obj)

        try:
            result = fn(*args, cancel=jobs.cancel, progress=progress, emit=emit)
        except Exception as e:
            send(*_portable(e))
        else:
            send("done", result)


class _Worker:
    """One worker process, seen from the daemon (used by one caller at a time).

    Started as a plain `python -c` process on one end of a socket pair rather than with
    multiprocessing, which would re-run the daemon's main module in it.
    """

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        ours, theirs = socket.socketpair()
        code = f"from compute.worker import serve; serve({theirs.fileno()}, {os.getpid()})"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # import what we do
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send(("init", *(_init or (None, ())), preload))
        self.busy = False  # a job was sent and its end not yet received
        self._jobs = 0

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self.conn.close()

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        cancel: threading.Event,
        progress: Callable[[int, int], None] | None,
        on_event: OnEvent | None,
        grace: float,
    ) -> Any:
        """Run fn(*args) here; see the module docstring. Kills the worker when it must be given up."""
        self._jobs += 1
        self.busy = True
        try:
            self.conn.send(("run", self._jobs, fn, args))
        except (OSError, ValueError) as e:
            self.kill()
            raise WorkerCrashed(f"the compute worker is gone: {e}") from None
        cancelled_at: float | None = None
        failure: BaseException | None = None  # raised by our own callback: the job is stopped for it
        while True:
            if cancelled_at is None and (cancel.is_set() or failure is not None):
                cancelled_at = time.monotonic()
                with contextlib.suppress(OSError):
                    self.conn.send(("cancel", self._jobs))
            if cancelled_at is not None and time.monotonic() - cancelled_at > grace:
                self.kill()
                if failure is not None:
                    raise failure
                raise JobCancelled(0)
            try:
                if not self.conn.poll(POLL_S):
                    if not self.alive():
                        raise EOFError
                    continue
                message = self.conn.recv()
            except (EOFError, OSError):
                self.kill()
                code = self.process.returncode
                raise WorkerCrashed(f"the compute worker died during the job (exit code {code})") from None
            kind = message[0]
            self.busy = kind not in ("done", "error")
            if kind == "done":
                if failure is not None:
                    raise failure
                return message[1]
            if kind == "error":
                raise failure or _rebuilt(*message[1:])
            if failure is not None or kind == "ready":
                continue
            try:
                if kind == "progress" and progress is not None:
                    progress(message[1], message[2])
                elif kind == "event" and on_event is not None:
                    on_event(message[1])
            except Exception as e:  # stop the job, keep the worker
                failure = e


_idle: list[_Worker] = []
_idle_lock = threading.Lock()
_init: Init | None = None


def set_initializer(fn: Callable[..., Any], *args: Any) -> None:
    """Have every worker started from now on run fn(*args) first (a module-level function)."""
    global _init
    _init = (fn, args)


def _take() -> _Worker:
    with _idle_lock:
        while _idle:
            worker = _idle.pop()
            if worker.alive():
                return worker
            worker.kill()
    return _Worker()


def _give_back(worker: _Worker) -> None:
    """Keep an idle worker for the next job; one still busy with a job we gave up is killed."""
    if worker.busy or not worker.alive():
        worker.kill()
        return
    with _idle_lock:
        _idle.append(worker)


def prestart(*preload: str) -> None:
    """Start a worker now unless one is idle already. It warms torch up in the background and
    imports the modules named in `preload` (those of the functions it will be called with)."""
    with _idle_lock:
        if any(w.alive() for w in _idle):
            return
    _give_back(_Worker(preload))


def call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    cancel: threading.Event,
    progress: Callable[[int, int], None] | None = None,
    on_event: OnEvent | None = None,
    grace: float = CANCEL_GRACE_S,
) -> Any:
    """fn(*args, cancel=, progress=, emit=) in a worker process; blocking (call it from a thread).

    `progress` and `on_event` run in the calling thread. If one of them raises, the job is
    cancelled and that exception raised once the worker has stopped. A job still running
    `grace` seconds after it was cancelled is killed with its worker.

    Raises:
        JobCancelled: `cancel` was set (the worker is killed if the job does not stop in time).
        WorkerCrashed: the worker process died.
        Whatever fn raised (rebuilt: same type, message and attributes).
    """
    worker = _take()
    try:
        return worker.call(fn, args, cancel, progress, on_event, grace)
    finally:
        _give_back(worker)
