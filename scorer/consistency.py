"""Online/offline feature consistency (issue 28): what ``/score`` served against what the replay computes.

A sampled share of score requests (``FEEDRANK_FEATURE_LOG_SAMPLE``) logs its exact model inputs with its
predictions (``features.predictions.ServedInputs``). The check replays the event topics through the
training/replay path (``scorer.replay_state.ReplayState`` -> ``features.assembly.assemble`` and
``features.calibration_features``) to the request's event time and compares, feature by feature:

- every model input: the user dense features (``USER_DENSE_NAMES``), the candidates' dense
  features (``CAND_DENSE_NAMES``), the action sequence (its ``(item, action, type)`` tokens by edit distance,
  and the age buckets where the tokens agree), the long-term hide profile (``hide_item``, slot by slot);
- every calibration feature but the logit columns (the check feeds the calibration features the served
  logits, so those agree by construction and would only pad the count).

Per feature: how many values were compared, the share that differ (beyond ``ABS_TOL + REL_TOL * |value|``:
float32 inputs and logged values rounded to 6 significant digits), the mean absolute and relative error.

Two causes are expected and kept apart:

- the feedback loop: the live view takes each partition's counts at its checkpoints, so it is served a few
  seconds behind event time. The log carries the counts served; the check compares them with the replay's
  (``feedback_loop.*``) and dates them (``feedback_lag_ms``: the age of the newest impression they lack), and
  computes every other feature from the *served* counts, so a feature that differs differs for another
  reason;
- events *in flight*: the tables serve what they have applied when the request arrives; the replay has every
  event up to the request's event time. A served sequence that equals the replayed one without its newest
  actions of the last ``in_flight_ms`` is counted as in flight, not as a mismatch; so are those of the last
  ``in_flight_ms + behind_ms`` when the log says its tables were ``behind_ms`` behind their input (a worker
  catching up on a backlog; ``ServedInputs.behind_ms``, at most ``MAX_BEHIND_MS``).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from features.assembly import CAND_DENSE_NAMES, USER_DENSE_NAMES, FeatureSpec, assemble
from features.calibration_features import CALIBRATION_FEATURE_NAMES, calibration_feature_matrix, set_positions
from features.candidates import CandidateColumns
from features.events import ACTIONS, Engagement, EventDecodeError, Impression, decode_event
from features.predictions import PredictionDecodeError, PredictionLog, decode_prediction
from features.state import Counts, FeedbackSnapshot, ScoreContext, segment_keys

from .replay_state import ReplayState

ABS_TOL = 1e-4
REL_TOL = 1e-4
#: the issue's goal: at most this share of a feature's values differ
MAX_MISMATCH = 0.001
#: the most a request's in-flight window grows by its tables' lag (``ServedInputs.behind_ms``): a worker
#: further behind serves a state the check does not excuse
MAX_BEHIND_MS = 60_000
_COUNT_NAMES = ("impressions", *ACTIONS)
_USER_3H_IMPRESSIONS = USER_DENSE_NAMES.index("user_3h:log_impressions")
_CAL_COMPARED = [i for i, n in enumerate(CALIBRATION_FEATURE_NAMES) if not n.startswith("logit")]


def minus(c: Counts, dropped: Sequence[Any], impressions: int) -> Counts:
    """``c`` without the ``dropped`` actions and ``impressions`` impressions (in flight when served)."""
    acts = dict(c.actions)
    for a in dropped:
        acts[a.action] = acts.get(a.action, 0) - 1
    return Counts(c.impressions - impressions, {a: n for a, n in acts.items() if n})


@dataclass
class FeatureStats:
    n: int = 0
    mismatches: int = 0
    abs_err: float = 0.0
    rel_err: float = 0.0
    first: Any = None  # the first mismatch: (request_id, served, replayed)

    def add(self, served: np.ndarray, replayed: np.ndarray, where: str) -> None:
        s, r = np.asarray(served, dtype=np.float64).ravel(), np.asarray(replayed, dtype=np.float64).ravel()
        diff = np.abs(s - r)
        bad = diff > ABS_TOL + REL_TOL * np.abs(r)
        self.n += len(s)
        self.mismatches += int(bad.sum())
        self.abs_err += float(diff.sum())
        self.rel_err += float((diff / np.maximum(np.abs(r), 1e-9)).clip(max=1.0).sum())
        if self.first is None and bad.any():
            i = int(np.flatnonzero(bad)[0])
            self.first = (where, float(s[i]), float(r[i]))

    def to_dict(self) -> dict[str, Any]:
        n = max(self.n, 1)
        return {"n": self.n, "mismatch_rate": self.mismatches / n, "mean_abs_error": self.abs_err / n,
                "mean_rel_error": self.rel_err / n, "first_mismatch": self.first}


@dataclass
class SequenceStats:
    n: int = 0
    exact: int = 0
    in_flight: int = 0
    edit_distance: int = 0
    first: Any = None

    def to_dict(self) -> dict[str, Any]:
        n = max(self.n, 1)
        return {"n": self.n, "mismatch_rate": (self.n - self.exact - self.in_flight) / n,
                "in_flight_rate": self.in_flight / n, "mean_edit_distance": self.edit_distance / n,
                "first_mismatch": self.first}


def edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Levenshtein distance between two token sequences (insert, delete, substitute: 1 each)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


@dataclass
class ConsistencyReport:
    """Per-feature agreement between served and replayed features, summed over the checked requests."""

    in_flight_ms: int = 2_000
    requests: int = 0
    features: dict[str, FeatureStats] = field(default_factory=dict)
    sequence: SequenceStats = field(default_factory=SequenceStats)
    feedback_lag_ms: list[int] = field(default_factory=list)
    in_flight_requests: int = 0
    #: requests served while the tables were behind their input (``ServedInputs.behind_ms`` > 0)
    behind_requests: int = 0

    def _stats(self, name: str) -> FeatureStats:
        st = self.features.get(name)
        if st is None:
            st = self.features[name] = FeatureStats()
        return st

    def add_columns(self, prefix: str, names: Sequence[str], served: np.ndarray, replayed: np.ndarray,
                    where: str) -> None:
        """Compare ``[rows, len(names)]`` (or ``[len(names)]``) matrices column by column."""
        s, r = np.atleast_2d(served), np.atleast_2d(replayed)
        for j, name in enumerate(names):
            self._stats(f"{prefix}.{name}").add(s[:, j], r[:, j], where)

    def check(self, log: PredictionLog, replay: ReplayState, impression_times: Sequence[int] | None = None,
              recent_impressions: Mapping[str, Sequence[int]] | None = None) -> None:
        """Compare one sampled request's served inputs with the replay's at its event time (``replay`` advanced
        to it). ``impression_times``: the event times of the impressions replayed so far, oldest first (to
        date the served feedback loop); ``recent_impressions``: per user, the event times of their latest ones
        (at least the last ``in_flight_ms + MAX_BEHIND_MS``), for the user's impressions in flight."""
        inp = log.inputs
        if inp is None:
            return
        self.requests += 1
        spec = FeatureSpec(**inp.spec)
        ctx = ScoreContext(**inp.context)
        user = replay.user_state(log.user_id, ctx.ts)
        fb = replay.feedback(ctx.ts, ctx.country, ctx.gender)
        where = f"{log.request_id} ({log.user_id} at {ctx.ts})"
        if inp.feedback:  # the feedback loop as served against the replay's; the rest from the served counts
            for key, kind in zip(segment_keys(ctx.country, ctx.gender), ("all", "country", "gender_country")):
                c = fb.get(key)
                self.add_columns(f"feedback_loop.{kind}", _COUNT_NAMES, np.asarray(inp.feedback.get(key, [0] * 7)),
                                 np.asarray([c.impressions, *(c.actions.get(a, 0) for a in ACTIONS)]), where)
            self._date_feedback(inp.feedback.get("all", [0])[0], fb.get("all").impressions, ctx.ts, impression_times)
            fb = FeedbackSnapshot({k: Counts(v[0], {a: n for a, n in zip(ACTIONS, v[1:]) if n})
                                   for k, v in inp.feedback.items()})
        cands = CandidateColumns.build([it.item_id for it in log.items], [x.item_type for x in inp.items],
                                       [x.position for x in inp.items], [x.features for x in inp.items])
        m = assemble(user, fb, ctx, cands, spec)
        # in flight: what was produced within ``in_flight_ms``, and within as long as the tables were behind
        window = self.in_flight_ms + min(inp.behind_ms, MAX_BEHIND_MS)
        if inp.behind_ms:
            self.behind_requests += 1
        k = self._sequence(inp, m, user, ctx.ts, where, window)
        j = self._impressions_in_flight(inp, user, ctx.ts, (recent_impressions or {}).get(log.user_id, ()), window)
        if k > 0 or j:  # compare with the state the tables had: the replay's without what was still in flight
            k = max(k, 0)
            dropped = user.actions[len(user.actions) - k:]
            user = replace(user, actions=user.actions[:len(user.actions) - k],
                           counts_3h=minus(user.counts_3h, dropped, j), counts_1d=minus(user.counts_1d, dropped, j))
            m = assemble(user, fb, ctx, cands, spec)
            self.in_flight_requests += 1
        if k >= 0:
            self._stats("sequence.age").add(np.asarray(inp.seq_age), m.seq_age[m.seq_mask], where)
        served_hides = np.zeros(spec.hide_len, dtype=np.int64)
        served_hides[: len(inp.hide_item)] = inp.hide_item[: spec.hide_len]
        self._stats("hide_profile.item").add(served_hides, m.hide_item, where)
        self.add_columns("user", USER_DENSE_NAMES, np.asarray(inp.user_dense), m.user_dense, where)
        self.add_columns("candidate", CAND_DENSE_NAMES, np.asarray([x.cand_dense for x in inp.items]),
                         m.cand_dense, where)
        logits = np.asarray([[it.raw[a] for a in ACTIONS] for it in log.items], dtype=np.float64)
        X = calibration_feature_matrix(logits, user, fb, ctx, cands)
        set_positions(X, np.asarray([it.position for it in log.items]))
        served = np.asarray([[it.features.get(n, math.nan) for n in CALIBRATION_FEATURE_NAMES] for it in log.items])
        self.add_columns("calibration", [CALIBRATION_FEATURE_NAMES[i] for i in _CAL_COMPARED],
                         served[:, _CAL_COMPARED], X[:, _CAL_COMPARED], where)

    def _date_feedback(self, served: int, replayed: int, now_ms: int, times: Sequence[int] | None) -> None:
        """How far behind event time the served feedback loop was: the age of the newest impression it lacked
        (0 when it had them all; negative: it had impressions the replay has not reached yet)."""
        if times is None:
            return
        missing = replayed - served
        if missing <= 0:
            lag = 0 if missing == 0 else -1
        else:
            lag = now_ms - times[-missing] if missing <= len(times) else now_ms - (times[0] if times else now_ms)
        self.feedback_lag_ms.append(int(lag))

    def _sequence(self, inp: Any, m: Any, user: Any, now_ms: int, where: str, window: int) -> int:
        """Compare the sequence tokens; returns how many of the replay's newest actions were in flight (0 when
        equal; -1 when they differ otherwise)."""
        served = list(zip(inp.seq_item, inp.seq_action, inp.seq_type))
        present = m.seq_mask
        replayed = list(zip(m.seq_item[present].tolist(), m.seq_action[present].tolist(),
                            m.seq_type[present].tolist()))
        st = self.sequence
        st.n += 1
        st.edit_distance += edit_distance(served, replayed)
        if served == replayed:
            st.exact += 1
            return 0
        # in flight: the replay's newest actions of the last ``window`` ms not applied yet when served
        newest = user.actions[::-1]
        k = 0
        while k < len(newest) and newest[k].ts > now_ms - window:
            k += 1
            if replayed[k:] == served[:len(replayed) - k]:
                st.in_flight += 1
                return k
        if st.first is None:
            st.first = (where, served[:5], replayed[:5])
        return -1

    def _impressions_in_flight(self, inp: Any, user: Any, now_ms: int, recent: Sequence[int], window: int) -> int:
        """The user's impressions of the last ``window`` ms (``recent``: the event times of their latest ones)
        that the served counters lacked (0 if none or if more are missing than that: then it is a mismatch)."""
        served = int(round(math.expm1(inp.user_dense[_USER_3H_IMPRESSIONS])))
        missing = user.counts_3h.impressions - served
        if missing <= 0:
            return 0
        fresh = sum(1 for ts in recent if ts > now_ms - window)
        return missing if missing <= fresh else 0

    def to_dict(self) -> dict[str, Any]:
        lag = np.asarray(self.feedback_lag_ms, dtype=np.float64)
        ahead = int((lag < 0).sum())
        lag = lag[lag >= 0]
        return {"requests": self.requests, "in_flight_ms": self.in_flight_ms, "max_mismatch": MAX_MISMATCH,
                "in_flight_requests": self.in_flight_requests, "behind_requests": self.behind_requests,
                "max_behind_ms": MAX_BEHIND_MS,
                "feedback_lag_ms": {"n": len(lag), "p50": float(np.percentile(lag, 50)) if len(lag) else None,
                                    "p99": float(np.percentile(lag, 99)) if len(lag) else None,
                                    "max": float(lag.max()) if len(lag) else None, "ahead": ahead},
                "sequence": self.sequence.to_dict(),
                "features": {k: v.to_dict() for k, v in sorted(self.features.items())}}

    def diverging(self) -> dict[str, float]:
        """Features whose mismatch rate is over ``MAX_MISMATCH`` (the sequence's counts in-flight apart)."""
        out = {k: v.mismatches / v.n for k, v in self.features.items() if v.n and v.mismatches / v.n > MAX_MISMATCH}
        seq = self.sequence.to_dict()
        if self.sequence.n and seq["mismatch_rate"] > MAX_MISMATCH:
            out["sequence.tokens"] = seq["mismatch_rate"]
        return out


def decode_record(kind: str, raw: bytes | None) -> Any:
    """An input record as the check replays it, or None for one the worker dead-letters (no table sees it)."""
    try:
        if kind == "prediction":
            return decode_prediction(raw)
        return decode_event(raw, Impression if kind == "impression" else Engagement)
    except (EventDecodeError, PredictionDecodeError):
        return None


class ConsistencyChecker:
    """Events and sampled prediction logs in any order -> the replay in event-time order -> the report.

    ``add`` buffers; ``release(upto_ms)`` replays everything up to that event time (a follower passes its
    watermark less a hold-back for out-of-order records); ``drain`` replays the rest. At one event time a
    prediction log goes first: the request was served before its items were shown.
    """

    _RANK = {"prediction": 0, "impression": 1, "engagement": 2}

    def __init__(self, attribution_ms: int, lateness_ms: int, in_flight_ms: int = 2_000) -> None:
        self.replay = ReplayState(seq_len=256, attribution_ms=attribution_ms, lateness_ms=lateness_ms)
        self.report = ConsistencyReport(in_flight_ms=in_flight_ms)
        self._heap: list[tuple[int, int, int, Any]] = []
        self._seq = itertools.count()
        self._impression_times: deque[int] = deque(maxlen=500_000)
        #: the impressions of the longest in-flight window (``in_flight_ms`` + ``MAX_BEHIND_MS``): (ts, user) in
        #: event-time order to expire them, and each user's event times (a check counts only its user's)
        self._recent: deque[tuple[int, str]] = deque()
        self._recent_by_user: dict[str, deque[int]] = {}
        self.released_ms = 0

    def add(self, kind: str, record: Any) -> None:
        """``kind``: impression, engagement or prediction (a ``PredictionLog``; only sampled ones are checked)."""
        if kind == "prediction" and record.inputs is None:
            return
        heapq.heappush(self._heap, (record.ts, self._RANK[kind], next(self._seq), record))

    def release(self, upto_ms: int) -> int:
        """Replay the buffered records with event time <= ``upto_ms``; returns how many."""
        n = 0
        heap = self._heap
        while heap and heap[0][0] <= upto_ms:
            ts, rank, _, rec = heapq.heappop(heap)
            n += 1
            if rank == 1:
                self.replay.add_impression(rec)
                self._impression_times.append(ts)
                self._recent.append((ts, rec.user_id))
                self._recent_by_user.setdefault(rec.user_id, deque()).append(ts)
                while self._recent[0][0] < ts - self.report.in_flight_ms - MAX_BEHIND_MS:
                    user = self._recent.popleft()[1]
                    times = self._recent_by_user[user]
                    times.popleft()  # the user's oldest: both deques are in event-time order
                    if not times:
                        del self._recent_by_user[user]
            elif rank == 2:
                self.replay.add_engagements([rec])
            else:
                self.replay.advance(ts)
                self.report.check(rec, self.replay, self._impression_times, self._recent_by_user)
        self.released_ms = max(self.released_ms, upto_ms)
        return n

    def drain(self) -> int:
        return self.release(max((r[0] for r in self._heap), default=0))


def format_report(report: dict[str, Any], top: int = 12) -> str:
    """The report as text: the sequence, then the features that differ most (and how many agree fully)."""
    seq = report["sequence"]
    feats = report["features"]
    lines = [f"online/offline consistency over {report['requests']:,} sampled requests",
             f"  requests with events in flight (< {report['in_flight_ms']} ms old, not applied when served; compared "
             f"with the state without them): {report.get('in_flight_requests', 0):,}",
             f"  requests served while the tables were behind their input (in flight: also what was produced "
             f"within that lag, up to {report.get('max_behind_ms', MAX_BEHIND_MS) // 1000} s): "
             f"{report.get('behind_requests', 0):,}",
             f"  sequence (item, action, type): {seq['n']:,} compared, mismatch {seq['mismatch_rate']:.2%}, "
             f"in flight (< {report['in_flight_ms']} ms old) {seq['in_flight_rate']:.2%}, mean edit distance "
             f"{seq['mean_edit_distance']:.3f}"]
    lag = report.get("feedback_lag_ms") or {}
    if lag.get("n"):
        lines.append(f"  feedback loop served behind event time: p50 {lag['p50']:.0f} ms, p99 {lag['p99']:.0f} ms, "
                     f"max {lag['max']:.0f} ms over {lag['n']:,} requests" + (
                         f" ({lag['ahead']} ahead of the replay)" if lag.get("ahead") else ""))
    ranked = sorted(feats.items(), key=lambda kv: (-kv[1]["mismatch_rate"], -kv[1]["mean_rel_error"]))
    clean = sum(1 for _, v in ranked if v["mismatch_rate"] == 0)
    lines.append(f"  features: {len(feats)} compared, {clean} agree on every value; goal mismatch <= "
                 f"{report['max_mismatch']:.1%} per feature")
    for name, v in ranked[:top]:
        if v["mismatch_rate"] == 0:
            break
        lines.append(f"  {name:>40}: mismatch {v['mismatch_rate']:7.2%} of {v['n']:,}, mean abs error "
                     f"{v['mean_abs_error']:.3g}, mean rel error {v['mean_rel_error']:.3g}")
    return "\n".join(lines)


__all__ = ["ConsistencyChecker", "ConsistencyReport", "decode_record", "minus", "FeatureStats", "MAX_MISMATCH", "SequenceStats", "edit_distance", "format_report"]
