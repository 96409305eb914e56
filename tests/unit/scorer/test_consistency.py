"""The online/offline consistency check (issue 28): served inputs logged, replayed and compared.

Pure logic: the served side here is the real ``Scorer`` fed from a replay state (the live tables equal the
replay, ``tests/unit/streams/test_online_offline_consistency.py``), with a stand-in model (a fixed function of
its inputs) because the check compares the model's *inputs*; the worker-side check runs in
``tests/e2e/test_demo.py``.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import replace

import numpy as np
import pytest

from features.assembly import FeatureSpec
from features.events import Impression
from features.predictions import decode_prediction
from features.rpc import parse_score_request
from features.synthetic import synthetic_events
from scorer.blender import Blender
from scorer.calibration.calset import CalibratorHolder, CalibratorSet
from scorer.consistency import ConsistencyChecker, ConsistencyReport, edit_distance, format_report, minus
from scorer.replay_state import ReplayState
from scorer.service import Scorer, sampled

T0 = 1_764_000_000_000
WINDOW_MS, LATENESS_MS = 150_000, 5_000


class StandInModel:
    """Logits as a fixed function of the inputs (the check is about inputs, not the model)."""

    version = "stand-in"
    spec = FeatureSpec()

    def score(self, inputs) -> np.ndarray:
        n = len(inputs.cand_item)
        return (np.tile(np.linspace(-3.0, -1.0, 6), (n, 1)) + 0.1 * inputs.cand_dense[:, :1]
                + 0.01 * float(inputs.user_dense[:7].sum()))


def _scorer(sample: float = 1.0) -> Scorer:
    return Scorer(StandInModel(), CalibratorHolder(CalibratorSet.identity("stand-in")), Blender(),
                  feature_log_sample=sample)


def _body(imp: Impression, ts: int, n: int = 30) -> bytes:
    return json.dumps({
        "user_id": imp.user_id, "request_id": f"check-{ts}", "top_k": 10,
        "context": {"surface": imp.surface, "country": imp.country, "gender": imp.gender, "app_type": "ios",
                    "device_type": "phone", "ts": ts},
        "candidates": [{"item_id": f"i{k}", "item_type": "video" if k % 3 == 0 else "organic",
                        "features": {"item_ctr_prior": 0.01 + 0.001 * k}} for k in range(n)]}).encode()


@functools.lru_cache(maxsize=None)
def _events(users: int, seed: int, rate: float, n: int) -> tuple:
    """The world's stream (generated once per module: the world is the slow part)."""
    return tuple(itertools.islice(synthetic_events(users, seed=seed, rate=rate, start_ms=T0), n))


def _run(stale_every: int = 0, feedback_behind: int = 0, n_events: int = 6000) -> tuple[ConsistencyChecker, int]:
    """Serve a request every 100 events from a state fed like the tables, log it, and check the logs against
    the replay of the same events (given to the checker out of order). ``stale_every``: every k-th request
    is served with an empty user state (a table that lost the user); ``feedback_behind``: the feedback loop
    is served from a state this many events behind (the live view lags by its checkpoints)."""
    events = _events(60, 5, 300.0, n_events)
    served_state = ReplayState(seq_len=256, attribution_ms=WINDOW_MS, lateness_ms=LATENESS_MS)
    behind = ReplayState(seq_len=256, attribution_ms=WINDOW_MS, lateness_ms=LATENESS_MS)
    checker = ConsistencyChecker(WINDOW_MS, LATENESS_MS)
    scorer = _scorer()
    last_imp: Impression | None = None
    served = 0
    due = False
    for i, e in enumerate(events):
        due = due or i % 100 == 99
        # a request at this event's time, before it is applied (and after every event of an earlier time:
        # the tables see the events before a request's time, the replay too)
        if due and last_imp is not None and events[i - 1].ts < e.ts:
            due = False
            t = e.ts
            served_state.advance(t)
            user = served_state.user_state(last_imp.user_id, t)
            if stale_every and served % stale_every == 0:
                user = replace(user, actions=(), counts_3h=type(user.counts_3h)(), counts_1d=type(user.counts_1d)())
            fb = (behind if feedback_behind else served_state).feedback(t, last_imp.country, last_imp.gender)
            out = scorer.score(parse_score_request(_body(last_imp, t)), user, fb, now_ms=t)
            log = decode_prediction(out.log_json)
            assert log.inputs is not None and len(log.inputs.items) == len(log.items) == 10
            checker.add("prediction", log)
            served += 1
        if isinstance(e, Impression):
            served_state.add_impression(e)
            last_imp = e
        else:
            served_state.add_engagements([e])
        if feedback_behind and i >= feedback_behind:
            old = events[i - feedback_behind]
            behind.add_impression(old) if isinstance(old, Impression) else behind.add_engagements([old])
            behind.advance(old.ts)
    for e in reversed(events):  # arrival order does not matter: the checker replays in event time
        checker.add("impression" if isinstance(e, Impression) else "engagement", e)
    checker.drain()
    return checker, served


def test_served_features_equal_the_replayed_ones_when_the_states_agree() -> None:
    checker, served = _run()
    rep = checker.report
    assert rep.requests == served >= 50
    assert rep.sequence.exact == rep.sequence.n == served
    assert sum(1 for v in rep.features.values() if v.n) >= 39 + 4 + 60  # user dense, candidate, calibration
    assert rep.features["hide_profile.item"].n == served * FeatureSpec().hide_len
    assert rep.diverging() == {}, rep.to_dict()


def test_a_stale_user_state_shows_as_diverging_features() -> None:
    checker, served = _run(stale_every=4)
    div = checker.report.diverging()
    assert "sequence.tokens" in div and 0.1 < div["sequence.tokens"] <= 0.3
    assert "hide_profile.item" in div  # the lost user's hides too
    assert "user.user_1d:log_impressions" in div and "calibration.user_1d:log_impressions" in div
    assert not any(k.startswith(("user.feedback", "feedback_loop")) for k in div)  # the feedback loop was right
    assert checker.report.to_dict()["feedback_lag_ms"]["p50"] == 0
    assert checker.report.to_dict()["sequence"]["mean_edit_distance"] > 1.0


def test_a_lagging_feedback_loop_is_dated_and_kept_apart_from_the_other_features() -> None:
    checker, served = _run(feedback_behind=60)
    rep = checker.report.to_dict()
    div = checker.report.diverging()
    assert "feedback_loop.all.impressions" in div and div["feedback_loop.all.impressions"] > 0.5
    assert not [k for k in div if not k.startswith("feedback_loop.")], div  # the rest agree given the served counts
    lag = rep["feedback_lag_ms"]
    assert lag["n"] >= 40 and 50 < lag["p50"] < 2_000  # 60 events of a ~300 events/s stream: ~0.2 s
    text = format_report(rep)
    assert "feedback loop served behind event time: p50" in text


@pytest.mark.parametrize("age_ms, behind_ms, in_flight", [(500, 0, True), (5_000, 0, False), (5_000, 4_000, True),
                                                       (5_000, 2_000, False)])
def test_a_newest_action_not_yet_applied_counts_as_in_flight_only_when_recent(age_ms: int, behind_ms: int,
                                                                               in_flight: bool) -> None:
    """In flight: newer than ``in_flight_ms`` (2 s), plus as long as the served tables were behind their input
    (a worker catching up on a backlog logs how far: ``ServedInputs.behind_ms``)."""
    events = _events(5, 2, 50.0, 2000)
    engagements = [e for e in events if not isinstance(e, Impression)]
    # an action that is its user's only one at its time and the newest for 6 s after
    eng = next(e for e in engagements[20:] if not any(
        o is not e and o.user_id == e.user_id and e.ts <= o.ts <= e.ts + 6_000 for o in engagements))
    imp = next(e for e in events if isinstance(e, Impression) and e.user_id == eng.user_id)
    t = eng.ts + age_ms
    state = ReplayState(seq_len=256, attribution_ms=WINDOW_MS, lateness_ms=LATENESS_MS)
    for e in events:
        if e.ts >= t:
            break
        state.add_impression(e) if isinstance(e, Impression) else state.add_engagements([e])
    state.advance(t)
    user = state.user_state(eng.user_id, t)
    assert user.actions[-1].ts == eng.ts and len(user.actions) >= 2
    # the newest action still on its way to the table: not in its sequence nor in its counters yet
    gone = user.actions[-1:]
    newest_gone = replace(user, actions=user.actions[:-1], counts_3h=minus(user.counts_3h, gone, 0),
                          counts_1d=minus(user.counts_1d, gone, 0), behind_ms=behind_ms)
    log = decode_prediction(_scorer().score(parse_score_request(_body(imp, t)), newest_gone,
                                            state.feedback(t, imp.country, imp.gender), now_ms=t).log_json)
    report = ConsistencyReport(in_flight_ms=2_000)
    report.check(log, state)
    assert report.sequence.exact == 0 and report.sequence.edit_distance == 1
    assert report.sequence.in_flight == (1 if in_flight else 0)
    assert (report.sequence.first is None) == in_flight  # a mismatch keeps its first case
    # in flight: every feature agrees with the state without that action (counters included); else they differ
    assert (report.diverging() == {}) == in_flight, report.diverging()
    assert report.in_flight_requests == (1 if in_flight else 0)
    assert log.inputs.behind_ms == behind_ms and report.behind_requests == (1 if behind_ms else 0)


def test_sampling_by_request_id() -> None:
    ids = [f"r{i}" for i in range(20_000)]
    assert not any(sampled(r, 0.0) for r in ids) and all(sampled(r, 1.0) for r in ids)
    share = sum(sampled(r, 0.1) for r in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert [sampled(r, 0.1) for r in ids[:50]] == [sampled(r, 0.1) for r in ids[:50]]
    body = _body(Impression(event_id="e", user_id="u1", item_id="i1", request_id="r", ts=T0, surface="home",
                            item_type="organic", position=0, country="US", gender="f", app_type="ios",
                            device_type="phone"), T0)
    from features.state import FeedbackSnapshot, UserState

    log = decode_prediction(_scorer(0.0).score(parse_score_request(body), UserState("u1"), FeedbackSnapshot(),
                                               now_ms=T0).log_json)
    assert log.inputs is None


def test_edit_distance() -> None:
    assert edit_distance([], []) == 0
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 2, 3], [2, 3]) == 1
    assert edit_distance([1, 2, 3], [3, 2, 1]) == 2
    assert edit_distance([1, 2], [4, 5, 6]) == 3
