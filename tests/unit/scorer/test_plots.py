"""Pictures: the reliability diagram opened as SVG text (task names, axis labels, figures), PNG/HTML, the lazy import."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from features.events import ACTIONS
from scorer import plots
from scorer.drift import DriftMonitor
from scorer.report import record_title, render_html, windows_from_record, write_report

pytest.importorskip("matplotlib", reason="matplotlib is in the plots and test extras")


@pytest.fixture(scope="module")
def record() -> dict:
    rng = np.random.default_rng(1)
    n = 4000
    ts = 1_700_000_000_000 + np.sort(rng.integers(0, 50 * 60_000, n))
    p = rng.uniform(0.0, 0.3, size=(n, len(ACTIONS)))
    y = (rng.uniform(size=p.shape) < p * 1.2).astype(float)
    mon = DriftMonitor(model_version="m-test", calibrator_version=3)
    mon.observe(ts, p, y)
    return json.loads(json.dumps(mon.record()))


def test_reliability_svg_has_task_names_axis_labels_and_figures(record: dict, tmp_path) -> None:
    out = write_report(tmp_path / "report.svg", windows_from_record(record), record_title(record))
    svg = out.read_text()
    assert svg.lstrip().startswith("<svg") or svg.startswith("<?xml")
    for a in ACTIONS:
        assert a in svg
    assert svg.count("mean predicted probability") == 2 * len(ACTIONS)  # a panel per task and window
    assert svg.count("observed rate") == 2 * len(ACTIONS)
    assert "[5m]" in svg and "[1h]" in svg  # the two windows side by side
    assert "m-test" in svg
    s = record["windows"]["5m"]["tasks"]["click"]
    assert f"calibration error {s['calibration_error']:.3f}" in svg
    assert f"ECE {s['ece']:.3f}" in svg
    assert f"positives {s['positives']}" in svg
    top = max(range(10), key=lambda b: s["bins"]["counts"][b])
    assert f"n={s['bins']['counts'][top]}" in svg  # bin counts
    assert "perfect calibration" in svg  # the diagonal's legend


def test_reliability_png_and_html(record: dict, tmp_path) -> None:
    png = write_report(tmp_path / "r.png", windows_from_record(record, "5m"))
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 10_000
    page = render_html(windows_from_record(record), "Reliability")
    assert page.count("<svg") == 1 and "<table>" in page and "observed rate" in page
    with pytest.raises(ValueError, match="no window"):
        windows_from_record(record, "7d")


def test_missing_matplotlib_raises_a_typed_error_with_the_fix(monkeypatch) -> None:
    real = builtins.__import__

    def no_mpl(name, *a, **kw):  # type: ignore[no-untyped-def]
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(plots.PlotsUnavailable, match=r"pip install 'feedrank\[plots\]'"):
        plots.require()
    assert not plots.available()


def test_timeseries_svg_keeps_labels_and_band(tmp_path) -> None:
    fig = plots.timeseries_figure([1, 2, 3], [("calibration error", {"click": [1.0, 1.2, None], "hide": [0.9, 1.0, 1.1]})],
                                  "Live calibration", bands={0: (0.85, 1.15, "alert band 0.85..1.15")})
    svg = plots.save(fig, tmp_path / "t.svg").read_text()
    assert "Live calibration" in svg and "calibration error" in svg and "alert band 0.85..1.15" in svg
    assert "minute" in svg and "click" in svg and "hide" in svg


def test_live_calibration_plot_has_tasks_band_and_shift(tmp_path) -> None:
    from scorer.calibration_bench import LiveCalibrationConfig, write_plots
    from dataclasses import asdict

    cfg = LiveCalibrationConfig(minutes=4, shift_minute=2)
    rows = [{"minute": i + 1, "calibration_error": {a: 1.0 + 0.05 * i * (a == "click") for a in ACTIONS},
             "positives": {a: 600 for a in ACTIONS}, "alerts": {a: "ok" for a in ACTIONS}} for i in range(4)]
    rows[0]["calibration_error"]["repin"] = None  # too thin yet: no point
    result = {"config": asdict(cfg), "alert_window": "10m", "alert_band": [0.9, 1.1], "by_minute": rows}
    svg_path, png_path = write_plots(result, tmp_path)
    svg = svg_path.read_text()
    for text in (*ACTIONS, "calibration error (10m window)", "minute (event time)", "alert band 0.9..1.1",
                 "shift: BR click+repin x2.0", "Live calibration"):
        assert text in svg, text
    assert png_path.read_bytes().startswith(b"\x89PNG")


def test_calibration_report_adds_a_consistency_report(record: dict, tmp_path, capsys) -> None:
    from scorer.calibration_cli import main

    drift = tmp_path / "drift.json"
    drift.write_text(json.dumps(record))
    consistency = {"requests": 12, "in_flight_ms": 2000, "max_mismatch": 0.001,
                   "sequence": {"n": 12, "mismatch_rate": 0.0, "in_flight_rate": 1 / 12, "mean_edit_distance": 0.08},
                   "features": {"user.user_3h:log_impressions": {"n": 12, "mismatch_rate": 0.25, "mean_abs_error": 0.3,
                                                                 "mean_rel_error": 0.1, "first_mismatch": None},
                                "candidate.seq_same_type_share": {"n": 120, "mismatch_rate": 0.0, "mean_abs_error": 0.0,
                                                                  "mean_rel_error": 0.0, "first_mismatch": None}}}
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"drift": record, "consistency": consistency}))  # as `GET /calibration` gives it
    out = tmp_path / "r.html"
    assert main(["calibration", "report", "--input", str(drift), "--out", str(out), "--consistency", str(path)]) == 0
    text = capsys.readouterr().out
    assert "over 12 sampled requests" in text and "in flight (< 2000 ms old) 8.33%" in text
    assert "user.user_3h:log_impressions: mismatch  25.00% of 12" in text
    assert "2 compared, 1 agree on every value" in text
    page = out.read_text()
    assert "Online/offline consistency" in page and "user.user_3h:log_impressions" in page
