"""Runtime health of a worker process: event-loop lag, garbage-collector pauses, free heap given back.

Every request handler and the table engine share one event loop, so anything
that blocks it (a big batch, a checkpoint, a full GC) shows up directly in
``/score`` tail latency. Both are exported as histograms
(``feedrank_event_loop_lag_seconds``, ``feedrank_gc_pause_seconds``).
``trim_heap`` gives glibc's free heap pages back to the kernel now and then,
so RSS tracks the memory in use (``feedrank_heap_released_bytes_total``).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time

from scorer.heap import keep_heap_pages, release_free_heap

from streams.metrics import GC_PAUSE_SECONDS, HEAP_RELEASED_BYTES, HEAP_TRIM_SECONDS, LOOP_LAG_SECONDS

TICK_S = 0.010

_gc_started: dict[int, float] = {}


def _on_gc(phase: str, info: dict) -> None:
    gen = info.get("generation", 0)
    if phase == "start":
        _gc_started[gen] = time.perf_counter()
    else:
        t0 = _gc_started.pop(gen, None)
        if t0 is not None:
            GC_PAUSE_SECONDS.labels(str(gen)).observe(time.perf_counter() - t0)


def install_gc_monitor() -> None:
    """Time every collection (idempotent)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


#: young-generation threshold: the default (700 allocations) runs a collection every few hundred
#: events; at 10,000 they are ~15x rarer and each still takes well under a millisecond
GC_GEN0_THRESHOLD = 10_000


#: how long a thread may hold the GIL while another waits (CPython's default is 5 ms)
SWITCH_INTERVAL_S = 0.001


def tune_runtime() -> None:
    """Keep full collections and GIL hand-offs off the serving path.

    Measured in a worker under ``feedrank bench rpc``: a full (generation 2)
    collection walks every object of the process (the model, Faust, torch,
    the table cache) and took 150-400 ms, a /score request's whole p99
    budget many times over. Everything alive once the worker has started is
    moved to the permanent generation (``gc.freeze``; freed normally by
    reference counting, never scanned again), and young collections are made
    rarer. Call it once, after start-up.

    The score function runs in a thread beside the event loop (torch releases
    the GIL); each time it needs the GIL back while the loop is busy it waited
    up to 5 ms, several times a request: the switch interval is 1 ms instead.
    Freed heap pages are kept for reuse (``keep_heap_pages``).
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    keep_heap_pages()
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, g1, g2)


async def watch_loop_lag(stop: asyncio.Event | None = None) -> None:
    """Sleep ``TICK_S`` in a loop and record how late each wake-up was."""
    loop = asyncio.get_running_loop()
    while stop is None or not stop.is_set():
        t0 = loop.time()
        await asyncio.sleep(TICK_S)
        LOOP_LAG_SECONDS.observe(max(0.0, loop.time() - t0 - TICK_S))


async def trim_heap(interval_s: float, stop: asyncio.Event | None = None) -> None:
    """Every ``interval_s``, give the free pages inside glibc's heaps back to the kernel.

    Without it the worker's RSS rose ~5 MiB/min under steady load while the
    heap's in-use bytes stayed flat (docs/reliability.md): memory freed in
    the middle of the heap stays resident. The call runs in the default
    executor (it takes a few ms and ctypes releases the GIL); returns at once
    where the C library is not glibc or ``interval_s`` is 0.
    """
    if interval_s <= 0:
        return
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
            return
        except asyncio.TimeoutError:
            pass
        t0 = time.perf_counter()
        released = await loop.run_in_executor(None, release_free_heap)
        if released is None:
            return
        HEAP_TRIM_SECONDS.observe(time.perf_counter() - t0)
        HEAP_RELEASED_BYTES.inc(released)
