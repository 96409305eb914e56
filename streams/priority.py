"""Serving before ingestion: the table engine steps aside while a ``/score`` computes.

One worker process serves ``/score`` and applies the event stream. The score
function runs in a thread beside the event loop, and both need the GIL for
their Python parts: while a batch of events is being applied, every hand-over
of the GIL from the loop to the score thread waits up to the switch interval,
and on 2 cores the two compete for CPU too. A request's latency is what the
feed waits for; an event applied 10 ms later is not. So the engine, between
two slices of a batch (and before a checkpoint), waits while a score is in
flight, at most ``max_pause_s`` each time so that ingestion always advances.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from typing import Iterator


class ServingGate:
    """Counts scores in flight; ``step_aside`` waits (bounded) until there are none."""

    def __init__(self, max_pause_s: float = 0.05) -> None:
        self.max_pause_s = max_pause_s
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.pauses = 0
        self.paused_s = 0.0

    @property
    def busy(self) -> bool:
        return self._busy > 0

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Held (in the event loop) around one score computation."""
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    async def step_aside(self) -> None:
        """Return once no score is in flight, or after ``max_pause_s``: at once when none is."""
        if not self._busy or self.max_pause_s <= 0:
            return
        from .metrics import INGEST_PAUSED_SECONDS

        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(self._idle.wait(), self.max_pause_s)
        except asyncio.TimeoutError:
            pass
        dt = time.perf_counter() - t0
        self.pauses += 1
        self.paused_s += dt
        INGEST_PAUSED_SECONDS.inc(dt)
