"""The live calibration benchmark's figures, from made-up polls of ``/calibration`` (pure logic)."""

from __future__ import annotations

import pytest

from features.events import ACTIONS
from streams.tools.bench_calibration import LiveCalibrationConfig, Sample, format_summary, format_table, summarize


def _sample(t: float, ce: float = 1.0, positives: int = 300, state: str = "ok", **per_task: tuple) -> Sample:
    """Every task at (ce, positives, state) unless ``per_task[task] = (ce, positives, state)``."""
    tasks = {}
    for a in ACTIONS:
        c, p, st = per_task.get(a, (ce, positives, state))
        tasks[a] = {"n": 10 * p, "positives": p, "calibration_error": c, "interval": [c * 0.9, c * 1.1],
                    "ece": 0.01, "state": st, "gathering": p < 200}
    return Sample(t, tasks)


def test_band_entry_counts_from_the_first_labels_and_needs_to_stay() -> None:
    samples = [Sample(0.0), Sample(30.0),  # no drift record yet
               _sample(60.0, ce=0.7, positives=20),  # first labels
               _sample(120.0, ce=0.95),
               _sample(180.0, ce=1.3),  # leaves the band again: entry is the later poll
               _sample(240.0, ce=1.05), _sample(300.0, ce=0.98)]
    res = summarize(samples, shift_s=None)
    assert res["first_labels_s"] == 60.0
    assert res["band_entry_s"]["click"] == 180.0
    assert res["goal_met"] is True  # read at the poll 180 s after the first labels (240 s): in band
    assert res["goal_sample_s"] == 240.0
    assert res["false_alerts"] == 0 and res["alert_after_shift_s"] is None


def test_few_positives_never_count_as_in_band() -> None:
    samples = [_sample(60.0, positives=50), _sample(120.0, positives=50, hide=(1.0, 150, "ok"))]
    res = summarize(samples, shift_s=None)
    assert res["band_entry_s"]["click"] is None
    assert res["band_entry_s"]["hide"] == 60.0
    assert res["goal_tasks"] == []  # nobody has 100 positives at the poll 180 s after the first labels


def test_goal_is_read_three_minutes_after_the_first_labels() -> None:
    samples = [_sample(60.0, ce=0.6, positives=30), _sample(180.0, ce=1.2),
               _sample(250.0, ce=1.05, hide=(0.5, 40, "ok")), _sample(400.0, ce=1.5)]
    res = summarize(samples, shift_s=None)
    assert res["goal_sample_s"] == 250.0 and "hide" not in res["goal_tasks"]  # 40 positives: not judged
    assert res["goal_met"] is True and res["goal_at"]["click"] == {"calibration_error": 1.05, "ece": 0.01,
                                                                   "positives": 300, "interval": [1.05 * 0.9, 1.05 * 1.1]}
    samples[2] = _sample(250.0, ce=1.05, click=(1.05, 300, "ok"), repin=(0.95, 120, "ok"))
    samples[2].tasks["video_view_10s"]["ece"] = 0.03
    res = summarize(samples, shift_s=None)
    assert res["goal_met"] is False  # one task's ECE over 0.02
    text = format_summary(res, LiveCalibrationConfig(shift_minute=0))
    assert "goal (180 s after the first labels" in text
    # each goal task's reading with the positives it rests on and its interval: how far chance moves it
    assert "repin 0.95/0.010 on 120 positives (99.9 % 0.85..1.04)" in text


def test_shift_alert_and_recovery_times_and_false_alerts() -> None:
    samples = [_sample(60.0), _sample(120.0, click=(1.3, 300, "over")), _sample(180.0),  # a false alert
               _sample(600.0), _sample(640.0, hide=(1.2, 300, "over")),  # after the shift, not its direction
               _sample(690.0, click=(0.8, 400, "ok")),
               _sample(780.0, click=(0.7, 500, "under")), _sample(900.0, click=(0.8, 500, "under")),
               _sample(1200.0, click=(0.95, 500, "ok"))]
    res = summarize(samples, shift_s=600.0)
    assert res["false_alerts"] == 1
    assert res["alert_after_shift_s"] == 180.0 and res["alert_task"] == "click"
    assert res["recovered_after_shift_s"] == 600.0
    assert [(a["task"], a["to"]) for a in res["alerts"]] == [("click", "over"), ("click", "ok"), ("hide", "over"),
                                                             ("hide", "ok"), ("click", "under"), ("click", "ok")]
    text = format_summary(res, LiveCalibrationConfig(shift_minute=10))
    assert "first alert 180 s after it (click)" in text and "every task ok again 600 s after it" in text
    table = format_table(samples, 600.0)
    assert "| 10 (shift) |" in table and "0.70/0.010!" in table


def test_no_recovery_and_no_alert_read_never() -> None:
    res = summarize([_sample(60.0), _sample(700.0, click=(0.6, 500, "under"))], shift_s=600.0)
    assert res["alert_after_shift_s"] == 100.0 and res["recovered_after_shift_s"] is None
    assert "every task ok again never" in format_summary(res, LiveCalibrationConfig())


def test_from_record_reads_the_alert_window() -> None:
    tasks = {a: {"n": 100, "positives": 7, "calibration_error": 1.2, "interval": [0.6, 2.1], "ece": 0.03}
             for a in ACTIONS}
    record = {"alert_config": {"window": "5m"}, "windows": {"5m": {"tasks": tasks}, "1h": {"tasks": {}}},
              "alerts": {a: {"state": "ok", "gathering": True} for a in ACTIONS}}
    s = Sample.from_record(42.0, record)
    assert s.labelled() and s.tasks["click"]["gathering"] and s.tasks["hide"]["calibration_error"] == 1.2
    assert not Sample.from_record(1.0, None).labelled()


def test_config_rejects_a_shift_outside_the_run_or_an_unknown_country() -> None:
    with pytest.raises(ValueError, match="inside the run"):
        LiveCalibrationConfig(minutes=5, shift_minute=6)
    with pytest.raises(ValueError, match="shift-country"):
        LiveCalibrationConfig(shift_country="ZZ")
    LiveCalibrationConfig(minutes=5, shift_minute=0)
