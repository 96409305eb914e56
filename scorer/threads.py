"""How many torch threads a scoring call uses: picked from the cores this process can actually run on.

``os.cpu_count()`` counts the machine; a container or a ``taskset`` gives the process
fewer (``os.sched_getaffinity``) and a cgroup CPU quota (``cpu.max``) fewer still. An
intra-op thread pool larger than the cores it gets does not degrade gently: each
parallel region waits for its slowest thread, and a thread that shares its core with
another busy process is that thread (measured here: ``bench score`` p50 1.4 ms alone,
103 ms with two threads and one core busy). So the pick leaves one usable core to
the worker's own event loop and ingestion, and never goes above ``MAX_AUTO_THREADS``
(one request's GEMMs are small: more threads add synchronization, not speed).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: the auto pick's ceiling
MAX_AUTO_THREADS = 4
_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = _CPU_MAX) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota when one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def pick_score_threads(configured: int = 0, cores: int | None = None) -> int:
    """Torch intra-op threads for scoring: ``configured`` when > 0, else ``usable cores - 1`` in ``1..MAX_AUTO_THREADS``."""
    if configured > 0:
        return configured
    n = usable_cores() if cores is None else cores
    return max(1, min(MAX_AUTO_THREADS, n - 1))


__all__ = ["MAX_AUTO_THREADS", "pick_score_threads", "usable_cores"]
