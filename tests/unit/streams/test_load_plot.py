"""The load scenario's plot over time, built from a small synthetic samples list (the real scenario is not run)."""

from __future__ import annotations

import pytest

from streams.tools.chaos.load_plot import by_minute, write_load_plot

pytest.importorskip("matplotlib", reason="matplotlib is in the plots and test extras")

SAMPLES = [{"t": t, "rate": 900, "applied_rate": 880 + t % 7, "lag": 100 * (t // 10), "rss_mb": 400.0 + t / 10,
            "rocksdb_mb": 20.0 + t / 30} for t in range(10, 190, 10)]
LATENCIES = [(t / 4, 8.0 + (t % 50 == 0) * 40) for t in range(1, 720)]


def test_by_minute_folds_samples_and_latencies() -> None:
    rows = by_minute(SAMPLES, LATENCIES)
    assert [r["minute"] for r in rows] == [1, 2, 3]
    assert rows[0]["samples"] == 6 and rows[0]["lag_max"] == 600 and rows[2]["rss_mb"] == 418.0
    assert rows[1]["applied_per_s"] == round(sum(880 + t % 7 for t in range(70, 130, 10)) / 6)
    assert rows[0]["score_p99_ms"] == 48.0 and rows[0]["score_requests"] == 240
    assert by_minute([{"t": 30, "rate": 5, "lag": 1, "rss_mb": 1, "rocksdb_mb": 1}])[0]["applied_per_s"] == 5


def test_load_svg_has_the_labels_and_figures(tmp_path) -> None:
    paths = write_load_plot(by_minute(SAMPLES, LATENCIES), tmp_path, "load test run")
    assert [p.name for p in paths] == ["load.svg", "load.png"]
    assert paths[1].read_bytes().startswith(b"\x89PNG")
    svg = paths[0].read_text()
    for label in ("applied events/s", "lag (records)", "RSS (MiB)", "RocksDB size (MiB)", "/score p99 (ms)",
                  "minute of the run", "load test run"):
        assert label in svg, label
    for tick in (">1</text>", ">2</text>", ">3</text>", ">400</text>"):  # minutes on the x axis, RSS figures
        assert tick in svg, tick
