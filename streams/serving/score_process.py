"""The score process: a worker's scoring runs in a process of its own.

The worker's event loop (ingestion, the tables, HTTP) and the score function
are both Python; in one process they share one GIL. Measured under
``feedrank bench rpc`` (2 cores, 2,000 events/s, 500 candidates), a score
thread beside the loop spent 7.0 to 8.0 ms of CPU per request (5.8 alone)
and its p99 in the worker was 20 ms: each time it wanted the GIL back (after
every torch call, every numpy call that releases it) it queued behind the
loop. In a process of its own the same function has nothing to queue
behind.

The two talk over one socket pair, one call at a time, with
``multiprocessing.Connection``'s framing (a 4-byte length, then a pickle).
The parent's end is an asyncio stream on the worker's event loop: a call is
written and its answer read by the loop itself, with no thread in between
(``concurrent.futures.ProcessPoolExecutor`` passes each call through two
threads of the worker, each queueing for the GIL: 1 ms at p50 and 5 ms at
p99 of waiting before the child started).

The parent (``ScoreProcess``) sends each request as one pickled payload:
the request body as received (the child parses it again into columns,
``parse_score_columns``), the user's state with the sequence as its
blob (``EncodedUserState``; pickled in the loop's thread, so the live
sequence may change right after), and the feedback snapshot. The child
answers with the response encoded but for the two fields the worker sets
(``features.rpc.ResponseBody``), the encoded prediction log and its clocks. The
child also receives every calibrator hot swap and model reload the parent
makes, in order: one process works through its queue first in, first out,
so a request submitted after a swap is scored with the swapped-in set.

If the child dies or a call outlives its timeout (the child is then killed),
the request answers 503 (retry) and a new child is started with the current
calibrators. The child gets SIGTERM when the worker exits, however it exits
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

#: least time between two starts of a score process
RESTART_BACKOFF_S = 5.0
#: a call that takes longer than this kills the child (it is stuck), and the call answers 503
CALL_TIMEOUT_S = 30.0
#: how long a child may take to start (import torch, load the model and calibrators)
START_TIMEOUT_S = 300.0

_LENGTH = struct.Struct("!i")  # multiprocessing.Connection's frame header


class ScoreUnavailable(RuntimeError):
    """The score process cannot score right now (starting, restarting, or has no model): retry."""


# -- the child -----------------------------------------------------------------------------
def _renice(nice: int) -> None:
    """Run at ``nice`` (a negative one needs CAP_SYS_NICE; without it stay at the worker's and say so)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice == current:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        log.warning("score process stays at nice %d, not %d (%s): give the worker CAP_SYS_NICE, or set "
                    "FEEDRANK_SCORE_NICE=%d to silence this", current, nice, exc.strerror, current)


def _child(settings, conn) -> None:  # pragma: no cover - runs in the spawned process (tests/test_score_process.py)
    """The score process: load, say hello, then answer calls until the worker goes away."""
    from features.rpc import parse_score_columns
    from scorer.heap import release_free_heap

    from streams.kafka.procutil import pdeathsig
    from streams.serving.loopmon import tune_runtime
    from streams.serving.model_slot import ModelSlot, thread_clock

    pdeathsig()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the worker, and the worker stops us
    _renice(settings.score_nice)
    import torch

    from scorer.threads import pick_score_threads

    torch.set_num_threads(pick_score_threads(settings.score_threads))
    serving = ModelSlot(settings)
    serving.reload()
    tune_runtime()  # as in the worker: heap pages kept, the loaded model frozen out of the collector's way

    def score(payload):
        c0, t0 = thread_clock(), time.perf_counter()
        body, user, feedback = payload
        if serving.scorer is None:
            raise ScoreUnavailable(f"no model in the score process: {serving.load_error}")
        spec = serving.scorer.model.spec  # all the model reads of the history: its newest actions and hides
        scored, encoded, _, _, _, _ = serving.score_and_encode(parse_score_columns(body),
                                                               user.decode(spec.seq_len, spec.hide_len), feedback)
        t1, c1 = time.perf_counter(), thread_clock()
        return scored.body, encoded, t0, t1, (c1[0] - c0[0]) / 1e9, (c1[1] - c0[1]) / 1e9

    def reload(_):
        serving.reload()
        return serving.model_version

    ops: dict[str, Callable[[Any], Any]] = {"score": score, "install": serving.install_calibrators, "reload": reload}
    conn.send_bytes(pickle.dumps((True, serving.model_version)))
    trim_s, trimmed = settings.heap_trim_interval_s, time.monotonic()
    while True:
        if trim_s > 0 and time.monotonic() - trimmed >= trim_s:  # between calls, as the worker does on its own
            release_free_heap()
            trimmed = time.monotonic()
        try:
            op, arg = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the worker is gone
        try:
            reply = (True, ops[op](arg))
        except Exception as exc:
            reply = (False, exc)
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an exception that does not pickle still reaches the caller as text
            data = pickle.dumps((False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} ({exc})")))
        conn.send_bytes(data)


# -- the parent ----------------------------------------------------------------------------
class ScoreProcess:
    """The worker's handle on its score process (use from the event loop; ``reload`` from any thread)."""

    def __init__(self, settings, calibrators: Callable[[], Any] = lambda: None,
                 on_version: Callable[[str | None], None] = lambda version: None) -> None:
        """``calibrators``: the parent's current calibrator set, given to every child it starts.

        ``on_version``: called with the model version the child serves each time
        that is known anew (its hello, each reload); on the loop's thread or the
        reloading one.
        """
        self.settings = settings
        self.calibrators = calibrators
        self.on_version = on_version
        self.restarts = 0
        self.model_version: str | None = None
        self._proc: Any = None
        self._conn: Any = None  # the parent's end, until the event loop wraps it in streams
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._hello: asyncio.Task | None = None
        self._last_turn: asyncio.Future | None = None  # done when the call queued last has its answer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_start = 0.0

    def start(self) -> "ScoreProcess":
        """Spawn a child (not fork: the worker has threads); the event loop connects to it on first use."""
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_child, args=(self.settings, child), name="feedrank-score", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn, self._streams, self._hello = proc, parent, None, None
        self._last_start = time.monotonic()
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def ready(self) -> bool:
        """The child has loaded and said hello (call ``poke`` from the loop to start listening for it)."""
        h = self._hello
        return h is not None and h.done() and not h.cancelled() and h.exception() is None

    def poke(self) -> None:
        """From the event loop: start connecting to a started child, if nothing has yet."""
        if self._hello is None and self._conn is not None:
            self._loop = asyncio.get_running_loop()
            self._hello = self._loop.create_task(self._connect(self._conn))
            self._hello.add_done_callback(self._on_hello)

    async def _connect(self, conn) -> str | None:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        self._streams = await asyncio.open_connection(sock=sock, limit=1 << 24)
        _, version = await asyncio.wait_for(self._read(), START_TIMEOUT_S)
        # A model published after the child's spawn and before this hello is loaded now: nothing else
        # would ask the child to reload (the parent's own reload found it not connected yet).
        ok, value = await self._exchange("reload", None, START_TIMEOUT_S)
        if ok:
            version = value
        else:
            log.warning("score process could not load the latest model: %s", value)
        cs = self.calibrators()
        if cs is not None:  # before any queued call: they all wait for this hello
            ok, value = await self._exchange("install", cs, CALL_TIMEOUT_S)
            if not ok:
                log.warning("score process refused calibrators %s#%s: %s", cs.model_version, cs.version, value)
        self.model_version = version
        self.on_version(version)
        return version

    @property
    def connected(self) -> bool:
        """The event loop has started talking to a child (``poke``); ``reload`` then reaches it."""
        return self._loop is not None

    async def _exchange(self, op: str, arg: Any, timeout_s: float) -> tuple[bool, Any]:
        assert self._streams is not None
        data = pickle.dumps((op, arg), protocol=pickle.HIGHEST_PROTOCOL)
        self._streams[1].write(_LENGTH.pack(len(data)) + data)
        return await asyncio.wait_for(self._read(), timeout_s)

    def _on_hello(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("score process (pid %s) did not start: %s: %s", self.pid, type(exc).__name__, exc)
        else:
            version = task.result()
            if version is None:
                log.info("score process (pid %s) up, no model yet: it loads one when published", self.pid)
            else:
                log.info("score process (pid %s) up, serving model %s", self.pid, version)

    async def _read(self) -> tuple[bool, Any]:
        assert self._streams is not None
        reader = self._streams[0]
        (n,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        return pickle.loads(await reader.readexactly(n))

    def call(self, op: str, arg: Any, timeout_s: float = CALL_TIMEOUT_S) -> asyncio.Future:
        """From the event loop: queue one call behind every call queued before it; the future of its answer.

        Its place in the queue is taken now, so a swap queued before a
        request applies to it. Awaiting the answer and giving up on it (a
        client that hangs up) leaves the call to finish: the answer is still
        read, and the stream stays in step.
        """
        self.poke()
        loop = asyncio.get_running_loop()
        prev, turn = self._last_turn, loop.create_future()
        self._last_turn = turn
        task = loop.create_task(self._call(op, arg, timeout_s, prev, turn))
        return asyncio.shield(task)

    async def _call(self, op: str, arg: Any, timeout_s: float, prev: asyncio.Future | None,
                    turn: asyncio.Future) -> Any:
        try:
            if prev is not None:
                await prev
            return await self._call_now(op, arg, timeout_s)
        finally:
            turn.set_result(None)

    async def _call_now(self, op: str, arg: Any, timeout_s: float) -> Any:
        hello = self._hello
        if hello is None:
            raise ScoreUnavailable("no score process started")
        if not hello.done():
            await asyncio.shield(hello)  # the first calls wait for the child to load
        if hello is not self._hello or hello.exception() is not None or self._streams is None:
            self._restart_if_due(f"it did not start: {hello.exception()}")
            raise ScoreUnavailable("the score process is not running (see the worker log); retry")
        try:
            ok, value = await self._exchange(op, arg, timeout_s)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.TimeoutError) as exc:
            self._kill()
            why = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"died ({type(exc).__name__})"
            self._restart_if_due(f"a {op} call {why}")
            raise ScoreUnavailable(f"the score process {why} and is restarting; retry") from None
        if not ok:
            raise value
        return value

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._streams is not None:
            self._streams[1].close()
        self._streams = None

    def _restart_if_due(self, why: str) -> None:
        if time.monotonic() - self._last_start < RESTART_BACKOFF_S:
            return  # a later call restarts it
        self._kill()
        self.restarts += 1
        log.error("score process (pid %s): %s; starting a new one (restart %d)", self.pid, why, self.restarts)
        self.start()
        self.poke()

    async def score(self, body: bytes, user, feedback):
        """(response, encoded prediction log, child start, child end, cpu s, runnable s) of one request."""
        return await self.call("score", (body, user, feedback))

    def install(self, calibrators) -> None:
        """From the event loop: queue a calibrator hot swap (after the calls already queued)."""
        def done(fut: asyncio.Future) -> None:
            exc = None if fut.cancelled() else fut.exception()
            if exc is not None:  # a new child starts with the current set
                log.warning("score process did not take calibrators %s#%s: %s", calibrators.model_version,
                            calibrators.version, exc)

        self.call("install", calibrators).add_done_callback(done)

    def reload(self, timeout_s: float = START_TIMEOUT_S) -> str | None:
        """From a thread other than the loop's: make the child load ``<model_dir>/latest``; its version."""
        if self._loop is None:
            return None  # not connected yet: the child loads the latest model when the loop connects

        async def go() -> str | None:
            return await self.call("reload", None, timeout_s)

        self.model_version = asyncio.run_coroutine_threadsafe(go(), self._loop).result(timeout_s + 5)
        self.on_version(self.model_version)
        return self.model_version

    def close(self) -> None:
        """Stop the child (from any thread; after the event loop has closed too)."""
        if self._streams is not None:
            try:
                self._streams[1].close()
            except RuntimeError:  # the loop is closed: the socket goes with it
                pass
            self._streams = None
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()


__all__ = ["CALL_TIMEOUT_S", "RESTART_BACKOFF_S", "ScoreProcess", "ScoreUnavailable"]
