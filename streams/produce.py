"""``feedrank produce``: a steady synthetic event stream with a progress line."""

from __future__ import annotations

import itertools
import sys
import time
from typing import Iterable, Iterator

from features.events import Engagement, Event, Impression

from .producer import EventProducer


def synthetic_events(users: int, seed: int = 0, start_ms: int | None = None) -> Iterator[Event]:
    """Impressions, each followed by the engagements the synthetic world samples for it."""
    from features.world import World

    world = World(seed=seed, n_users=users)
    yield from world.event_stream(start_ms=start_ms)


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
