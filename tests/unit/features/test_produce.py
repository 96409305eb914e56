"""``streams.tools.produce.produce_steady``: pacing by event time or by rate (pure logic, a recording sender)."""

from __future__ import annotations

import time

from features.events import Impression
from features.synthetic import synthetic_events
from streams.tools.produce import produce_steady


class _Recorder:
    """Stands in for ``EventProducer`` in this unit test: records (wall ms at send, event ts)."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, int]] = []

    def send(self, event) -> None:  # noqa: ANN001
        self.sent.append((time.time() * 1000.0, event.ts))

    def flush(self) -> None:
        pass


def _impressions(start_ms: int, gaps_ms: list[int]) -> list[Impression]:
    out, ts = [], start_ms
    for k, gap in enumerate(gaps_ms):
        ts += gap
        out.append(Impression(event_id=f"e{k}", user_id="u1", item_id=f"i{k}", request_id="r1", ts=ts,
                              surface="home", position=k, item_type="organic", country="US", gender="f",
                              app_type="ios", device_type="phone"))
    return out


def test_event_time_pacing_sends_each_event_when_the_clock_reaches_it() -> None:
    # a bursty stream: 10 events in 10 ms, a 300 ms gap, 10 more; paced at --rate 20/s the last would go
    # out ~950 ms after the first (the old behaviour: event time fell behind the clock)
    now = int(time.time() * 1000)
    events = _impressions(now + 100, [0] + [1] * 9 + [300] + [1] * 9)
    rec = _Recorder()
    counts = produce_steady(rec, events, rate=20.0, duration_s=5.0, progress=False, event_time=True)
    assert counts == {"impression": 20, "engagement": 0}
    lateness = [sent - ts for sent, ts in rec.sent]
    assert min(lateness) >= -1.0, "an event went out before the clock reached its timestamp"
    assert max(lateness) < 150.0, f"an event went out late: {max(lateness):.1f} ms"


def test_rate_pacing_sends_at_the_rate_whatever_the_timestamps() -> None:
    past = int(time.time() * 1000) - 3_600_000  # an hour old: event time says "all at once"
    events = _impressions(past, [1] * 40)
    rec = _Recorder()
    t0 = time.time() * 1000.0
    produce_steady(rec, events, rate=200.0, duration_s=5.0, progress=False, event_time=False)
    span = rec.sent[-1][0] - t0
    assert 39 / 200 * 1000 * 0.9 <= span <= 39 / 200 * 1000 + 150, f"40 events at 200/s took {span:.0f} ms"


def test_synthetic_events_start_now_and_come_in_event_time_order() -> None:
    now = int(time.time() * 1000)
    it = synthetic_events(users=200, seed=3, rate=200.0, start_ms=now)
    ts = [next(it).ts for _ in range(300)]
    assert ts[0] >= now
    assert ts == sorted(ts)
