"""Tile counters: user 3 h / 1 d windows, feedback tiles per segment, roll-over and expiry."""

from __future__ import annotations

import random

from features.state import segment_keys
from features.tiles import HOUR_MS, MINUTE_MS, FeedbackTiles, UserCounters

T0 = 1_764_000_000_000 // HOUR_MS * HOUR_MS


def test_user_counters_windows_and_rollover() -> None:
    c = UserCounters()
    c.add(T0, None)
    c.add(T0 + 1000, "click")
    c.add(T0 + 2 * HOUR_MS, None)
    c.add(T0 + 2 * HOUR_MS, "repin")
    now = T0 + 2 * HOUR_MS + 1
    assert c.counts_3h(now).impressions == 2
    assert c.counts_3h(now).actions == {"click": 1, "repin": 1}
    later = T0 + 4 * HOUR_MS
    assert c.counts_3h(later).impressions == 1  # the T0 tile rolled out of 3 h
    assert c.counts_1d(later).impressions == 2
    assert c.counts_1d(T0 + 30 * HOUR_MS).impressions == 0


def test_user_counters_prune_old_tiles_and_round_trip() -> None:
    c = UserCounters()
    for h in range(0, 60):
        c.add(T0 + h * HOUR_MS, "click")
    assert len(c.long) <= 26 and len(c.short) <= 14
    back = UserCounters.decode(c.encode())
    assert back == c
    assert back.counts_1d(T0 + 59 * HOUR_MS).actions["click"] == 24


def test_user_counters_are_order_independent() -> None:
    rng = random.Random(3)
    evs = [(T0 + rng.randrange(0, 40 * HOUR_MS), rng.choice([None, "click", "hide"])) for _ in range(300)]
    blobs = set()
    for _ in range(4):
        rng.shuffle(evs)
        c = UserCounters()
        for ts, a in evs:
            c.add(ts, a)
        blobs.add(c.encode())
    assert len(blobs) == 1


def test_feedback_rates_per_segment() -> None:
    f = FeedbackTiles()
    for i in range(10):
        f.add(segment_keys("US", "f"), T0 + i * 1000, None)
    for i in range(4):
        f.add(segment_keys("US", "m"), T0 + i * 1000, None)
    f.add(segment_keys("US", "f"), T0 + 5000, "click")
    f.add(segment_keys("US", "f"), T0 + 6000, "click")
    f.add(segment_keys("US", "m"), T0 + 6000, "hide")
    snap = f.snapshot(T0 + 10_000)
    assert snap.get("all").impressions == 14
    assert snap.get("c:US").rate("click") == 2 / 14
    assert snap.get("gc:f:US").rate("click") == 2 / 10
    assert snap.get("gc:m:US").rate("hide") == 1 / 4
    assert snap.get("gc:u:US").impressions == 0


def test_feedback_window_rolls_over_and_expires() -> None:
    f = FeedbackTiles()
    for m in range(40):
        f.add(["all"], T0 + m * MINUTE_MS, None)
    now = T0 + 39 * MINUTE_MS + 5
    assert f.window("all", now).impressions == 30  # minutes 10..39
    assert f.window("all", now, window_ms=5 * MINUTE_MS).impressions == 5
    dropped = f.expire(now // MINUTE_MS * MINUTE_MS - 30 * MINUTE_MS + MINUTE_MS)
    assert dropped == 10
    assert f.window("all", now).impressions == 30
    assert FeedbackTiles.from_json(f.to_json()) == f


def test_feedback_merge_adds_deltas() -> None:
    a, b = FeedbackTiles(), FeedbackTiles()
    a.add(["all"], T0, None)
    b.add(["all"], T0, "click")
    b.add(["all"], T0 + MINUTE_MS, None)
    total = FeedbackTiles()
    for part in (a, b):
        for seg, tiles in part.tiles.items():
            total.merge(seg, tiles)
    assert total.window("all", T0 + MINUTE_MS).impressions == 2
    assert total.window("all", T0 + MINUTE_MS).actions == {"click": 1}


def test_feedback_view_snapshot_is_cached_until_the_tiles_change() -> None:
    from features.tiles import FeedbackView

    view = FeedbackView(window_min=30, grace_min=1)
    t0 = 100 * MINUTE_MS
    delta = FeedbackTiles()
    delta.add(segment_keys("US", "f"), t0, None)
    delta.add(segment_keys("US", "f"), t0, "click")
    tiles = {int(k): v for k, v in delta.to_json()["all"].items()}
    assert view.apply(0, 1, "all", tiles)
    first = view.snapshot()
    assert view.snapshot() is first  # unchanged tiles: the same object, no recomputation
    assert first.get("all").impressions == 1
    assert view.apply(1, 1, "all", tiles)  # another origin's delta changes the counts
    second = view.snapshot()
    assert second is not first and second.get("all").impressions == 2
    assert not view.apply(1, 1, "all", tiles)  # a duplicate changes nothing
    assert view.snapshot() is second
    view.watermark = t0 + 40 * MINUTE_MS
    assert view.expire() > 0  # expiry drops the tiles: the next snapshot sees it
    assert view.snapshot().get("all").impressions == 0
