"""``feedrank calibration report``: reliability diagrams per task, as PNG, SVG or HTML (the SVG inline).

Input is either a drift record (its reliability bins per window and task; the
windows side by side unless one is chosen) or labeled examples (bins computed
here with the drift monitor's own sufficient statistics). Drawn with matplotlib
(``scorer.plots``, the ``plots`` extra): one panel per task with its name,
labelled axes, the diagonal, each bin's count, and calibration error, ECE and
positives in the panel title.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from features.events import ACTIONS

from . import plots
from .calibration import CalibratorSet, LabeledBatch
from .drift import task_stats, task_summary  # the same sufficient statistics as the monitor

log = logging.getLogger(__name__)

Summaries = Mapping[str, Mapping[str, Any]]
NOTE = ("x: mean predicted probability per bin; y: observed rate; dashed: perfect calibration; "
        "dot area ~ examples in the bin (n= beside each dot).")


def summaries_from_batch(batch: LabeledBatch, probs: np.ndarray) -> dict[str, dict[str, Any]]:
    """Drift-record-shaped task summaries from labeled rows and their predicted probabilities ``[N, T]``."""
    out = {}
    for t, a in enumerate(ACTIONS):
        rows = batch.mask[:, t]
        out[a] = task_summary(task_stats(probs[rows, t], batch.y[rows, t].astype(np.float64)))
    return out


def summaries_from_record(record: Mapping[str, Any], window: str | None = None) -> dict[str, dict[str, Any]]:
    """The task summaries of one window of a drift record (the alert window by default)."""
    windows = record.get("windows", {})
    name = window or record.get("alert_config", {}).get("window") or next(iter(windows), None)
    if name not in windows:
        raise ValueError(f"drift record has no window {name!r}; windows: {list(windows)}")
    return dict(windows[name]["tasks"])


def windows_from_record(record: Mapping[str, Any], window: str | None = None) -> dict[str, dict[str, Any]]:
    """``{window: task summaries}``: every window of the record (side by side), or just ``window``."""
    if window:
        return {window: summaries_from_record(record, window)}
    return {name: dict(w["tasks"]) for name, w in record.get("windows", {}).items()}


def record_title(record: Mapping[str, Any]) -> str:
    import datetime as dt

    ts = record.get("ts")
    when = dt.datetime.fromtimestamp(ts / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "?"
    return (f"Reliability: model {record.get('model_version') or '?'}, calibrators "
            f"v{record.get('calibrator_version', '?')}, drift record at {when}")


def _columns(summaries: Summaries | Mapping[str, Summaries]) -> dict[str, Summaries]:
    """Accept plain task summaries (one unnamed column) or ``{window: task summaries}``."""
    if summaries and all(k in ACTIONS for k in summaries):
        return {"": summaries}  # type: ignore[dict-item]
    return dict(summaries)  # type: ignore[arg-type]


def figure(summaries: Summaries | Mapping[str, Summaries], title: str = "Reliability diagrams") -> Any:
    """The matplotlib figure: one panel per task (per window, side by side)."""
    return plots.reliability_figure(_columns(summaries), ACTIONS, title)


def render_svg(summaries: Summaries | Mapping[str, Summaries], title: str = "Reliability diagrams") -> str:
    return plots.figure_svg(figure(summaries, title))


def render_html(summaries: Summaries | Mapping[str, Summaries], title: str = "Reliability diagrams") -> str:
    """A standalone page: the diagrams as inline SVG, and a table of their figures."""
    cols = _columns(summaries)
    return plots.html_page(title, render_svg(cols, title), NOTE, plots.summary_table(cols, ACTIONS))


def render_png(summaries: Summaries | Mapping[str, Summaries], title: str = "Reliability diagrams") -> bytes:
    return plots.figure_bytes(figure(summaries, title), "png")


def write_report(out: str | Path, summaries: Summaries | Mapping[str, Summaries],
                 title: str = "Reliability diagrams") -> Path:
    """Write ``.png``, ``.svg`` or ``.html`` (by suffix; anything else gets HTML) and return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".png":
        out.write_bytes(render_png(summaries, title))
    elif suffix == ".svg":
        out.write_text(render_svg(summaries, title), encoding="utf-8")
    else:
        out.write_text(render_html(summaries, title), encoding="utf-8")
    log.info("calibration report written to %s", out)
    return out


def report_for_record(out: str | Path, record: Mapping[str, Any], window: str | None = None) -> Path:
    """Diagrams of a drift record: its windows side by side, or one ``window``."""
    return write_report(out, windows_from_record(record, window), record_title(record))


def report_for_batch(out: str | Path, batch: LabeledBatch, calibrators: CalibratorSet | None = None) -> Path:
    """Diagrams of ``calibrators`` on labeled rows (or of what serving predicted, ``extras['served']``)."""
    if calibrators is not None:
        probs = calibrators.calibrate(batch.X)
        title = f"Reliability: model {calibrators.model_version} calibrators v{calibrators.version}"
    elif "served" in batch.extras:
        probs = np.nan_to_num(batch.extras["served"])
        title = "Reliability: served calibrated probabilities"
    else:
        raise ValueError("labeled rows carry no served probabilities; pass --calibrators to score them")
    return write_report(out, summaries_from_batch(batch, probs), title)
