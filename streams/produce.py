"""``feedrank produce``: a steady synthetic event stream with a progress line."""

from __future__ import annotations

import heapq
import itertools
import sys
import time
from typing import Iterable, Iterator

from features.events import Engagement, Event, Impression

from .producer import EventProducer


def synthetic_events(users: int, seed: int = 0, rate: float = 1000.0, start_ms: int | None = None,
                     ) -> Iterator[Event]:
    """The synthetic world's impressions and engagements, merged in event-time order.

    Event time starts at ``start_ms`` (default: now) and advances at about
    ``rate`` events per second, so a stream paced at ``rate`` keeps event time
    close to wall time (engagements trail their impression by seconds).
    """
    from features.world import World

    start = int(time.time() * 1000) if start_ms is None else start_ms
    # The world's arrival process thins its nominal rate (diurnal, sessions) and adds
    # engagements; measure the events per event-time second once and scale to ``rate``.
    probe = list(itertools.islice(World(seed=seed + 7919, n_users=users).stream(start_ms=start), 2000))
    span_s = max((probe[-1][0].ts - probe[0][0].ts) / 1000.0, 1e-3)
    events_per_s_at_100 = sum(1 + len(e) for _, e in probe) / span_s
    impressions_per_s = max(100.0 * rate / events_per_s_at_100, 0.1)
    world = World(seed=seed, n_users=users)
    pending: list[tuple[int, int, Event]] = []
    seq = itertools.count()
    for imp, engagements in world.stream(start_ms=start, impressions_per_s=impressions_per_s):
        while pending and pending[0][0] <= imp.ts:
            yield heapq.heappop(pending)[2]
        yield imp
        for eng in engagements:
            heapq.heappush(pending, (eng.ts, next(seq), eng))


def produce_steady(producer: EventProducer, events: Iterable[Event], rate: float, duration_s: float,
                   progress: bool = True) -> dict[str, int]:
    """Send ``events`` at ``rate`` events/s for ``duration_s`` seconds."""
    counts = {"impression": 0, "engagement": 0}
    start = time.monotonic()
    last_print = start
    it = iter(events)
    for i in itertools.count():
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= duration_s:
            break
        due = start + i / rate
        if due > now:
            time.sleep(due - now)
        try:
            event = next(it)
        except StopIteration:
            break
        producer.send(event)
        counts["impression" if isinstance(event, Impression) else "engagement"] += 1
        if progress and now - last_print >= 1.0:
            last_print = now
            sent = sum(counts.values())
            sys.stderr.write(
                f"\rproduced {sent:>9,} events ({counts['impression']:,} impressions, "
                f"{counts['engagement']:,} engagements) {sent / max(elapsed, 1e-9):,.0f}/s   "
            )
            sys.stderr.flush()
    producer.flush()
    if progress:
        sys.stderr.write("\n")
    return counts


__all__ = ["Engagement", "Impression", "produce_steady", "synthetic_events"]
