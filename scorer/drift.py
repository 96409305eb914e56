"""Calibration-drift monitoring: windowed accumulators over event time and per-task alerts.

``DriftMonitor.observe`` folds calibrated predictions and their labels into
tiles (e.g. 30 s tiles for a 5-minute window, 5-minute tiles for a 1-hour one);
``record(now_ms)`` sums the tiles inside each sliding window and computes, per
task, calibration error, ECE (10 bins), log loss, reliability bins, n and
positives, and advances each task's alert state machine. The record is plain
JSON (``None`` for undefined values) for the ``calibration-drift`` topic; its
schema is in ``docs/calibration.md``. Windows slide by whole tiles. Labels
older than the longest window behind the newest event time are dropped and
counted as ``late``.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Sequence

import numpy as np

from features.events import ACTIONS

from .metrics import (INTERVAL_Z, N_BINS, bin_sums, calibration_error_from_sums, calibration_error_interval,
                      ece_from_bins, log_loss_sum)

log = logging.getLogger(__name__)

SCHEMA = "feedrank.calibration-drift/1"
T = len(ACTIONS)
# per task: n, positives, sum_pred, sum_logloss, then N_BINS counts, sums of pred, sums of labels
_N, _POS, _SP, _LL = 0, 1, 2, 3
_BC, _BP, _BY = 4, 4 + N_BINS, 4 + 2 * N_BINS
_K = 4 + 3 * N_BINS


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A sliding window of ``length_ms`` made of tiles of ``tile_ms`` (must divide it)."""

    name: str
    length_ms: int
    tile_ms: int

    def __post_init__(self) -> None:
        if self.tile_ms <= 0 or self.length_ms % self.tile_ms:
            raise ValueError(f"window {self.name}: tile_ms {self.tile_ms} must divide length_ms {self.length_ms}")


DEFAULT_WINDOWS: tuple[WindowSpec, ...] = (
    WindowSpec("5m", 5 * 60_000, 30_000),
    WindowSpec("1h", 60 * 60_000, 5 * 60_000),
)


class AlertState(str, Enum):
    OK = "ok"
    OVER = "over"  # predicts more actions than happen: calibration error above the band
    UNDER = "under"  # predicts fewer: below the band


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Alert when a task's calibration error in ``window`` leaves ``[low, high]``
    with at least ``min_positives`` positives; recover inside ``[recover_low, recover_high]``
    (None: the band; the default, narrower, is the hysteresis).

    With fewer positives a task is still *gathering* labels, and its 99.9 % interval on
    sum(p) / E[sum(y)] decides: an interval wholly above ``high`` (or below ``low``) alerts, one
    wholly inside the recovery band recovers, anything else keeps the state. So a task far off
    alerts on few positives instead of never, and a calibrated one does not on noise."""

    window: str = "5m"
    low: float = 0.85
    high: float = 1.15
    #: measured in the live closed loop (``feedrank bench calibration``, 2026-12-07): with 200, a task at 0.81
    #: on exactly 200 positives alerted (its 99.9 % interval 0.67..0.99 cannot tell it from the band); a
    #: recovery band equal to the alert band made a task at 0.84-0.86 on 1,500 positives flap four times
    min_positives: int = 500
    recover_low: float | None = 0.9
    recover_high: float | None = 1.1


@dataclass
class _TaskAlert:
    state: AlertState = AlertState.OK
    since_ms: int = 0
    last_error: float | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    task: str
    old: AlertState
    new: AlertState
    ts: int
    calibration_error: float | None
    window: str

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "from": self.old.value, "to": self.new.value, "ts": self.ts,
                "calibration_error": self.calibration_error, "window": self.window}


class WindowAccumulator:
    """Tiles of sufficient statistics for one window spec."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.tiles: dict[int, np.ndarray] = {}

    def add(self, tile: int, stats: np.ndarray) -> None:
        cur = self.tiles.get(tile)
        if cur is None:
            self.tiles[tile] = stats.copy()
        else:
            cur += stats

    def window_stats(self, now_ms: int) -> tuple[np.ndarray, int, int]:
        """Summed ``[T, K]`` stats of the tiles in the window ending at ``now_ms``, and its bounds."""
        n_tiles = self.spec.length_ms // self.spec.tile_ms
        last = now_ms // self.spec.tile_ms
        first = last - n_tiles + 1
        for k in [k for k in self.tiles if k < first]:
            del self.tiles[k]
        out = np.zeros((T, _K))
        for k, s in self.tiles.items():
            if first <= k <= last:
                out += s
        return out, first * self.spec.tile_ms, (last + 1) * self.spec.tile_ms


def task_stats(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sufficient statistics ``[K]`` of one task's predictions ``p`` and labels ``y`` (summable over tiles)."""
    s = np.zeros(_K)
    s[_N] = len(p)
    s[_POS] = y.sum()
    s[_SP] = p.sum()
    s[_LL] = log_loss_sum(p, y)
    s[_BC:_BP], s[_BP:_BY], s[_BY:] = bin_sums(p, y, N_BINS)
    return s


def task_summary(s: np.ndarray) -> dict[str, Any]:
    """JSON-ready metrics of one task from its ``[K]`` sufficient statistics."""
    n, pos = int(s[_N]), int(round(s[_POS]))
    interval = calibration_error_interval(s[_SP], s[_POS])
    return {
        "n": n,
        "positives": pos,
        "sum_pred": float(s[_SP]),
        "calibration_error": calibration_error_from_sums(s[_SP], s[_POS]),
        "interval": list(interval) if interval is not None else None,
        "ece": ece_from_bins(s[_BC:_BP], s[_BP:_BY], s[_BY:]),
        "log_loss": float(s[_LL] / n) if n else None,
        "bins": {
            "edges": [i / N_BINS for i in range(N_BINS + 1)],
            "counts": [int(c) for c in s[_BC:_BP]],
            "sum_pred": [float(v) for v in s[_BP:_BY]],
            "sum_label": [float(v) for v in s[_BY:]],
        },
    }


def format_interval(interval: Sequence[float | None] | None) -> str:
    """A drift record's ``interval`` as ``low..high`` (``inf`` without an upper bound, ``-`` without one at all)."""
    if not interval:
        return "-"
    low, high = interval
    return f"{low:.2f}..{'inf' if high is None else f'{high:.2f}'}"


class DriftMonitor:
    """Per-task calibration metrics over sliding event-time windows, with alerting.

    Args:
        windows: the sliding windows to report.
        alert: alert band and window (its ``window`` must be one of ``windows``).
        publish_interval_ms: ``maybe_record`` returns a record at most this often (event time).
    """

    def __init__(
        self,
        windows: Sequence[WindowSpec] = DEFAULT_WINDOWS,
        alert: AlertConfig = AlertConfig(),
        publish_interval_ms: int = 60_000,
        model_version: str = "",
        calibrator_version: int = 0,
    ) -> None:
        names = [w.name for w in windows]
        if alert.window not in names:
            raise ValueError(f"alert window {alert.window!r} is not one of the configured windows {names}")
        self.windows = {w.name: WindowAccumulator(w) for w in windows}
        self.alert = alert
        self.publish_interval_ms = publish_interval_ms
        self.model_version = model_version
        self.calibrator_version = calibrator_version
        self.alerts = {a: _TaskAlert() for a in ACTIONS}
        self.watermark_ms = 0
        self.late = 0
        self._next_publish_ms: int | None = None
        self._horizon_ms = max(w.length_ms for w in windows)

    def observe(self, ts: np.ndarray, p: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Fold in ``N`` labeled predictions: ``ts [N]`` epoch ms, ``p``/``y``/``mask`` ``[N, T]``."""
        ts = np.asarray(ts, dtype=np.int64)
        if len(ts) == 0:
            return
        p = np.asarray(p, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        mask = np.ones(p.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if p.shape != (len(ts), T) or y.shape != p.shape or mask.shape != p.shape:
            raise ValueError(f"p, y and mask must be [{len(ts)}, {T}], got {p.shape}, {y.shape}, {mask.shape}")
        mask = mask & np.isfinite(p)  # a row whose served probability was not logged does not count
        p = np.nan_to_num(p)
        self.watermark_ms = max(self.watermark_ms, int(ts.max()))
        fresh = ts > self.watermark_ms - self._horizon_ms
        self.late += int((~fresh).sum())
        for acc in self.windows.values():
            tile_of = ts // acc.spec.tile_ms
            for tile in np.unique(tile_of[fresh]):
                rows = fresh & (tile_of == tile)
                stats = np.zeros((T, _K))
                for t in range(T):
                    r = rows & mask[:, t]
                    if r.any():
                        stats[t] = task_stats(p[r, t], y[r, t])
                acc.add(int(tile), stats)

    def _evaluate(self, summaries: Mapping[str, Mapping[str, Any]], now_ms: int) -> list[Transition]:
        cfg = self.alert
        lo_r = cfg.low if cfg.recover_low is None else cfg.recover_low
        hi_r = cfg.high if cfg.recover_high is None else cfg.recover_high
        out: list[Transition] = []
        for a in ACTIONS:
            s = summaries[a]
            st = self.alerts[a]
            err = s["calibration_error"]
            st.last_error = err
            if not self.gathering(s) and err is not None:
                if st.state is AlertState.OK:
                    new = AlertState.OVER if err > cfg.high else AlertState.UNDER if err < cfg.low else AlertState.OK
                else:
                    new = AlertState.OK if lo_r <= err <= hi_r else (
                        AlertState.OVER if err > hi_r else AlertState.UNDER)
                why = f"error {err:.3f}"
            else:
                new = self._judge_thin(st.state, s.get("interval"), lo_r, hi_r)
                why = (f"{s['positives']} positives, 99.9 % interval {format_interval(s.get('interval'))}"
                       + (f", error {err:.3f}" if err is not None else ""))
            if new is not st.state:
                tr = Transition(a, st.state, new, now_ms, err, cfg.window)
                out.append(tr)
                (log.warning if new is not AlertState.OK else log.info)(
                    "calibration drift %s: task %s %s -> %s (%s over %s, band %.2f..%.2f)",
                    "alert" if new is not AlertState.OK else "recovered", a, st.state.value, new.value, why,
                    cfg.window, cfg.low, cfg.high)
                st.state, st.since_ms = new, now_ms
        return out

    def gathering(self, summary: Mapping[str, Any]) -> bool:
        """Too few positives in a task's window summary for its point value to alert: the interval decides."""
        return summary["positives"] < self.alert.min_positives

    def _judge_thin(self, state: AlertState, interval: Sequence[float | None] | None, lo_r: float,
                    hi_r: float) -> AlertState:
        """A gathering task's state from its interval (see ``AlertConfig``)."""
        if interval is None:
            return state
        low, high = interval
        if low > self.alert.high:
            return AlertState.OVER
        if high is not None and high < self.alert.low:
            return AlertState.UNDER
        if state is not AlertState.OK and high is not None and lo_r <= low and high <= hi_r:
            return AlertState.OK
        return state

    def record(self, now_ms: int | None = None) -> dict[str, Any]:
        """The drift record at ``now_ms`` (default: the newest event time seen); advances alert states."""
        now = self.watermark_ms if now_ms is None else int(now_ms)
        windows: dict[str, Any] = {}
        for name, acc in self.windows.items():
            stats, start, end = acc.window_stats(now)
            windows[name] = {"start_ms": start, "end_ms": end,
                             "tasks": {a: task_summary(stats[t]) for t, a in enumerate(ACTIONS)}}
        judged = windows[self.alert.window]["tasks"]
        transitions = self._evaluate(judged, now)
        return {
            "schema": SCHEMA,
            "ts": now,
            "model_version": self.model_version,
            "calibrator_version": self.calibrator_version,
            "late": self.late,
            "alert_config": {"window": self.alert.window, "low": self.alert.low, "high": self.alert.high,
                             "min_positives": self.alert.min_positives, "interval_z": INTERVAL_Z},
            "windows": windows,
            "alerts": {a: {"state": s.state.value, "since_ms": s.since_ms, "calibration_error": s.last_error,
                           "interval": judged[a]["interval"], "gathering": self.gathering(judged[a])}
                       for a, s in self.alerts.items()},
            "transitions": [t.to_dict() for t in transitions],
        }

    def maybe_record(self, now_ms: int) -> dict[str, Any] | None:
        """A record when the publish interval has passed since the last one (event time), else None."""
        if self._next_publish_ms is None:
            self._next_publish_ms = (now_ms // self.publish_interval_ms + 1) * self.publish_interval_ms
            return None
        if now_ms < self._next_publish_ms:
            return None
        self._next_publish_ms = (now_ms // self.publish_interval_ms + 1) * self.publish_interval_ms
        return self.record(now_ms)

    def state(self, task: str) -> AlertState:
        return self.alerts[task].state

    def to_state(self) -> dict[str, Any]:
        """Everything ``record`` depends on, JSON-ready, so a restarted trainer resumes the same windows."""
        return {
            "windows": {name: {str(k): base64.b64encode(v.astype("<f8").tobytes()).decode()
                               for k, v in acc.tiles.items()} for name, acc in self.windows.items()},
            "alerts": {a: [s.state.value, s.since_ms, s.last_error] for a, s in self.alerts.items()},
            "watermark_ms": self.watermark_ms,
            "late": self.late,
            "next_publish_ms": self._next_publish_ms,
            "calibrator_version": self.calibrator_version,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume from ``to_state``'s output; windows this monitor does not have are ignored."""
        for name, tiles in state["windows"].items():
            acc = self.windows.get(name)
            if acc is None:
                continue
            acc.tiles = {int(k): np.frombuffer(base64.b64decode(v), dtype="<f8").reshape(T, _K).copy()
                         for k, v in tiles.items()}
        for a, (st, since, err) in state["alerts"].items():
            if a in self.alerts:
                self.alerts[a] = _TaskAlert(AlertState(st), int(since), err)
        self.watermark_ms = int(state["watermark_ms"])
        self.late = int(state["late"])
        self._next_publish_ms = state["next_publish_ms"]
        self.calibrator_version = state.get("calibrator_version", self.calibrator_version)


__all__ = ["AlertConfig", "AlertState", "DEFAULT_WINDOWS", "DriftMonitor", "SCHEMA", "Transition", "WindowSpec",
           "format_interval", "task_stats", "task_summary"]
