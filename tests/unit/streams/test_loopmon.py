"""The worker's runtime-health metrics: event-loop lag and GC pauses, read back from /metrics text."""

from __future__ import annotations

import asyncio
import gc
import sys
import time

from streams.serving.loopmon import install_gc_monitor, tune_runtime, watch_loop_lag
from streams.metrics import Scrape, parse_text, render


def _scrape() -> Scrape:
    return parse_text(render().decode())


def test_a_blocked_event_loop_shows_up_as_lag() -> None:
    before = _scrape()

    async def main() -> None:
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(watch_loop_lag(stop))
        await asyncio.sleep(0.05)  # a few healthy ticks
        time.sleep(0.12)  # a handler that blocks the loop for 120 ms
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(watcher, 1)

    asyncio.run(main())
    after = _scrape()
    ticks = after.delta(before, "feedrank_event_loop_lag_seconds_count")
    assert ticks >= 3
    # the blocked tick lands in the 0.1..0.25 s bucket: the maximum quantile says so
    assert after.quantile("feedrank_event_loop_lag_seconds", 1.0, since=before) == 0.25


def test_gc_pauses_are_timed_per_generation() -> None:
    install_gc_monitor()
    install_gc_monitor()  # idempotent: one callback
    before = _scrape()
    gc.collect()
    after = _scrape()
    assert after.delta(before, "feedrank_gc_pause_seconds_count", generation="2") == 1.0


def test_tune_runtime_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    old_threshold, old_interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        tune_runtime()
        assert gc.get_freeze_count() > 1000  # everything alive at start-up is out of the collector's way
        assert gc.get_threshold()[0] == 10_000
        assert sys.getswitchinterval() == 0.001
    finally:
        gc.unfreeze()
        gc.set_threshold(*old_threshold)
        sys.setswitchinterval(old_interval)


_FAULTS = """
import resource, sys
import numpy as np
from scorer.heap import keep_heap_pages
ok = keep_heap_pages() if sys.argv[1] == "keep" else None
def round_():  # a forward's temporaries: several MB-sized buffers alive at once, then all freed
    bufs = [np.ones(3 << 18, dtype=np.float32) for _ in range(4)]  # 4 x 3 MB
    return sum(float(b[0]) for b in bufs)
for _ in range(5):
    round_()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    round_()
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


def test_keep_heap_pages_stops_the_per_request_page_faults() -> None:
    """Without it glibc gives the freed megabytes back and faults them in again every round."""
    import platform
    import subprocess

    if platform.libc_ver()[0] != "glibc":
        import pytest

        pytest.skip("mallopt thresholds are glibc's")
    out = {mode: subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
           .stdout.split() for mode in ("default", "keep")}
    assert out["keep"][0] == "True", "mallopt refused a threshold"
    default_faults, kept_faults = int(out["default"][1]), int(out["keep"][1])
    assert default_faults > 50 * 1000, out  # ~3 MB re-faulted per round (4 KiB pages)
    assert kept_faults < default_faults / 20, out


_FRAGMENTED = """
import sys
from scorer.heap import release_free_heap, resident_bytes
# 160 MB of 4 KB blocks (glibc's heap, not pymalloc's); every 64th stays alive, so the freed
# pages sit between live blocks where free() alone cannot give them back
blocks = [bytes(4000) + bytes([i % 251]) for i in range(40_000)]
keep = blocks[::64]
del blocks
held = resident_bytes()
released = release_free_heap()
print(held, released, resident_bytes(), len(keep))
"""


def test_release_free_heap_gives_back_pages_freed_between_live_blocks() -> None:
    import platform
    import subprocess

    if platform.libc_ver()[0] != "glibc":
        import pytest

        pytest.skip("malloc_trim is glibc's")
    held, released, after, _ = (int(x) for x in subprocess.run(
        [sys.executable, "-c", _FRAGMENTED], capture_output=True, text=True, check=True).stdout.split())
    assert released > 100 << 20, (held, released, after)  # most of the 160 MB freed in the middle
    assert after < held - (100 << 20)


def test_trim_heap_runs_on_its_interval_and_counts_what_it_released() -> None:
    from streams.serving.loopmon import trim_heap

    before = _scrape()

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(trim_heap(0.05, stop))
        await asyncio.sleep(0.28)
        stop.set()
        await asyncio.wait_for(task, 1)
        assert await asyncio.wait_for(trim_heap(0.0), 1) is None  # 0: off, returns at once

    asyncio.run(main())
    after = _scrape()
    trims = after.delta(before, "feedrank_heap_trim_seconds_count")
    assert 3 <= trims <= 6
    assert after.has("feedrank_heap_released_bytes_total")


def test_thread_clock_counts_this_threads_cpu_and_not_its_sleep() -> None:
    from streams.serving.model_slot import thread_clock

    c0, w0 = thread_clock()
    time.sleep(0.05)
    c1, w1 = thread_clock()
    sum(range(3_000_000))  # tens of ms of CPU however busy the box is
    c2, w2 = thread_clock()
    assert c1 - c0 < 10_000_000  # sleeping is not CPU ...
    assert c2 - c1 >= 15_000_000  # ... working is
    assert 0 <= w1 - w0 and 0 <= w2 - w1  # runnable-but-waiting never goes backwards


def test_freshness_log_keeps_the_last_maxlen_samples_in_a_fixed_ring() -> None:
    from streams.engine.freshness import FreshnessLog, percentiles

    log = FreshnessLog(maxlen=5)
    assert len(log) == 0 and all(v != v for v in log.percentiles(0.5))  # NaN when empty
    log.add_many([1.0, 2.0, 3.0])
    assert len(log) == 3 and log.percentiles(0.0, 0.5, 0.99) == [1.0, 2.0, 3.0]
    log.add_many([4.0, 5.0, 6.0, 7.0])  # wraps: 1, 2 fall out
    assert len(log) == 5 and sorted(log._ring) == [3.0, 4.0, 5.0, 6.0, 7.0]
    log.add_many([float(v) for v in range(100, 112)])  # more than the ring at once: the last 5
    assert sorted(log._ring) == [107.0, 108.0, 109.0, 110.0, 111.0]
    assert log.percentiles(0.5, 0.99) == percentiles(range(107, 112), 0.5, 0.99)
    log.clear()
    assert len(log) == 0
    log.add_many([9.0])
    assert log.percentiles(0.5) == [9.0]
