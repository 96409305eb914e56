"""The load scenario's picture: applied events/s, lag, RSS, RocksDB size and ``/score`` p99 by minute.

``by_minute`` folds the scenario's samples (one every ``sample_s``) and the ``/score`` latencies into
one row per minute; ``write_load_plot`` draws them as ``load.svg`` and ``load.png`` next to the run's
``results.json`` (matplotlib, the ``plots`` extra).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

#: the panels: (row key, y label, series name)
PANELS: tuple[tuple[str, str, str], ...] = (
    ("applied_per_s", "applied events/s", "applied by the worker"),
    ("lag_max", "lag (records)", "max lag"),
    ("rss_mb", "RSS (MiB)", "worker RSS (peak)"),
    ("rocksdb_mb", "RocksDB size (MiB)", "RocksDB on disk (peak)"),
    ("score_p99_ms", "/score p99 (ms)", "/score p99, client side"),
)


def _minute(t: float) -> int:
    """Minute ``m`` holds ``(60 (m - 1), 60 m]`` seconds after the start (a sample at 60 s closes minute 1)."""
    return max(1, math.ceil(t / 60.0))


def _p99(values: Sequence[float]) -> float | None:
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * 0.99))] if v else None


def by_minute(samples: Sequence[dict[str, Any]], score_latencies: Iterable[tuple[float, float]] = ()) -> list[dict[str, Any]]:
    """One row per minute: mean applied events/s, peak lag, RSS and RocksDB size, and ``/score`` p99.

    ``samples``: the load scenario's (``t`` seconds, ``applied_rate`` or else ``rate``, ``lag``,
    ``rss_mb``, ``rocksdb_mb``); ``score_latencies``: ``(seconds after the start, ms)`` per request.
    """
    rows: dict[int, dict[str, Any]] = {}
    rates: dict[int, list[float]] = {}
    for s in samples:
        m = _minute(s["t"])
        r = rows.setdefault(m, {"minute": m, "lag_max": 0, "rss_mb": 0.0, "rocksdb_mb": 0.0, "samples": 0})
        r["samples"] += 1
        r["lag_max"] = max(r["lag_max"], int(s.get("lag") or 0))
        r["rss_mb"] = max(r["rss_mb"], float(s.get("rss_mb") or 0.0))
        r["rocksdb_mb"] = max(r["rocksdb_mb"], float(s.get("rocksdb_mb") or 0.0))
        rate = s.get("applied_rate", s.get("rate"))
        if rate is not None:
            rates.setdefault(m, []).append(float(rate))
    lat: dict[int, list[float]] = {}
    for t, ms in score_latencies:
        lat.setdefault(_minute(t), []).append(ms)
    for m in set(lat) - set(rows):
        rows[m] = {"minute": m, "lag_max": None, "rss_mb": None, "rocksdb_mb": None, "samples": 0}
    for m, r in rows.items():
        r["applied_per_s"] = round(sum(rates[m]) / len(rates[m])) if rates.get(m) else None
        p = _p99(lat.get(m, []))
        r["score_p99_ms"] = None if p is None else round(p, 1)
        r["score_requests"] = len(lat.get(m, []))
    return [rows[m] for m in sorted(rows)]


def load_figure(minutes: Sequence[dict[str, Any]], title: str = "") -> Any:
    from scorer.plots import timeseries_figure

    x = [r["minute"] for r in minutes]
    panels = [(ylabel, {name: [r.get(key) for r in minutes]}) for key, ylabel, name in PANELS]
    return timeseries_figure(x, panels, title or "feedrank chaos --scenarios load, by minute",
                             xlabel="minute of the run")


def write_load_plot(minutes: Sequence[dict[str, Any]], out_dir: str | Path, title: str = "") -> list[Path]:
    """``load.svg`` and ``load.png`` in ``out_dir``; raises ``scorer.plots.PlotsUnavailable`` without matplotlib."""
    from scorer.plots import save_all

    return save_all(load_figure(minutes, title), Path(out_dir) / "load", (".svg", ".png"))


__all__ = ["PANELS", "by_minute", "load_figure", "write_load_plot"]
