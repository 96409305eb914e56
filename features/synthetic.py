"""The synthetic world (``features.world``) as one event stream in event-time order, for producers and replays."""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Iterator

from features.events import Engagement, Event, Impression


def synthetic_events(users: int, seed: int = 0, rate: float = 1000.0, start_ms: int | None = None,
                     ) -> Iterator[Event]:
    """The synthetic world's impressions and engagements, merged in event-time order.

    Event time starts at ``start_ms`` (default: now) with user sessions already
    in steady state, and the world's request rate is scaled so that event time
    advances at about ``rate`` events per event-time second at the start (it
    drifts with the world's sessions and time of day: from 221 to 370 events/s
    over the first 8 minutes when scaled to 250), so send it by event time
    (``produce_steady``); engagements trail their impression by seconds.
    """
    from features.world import World

    start = int(time.time() * 1000) if start_ms is None else start_ms
    warm_ms = 180_000  # user sessions ramp up over minutes: start the world earlier, send from ``start``

    def steady(world: World, impressions_per_s: float) -> Iterator[tuple[Impression, list[Engagement]]]:
        for imp, engagements in world.stream(start_ms=start - warm_ms, impressions_per_s=impressions_per_s):
            if imp.ts >= start:
                yield imp, engagements

    # Measure the world's events per event-time second once and scale to ``rate``.
    probe = list(itertools.islice(steady(World(seed=seed + 7919, n_users=users), 100.0), 3000))
    span_s = max((probe[-1][0].ts - probe[0][0].ts) / 1000.0, 1e-3)
    impressions_per_s = max(100.0 * rate / (sum(1 + len(e) for _, e in probe) / span_s), 0.1)
    pending: list[tuple[int, int, Event]] = []
    seq = itertools.count()
    for imp, engagements in steady(World(seed=seed, n_users=users), impressions_per_s):
        while pending and pending[0][0] <= imp.ts:
            yield heapq.heappop(pending)[2]
        yield imp
        for eng in engagements:
            heapq.heappush(pending, (eng.ts, next(seq), eng))
