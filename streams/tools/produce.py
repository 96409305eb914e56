"""``feedrank produce``: a steady synthetic event stream with a progress line."""

from __future__ import annotations

import itertools
import sys
import time
from typing import Iterable

from features.events import Event, Impression

from streams.kafka.producer import EventProducer


def produce_steady(producer: EventProducer, events: Iterable[Event], rate: float, duration_s: float,
                   progress: bool = True, event_time: bool = True) -> dict[str, int]:
    """Send ``events`` for ``duration_s`` seconds.

    With ``event_time`` (the synthetic world's stream) each event is sent when
    the wall clock reaches its timestamp: the stream's event time stays at real
    time, neither ahead (that would close other producers' attribution windows
    early) nor behind (its impressions would arrive late), and the rate is the
    world's (``synthetic_events`` scales it to about ``rate``; the world's
    sessions and time of day move it). Without, events go at ``rate``/s.
    """
    counts = {"impression": 0, "engagement": 0}
    start = time.monotonic()
    last_print = start
    it = iter(events)
    for i in itertools.count():
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= duration_s:
            break
        try:
            event = next(it)
        except StopIteration:
            break
        due = now + (event.ts / 1000.0 - time.time()) if event_time else start + i / rate
        if due > now:
            time.sleep(min(due - now, max(0.0, start + duration_s - now)))
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


__all__ = ["produce_steady"]
