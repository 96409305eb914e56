"""The label join: windows, orphans, late counting, predictions, order independence."""

from __future__ import annotations

import itertools
import random
from typing import Any

from features.events import Engagement, Impression, encode_event
from features.labels import DictKV, LabelJoin
from features.predictions import ItemPrediction, PredictionLog, encode_prediction
from features.tiles import FeedbackTiles

T0 = 1_764_000_000_000
A = 600_000
L = 60_000


def imp(i: int, ts: int, user: str = "u1", item: str | None = None, req: str = "r1") -> Impression:
    return Impression(event_id=f"imp{i}", user_id=user, item_id=item or f"i{i}", request_id=req, ts=ts,
                      surface="home", position=i, item_type="video", country="US", gender="f",
                      app_type="ios", device_type="phone")


def eng(i: int, ts: int, item: str, action: str = "click", user: str = "u1", req: str = "r1") -> Engagement:
    return Engagement(event_id=f"eng{i}", user_id=user, item_id=item, request_id=req, ts=ts, action=action)


class Harness:
    def __init__(self) -> None:
        self.out: list[tuple[str, dict[str, Any]]] = []
        self.fb = FeedbackTiles()
        self.attr: list[tuple[str, str, str]] = []
        self.join = LabelJoin(DictKV(), DictKV(), DictKV(), window_ms=A, lateness_ms=L,
                              emit=lambda u, ex: self.out.append((u, ex)), feedback=lambda: self.fb,
                              attributed=lambda u, e, s, t: self.attr.append((e, s, t)))

    def feed(self, ev: Any) -> None:
        if isinstance(ev, Impression):
            self.join.on_impression(ev, encode_event(ev))
        elif isinstance(ev, Engagement):
            self.join.on_engagement(ev)
        else:
            self.join.on_prediction(ev.user_id, ev.request_id, ev.ts, encode_prediction(ev))

    def labels(self) -> dict[str, dict[str, int]]:
        return {ex["example_id"]: ex["labels"] for _, ex in self.out}


def test_engagement_in_window_labels_its_impression_and_window_close_emits_once() -> None:
    h = Harness()
    h.feed(imp(1, T0, item="a"))
    h.feed(imp(2, T0, item="b"))
    h.feed(eng(1, T0 + 5_000, "a", "click"))
    h.feed(eng(2, T0 + 6_000, "a", "repin"))
    h.feed(eng(3, T0 + 7_000, "a", "click"))  # second click: label stays 1
    assert h.out == []
    assert h.join.open_deadlines() == 1  # one close deadline per pending request and impression time
    h.feed(eng(9, T0 + A + L + 1, "zzz"))  # pushes the engagement watermark past the close
    assert len(h.out) == 2
    assert h.join.open_deadlines() == 1  # both closed; the unmatched engagement waits as an orphan
    lab = h.labels()
    assert lab["imp1"]["click"] == 1 and lab["imp1"]["repin"] == 1 and lab["imp1"]["hide"] == 0
    assert sum(lab["imp2"].values()) == 0
    assert h.join.stats.counts["labeled_examples"] == 2
    # feedback: 2 impressions, 1 click (counted when the label flipped), 1 repin
    c = h.fb.window("gc:f:US", T0 + 10_000)
    assert c.impressions == 2 and c.actions == {"click": 1, "repin": 1}
    assert ("eng1", "home", "video") in h.attr


def test_engagement_outside_window_and_late_ones_are_counted_not_dropped_silently() -> None:
    h = Harness()
    h.feed(imp(1, T0, item="a"))
    h.feed(eng(1, T0 + A + 1, "a"))  # after the attribution window: waits as an orphan
    assert h.join.stats.counts["unlabeled_engagements"] == 0
    h.feed(imp(7, T0 + A + 1 + 2 * L + 1, item="q"))  # impression time moves on: the orphan expires
    assert h.join.stats.counts["unlabeled_engagements"] == 1
    h.feed(eng(2, T0 + A + L + 10, "x"))  # closes imp1
    h.feed(eng(3, T0 + 1000, "a"))  # late on its own input
    assert h.join.stats.counts["late_engagements"] == 1
    assert h.labels()["imp1"]["click"] == 0


def test_orphan_engagement_waits_for_its_impression_and_expires_otherwise() -> None:
    h = Harness()
    h.feed(eng(1, T0 + 1000, "a"))  # impression not there yet
    h.feed(eng(2, T0 + 1000, "nomatch"))
    h.feed(imp(1, T0, item="a"))
    h.feed(imp(5, T0 + 2 * L + 2000, item="b"))  # impression watermark expires the unmatched orphan
    assert h.join.stats.counts["unlabeled_engagements"] == 1
    h.feed(eng(9, T0 + 2 * L + 2000 + A + L + 1, "zzz"))
    assert h.labels()["imp1"]["click"] == 1


def test_prediction_is_attached_to_its_labeled_example() -> None:
    h = Harness()
    log = PredictionLog(request_id="r1", user_id="u1", ts=T0 - 100, model_version="m1", calibrator_version="c1",
                        items=[ItemPrediction(item_id="a", position=0, raw={"click": 0.3}, features={"f": 1.0})])
    h.feed(log)
    h.feed(imp(1, T0, item="a"))
    h.feed(imp(2, T0, item="b"))
    h.feed(eng(9, T0 + A + L + 1, "zzz"))
    ex = {e["example_id"]: e for _, e in h.out}
    assert ex["imp1"]["prediction"]["raw"] == {"click": 0.3}
    assert ex["imp1"]["prediction"]["model_version"] == "m1"
    assert ex["imp2"]["prediction"] is None  # request logged, item not in it
    assert ex["imp1"]["impression"]["item_id"] == "a"


def test_late_and_duplicate_impressions_are_counted() -> None:
    h = Harness()
    h.feed(imp(1, T0 + 10 * L, item="a"))
    h.feed(imp(2, T0, item="b"))  # late on the impression input
    h.feed(imp(1, T0 + 10 * L, item="a"))  # duplicate
    assert h.join.stats.counts["late_impressions"] == 1
    assert h.join.stats.counts["duplicate_impressions"] == 1


def test_labels_do_not_depend_on_how_the_two_inputs_interleave() -> None:
    rng = random.Random(11)
    imps = [imp(i, T0 + i * 2000, item=f"i{i}") for i in range(40)]
    engs = []
    for i in range(40):
        if rng.random() < 0.6:
            engs.append(eng(i, T0 + i * 2000 + rng.randrange(-L // 2, A + L), f"i{i}",
                            rng.choice(["click", "repin", "hide"])))
    engs.sort(key=lambda e: e.ts)
    engs.append(eng(999, T0 + 10 * A, "zzz"))
    results = set()
    for _ in range(6):
        # random interleaving of the two inputs, each in its own order
        order = [0] * len(imps) + [1] * len(engs)
        rng.shuffle(order)
        it_i, it_e = iter(imps), iter(engs)
        h = Harness()
        for src in order:
            h.feed(next(it_i) if src == 0 else next(it_e))
        h.feed(imp(998, T0 + 10 * A, item="flush"))
        h.feed(eng(998, T0 + 12 * A, "flush"))
        results.add((tuple(sorted((k, tuple(sorted(v.items()))) for k, v in h.labels().items())),
                     tuple(sorted(h.join.stats.counts.items())),
                     str(h.fb.to_json()),
                     tuple(sorted(h.join.orphans.data.items())),  # type: ignore[attr-defined]
                     tuple(sorted(h.join.pending.data.items()))))  # type: ignore[attr-defined]
    assert len(results) == 1
    labels = dict(next(iter(results))[0])
    assert len(labels) == 41


def test_packed_deadline_entries_sort_and_fall_due_like_deadline_key_tuples() -> None:
    """The deadline heaps hold one bytes object per entry; its order must be the (deadline, key) order and
    ``entry < _due(w)`` must mean deadline < w, negative deadlines and non-ASCII keys included."""
    import heapq

    from features.labels import _due, _entry, _unpack

    rng = random.Random(7)
    deadlines = [-(1 << 40), -1, 0, 1, 999, 1000, 1_764_489_600_000, (1 << 62)]
    keys = ["", "a", "a\x1fb", "b", "é", "u1\x1fi2\x1fr3", "z" * 40]
    pairs = [(d, k) for d in deadlines for k in keys]
    rng.shuffle(pairs)
    heap = [_entry(d, k) for d, k in pairs]
    heapq.heapify(heap)
    popped = [_unpack(heapq.heappop(heap)) for _ in range(len(pairs))]
    assert popped == sorted(pairs)
    for (d, k), w in itertools.product(pairs[:20], deadlines):
        assert (_entry(d, k) < _due(w)) == (d < w), (d, k, w)


def test_a_request_keeps_one_pending_value_whose_impressions_close_at_their_own_deadlines() -> None:
    from features.labels import decode_pending, request_key

    h = Harness()
    h.feed(imp(1, T0, item="b"))
    h.feed(imp(2, T0, item="a"))
    h.feed(imp(3, T0 + 30_000, item="c"))  # same request, shown later: closes 30 s later
    h.feed(imp(4, T0 + 1, item="a"))  # the same (user, item, request) again: a duplicate
    assert list(h.join.pending.data) == [request_key("u1", "r1")]  # type: ignore[attr-defined]
    assert h.join.stats.counts["duplicate_impressions"] == 1
    assert h.join.open_deadlines() == 2  # one per distinct impression time of the request
    h.feed(eng(1, T0 + 10, "c", "hide"))
    h.feed(eng(2, T0 + A + L + 1, "zzz"))  # past the first deadline only
    assert sorted(ex["example_id"] for _, ex in h.out) == ["imp1", "imp2"]
    [(_, _, ts, _, _, raw)] = decode_pending(h.join.pending.data[request_key("u1", "r1")])  # type: ignore[attr-defined]
    assert ts == T0 + 30_000 and b'"imp3"' in raw
    h.feed(eng(3, T0 + A + L + 30_001, "zzz"))
    assert [ex["example_id"] for _, ex in h.out][2:] == ["imp3"]
    assert h.labels()["imp3"]["hide"] == 1 and h.join.pending.data == {}  # type: ignore[attr-defined]


def test_the_pending_value_does_not_depend_on_the_order_of_a_requests_impressions() -> None:
    imps = [imp(i, T0 + (i % 3) * 1000, item=f"i{i}") for i in range(7)]
    values = set()
    for seed in range(5):
        order = imps[:]
        random.Random(seed).shuffle(order)
        h = Harness()
        for ev in order:
            h.feed(ev)
        values.add(tuple(h.join.pending.data.items()))  # type: ignore[attr-defined]
    assert len(values) == 1


def test_a_join_rebuilt_from_its_tables_goes_on_as_the_one_that_kept_running() -> None:
    """The in-memory indexes (deadline heaps, key sets of requests and logs) come back from the stored tables."""
    rng = random.Random(5)
    events: list[Any] = []
    for r in range(60):
        t = T0 + r * 20_000
        user, req = f"u{r % 4}", f"r{r}"
        items = [f"i{rng.randrange(9)}" for _ in range(3)]
        log = PredictionLog(request_id=req, user_id=user, ts=t, items=[
            ItemPrediction(item_id=it, position=k, raw={"click": 0.2}) for k, it in enumerate(items)])
        events += [log, log] if r == 40 else [log]  # one log sent twice (after the cut)
        events += [imp(r * 10 + k, t, user=user, item=it, req=req) for k, it in enumerate(items)]
        events += [eng(r * 10 + k, t + rng.randrange(-L, A + 2 * L), it, user=user, req=req)
                   for k, it in enumerate(items) if rng.random() < 0.4]
    whole = Harness()
    for ev in events:
        whole.feed(ev)
    cut = Harness()
    for ev in events[:len(events) // 2]:
        cut.feed(ev)
    j = cut.join
    rebuilt = LabelJoin(j.pending, j.orphans, j.predictions, window_ms=A, lateness_ms=L, emit=j.emit,
                        feedback=j.feedback, attributed=j.attributed, stats=j.stats)
    rebuilt.wm_imp, rebuilt.wm_eng = j.wm_imp, j.wm_eng
    rebuilt.rebuild_indexes(j.pending.items(), j.orphans.items(), j.predictions.items())  # type: ignore[attr-defined]
    cut.join = rebuilt
    for ev in events[len(events) // 2:]:
        cut.feed(ev)
    assert cut.out == whole.out and len(whole.out) > 60
    assert any(ex["prediction"] is not None for _, ex in whole.out)
    assert cut.join.stats.counts == whole.join.stats.counts and whole.join.stats.counts["duplicate_predictions"] == 1
    assert cut.join.open_deadlines() == whole.join.open_deadlines()
