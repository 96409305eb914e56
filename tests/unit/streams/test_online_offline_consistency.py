"""Online/offline consistency of the user state (issue 28): the live tables and the replay give equal features.

Training, replay and calibration rows are assembled from ``scorer.replay_state.ReplayState``; ``/score`` from the
stream tables (``streams.engine.tables.PartitionTables``). Both feed the one assembly path
(``features.assembly``), so the features agree when the two states agree. The same synthetic stream goes to
both, as the engine reads it (per topic, in poll batches) and as the replay does (event-time order); at the end
of every batch, sampled users' states are compared field by field (every sequence field, both counters), and
the 30-minute feedback loop of sampled segments: the replay's against the live ``FeedbackView`` fed with the
partition's delta, as each checkpoint ships it.

Found by it (2026-12-07): 24.9 % of the sampled sequences differed in order, because the tables order
actions with the same event time by their event id's hash and the replay by arrival (one impression's
actions share a timestamp); 53 % of the compared feedback counts differed, because the replay summed a
segment once per event-time minute (the live view takes a delta every checkpoint). With careless producers'
records added (re-sent, repeated, orphaned and too-late engagements), the replay also gave unattributed
engagements an invented context ("home", "organic", "u:US") and counted every engagement in the feedback loop;
the tables keep "" and "unknown" and count an action once per impression, when its label flips. All fixed in
the replay.
Left, and documented: the live view lags by its checkpoint interval (about a second), the replay not at all.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections import Counter

import pytest

from features.events import Impression, encode_event
from features.state import segment_keys
from features.synthetic import synthetic_events
from features.tiles import FeedbackTiles, FeedbackView
from scorer.replay_state import ReplayState
from streams.engine.state import PartitionState, open_backend
from streams.engine.tables import PartitionTables

T0 = 1_764_000_000_000
FIELDS = ("item_id", "action", "ts", "surface", "item_type", "dwell_ms")
#: the goal of issue 28: per feature, at most this share of compared values differs
MAX_MISMATCH = 0.001


WINDOW_MS, LATENESS_MS = 150_000, 30_000


def _careless(events: list) -> list:
    """The world's stream with what real producers add: engagements re-sent (same event id), an action
    repeated on one impression (new id), engagements whose impression never comes, and engagements after
    their impression's attribution window. Kept in event-time order."""
    out = list(events)
    engagements = [e for e in events if not isinstance(e, Impression)]
    for i, e in enumerate(engagements):
        if i % 50 == 0:
            out.append(e)  # re-sent
            out.append(e.model_copy(update={"event_id": f"{e.event_id}-again", "ts": e.ts + 1}))
        if i % 97 == 0:
            out.append(e.model_copy(update={"event_id": f"{e.event_id}-orphan", "request_id": f"lost-{i}"}))
        if i % 131 == 0:
            out.append(e.model_copy(update={"event_id": f"{e.event_id}-late", "ts": e.ts + WINDOW_MS + 60_000}))
    out.sort(key=lambda e: e.ts)
    return out


def _compare(order: str, n_events: int = 20_000, batch: int = 400, seq_len: int = 100) -> tuple[Counter, Counter, dict]:
    events = _careless(list(itertools.islice(synthetic_events(300, seed=3, rate=200.0, start_ms=T0), n_events)))
    live = PartitionTables(PartitionState(open_backend(f"memory://{uuid.uuid4().hex}", ".", "p0"), 0),
                           seq_len=seq_len, window_ms=WINDOW_MS, lateness_ms=LATENESS_MS)
    replay = ReplayState(seq_len=seq_len, attribution_ms=WINDOW_MS, lateness_ms=LATENESS_MS)
    view = FeedbackView(window_min=30)
    users = sorted({e.user_id for e in events})
    segments = sorted({(e.country, e.gender) for e in events if isinstance(e, Impression)})
    rng = random.Random(0)
    offsets: Counter = Counter()
    total: Counter = Counter()
    mismatch: Counter = Counter()
    first: dict = {}
    for b in range(0, len(events), batch):
        chunk = events[b:b + batch]
        by_topic = {"impression": [e for e in chunk if isinstance(e, Impression)],
                    "engagement": [e for e in chunk if not isinstance(e, Impression)]}
        if order == "poll batches":  # one topic's batch, then the other's, as the engine's fetches give them
            for kind, evs in by_topic.items():
                items = [(kind, offsets[kind] + i, e, encode_event(e)) for i, e in enumerate(evs)]
                offsets[kind] += len(evs)
                live.process(kind, items)
        else:  # event-time order, one record at a time
            for e in chunk:
                kind = "impression" if isinstance(e, Impression) else "engagement"
                live.process(kind, [(kind, offsets[kind], e, encode_event(e))])
                offsets[kind] += 1
        for imp in by_topic["impression"]:
            replay.add_impression(imp)
        replay.add_engagements(by_topic["engagement"])
        now = chunk[-1].ts
        replay.advance(now)
        # the checkpoint: the partition's feedback delta ships to the view (``PartitionTables.prepare``'s outbox)
        for segment, tiles in live.feedback.tiles.items():
            view.apply(live.partition, b // batch + 1, segment, tiles)
        live.feedback = FeedbackTiles()
        served = view.snapshot(now)
        for country, gender in rng.sample(segments, min(5, len(segments))):
            replayed = replay.feedback(now, country, gender)
            for key in segment_keys(country, gender):
                a, r = served.segments.get(key), replayed.segments.get(key)
                for f, lv, rv in (("feedback.impressions", a.impressions if a else 0, r.impressions if r else 0),
                                  ("feedback.actions", dict(a.actions) if a else {}, dict(r.actions) if r else {})):
                    total[f] += 1
                    if lv != rv:
                        mismatch[f] += 1
                        first.setdefault(f, (key, now, lv, rv))
        for user in rng.sample(users, 25):
            a, r = live.user_state(user, now), replay.user_state(user, now)
            for f in FIELDS:
                total[f"sequence.{f}"] += 1
                lv, rv = [getattr(x, f) for x in a.actions], [getattr(x, f) for x in r.actions]
                if lv != rv:
                    mismatch[f"sequence.{f}"] += 1
                    first.setdefault(f"sequence.{f}", (user, now, lv[-6:], rv[-6:]))
            for f in ("counts_3h", "counts_1d"):
                total[f] += 1
                if getattr(a, f) != getattr(r, f):
                    mismatch[f] += 1
                    first.setdefault(f, (user, now, getattr(a, f), getattr(r, f)))
    return total, mismatch, first


@pytest.mark.parametrize("order", ["event time", "poll batches"])
def test_replayed_user_state_equals_the_live_tables(order: str) -> None:
    total, mismatch, first = _compare(order)
    report = {k: f"{mismatch[k]}/{total[k]}" for k in sorted(total)}
    print(f"\n{order}: mismatches per feature {report}")
    assert total["sequence.item_id"] >= 1000
    over = {k: mismatch[k] / total[k] for k in total if mismatch[k] / total[k] > MAX_MISMATCH}
    assert not over, f"features that differ between the tables and the replay: {over}; first cases: {first}"
