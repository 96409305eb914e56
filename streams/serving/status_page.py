"""The worker's small HTML status page (``GET /status``): calibration and 30-minute rates."""

from __future__ import annotations

import html
from typing import Any

from features.events import ACTIONS
from scorer.drift import format_interval


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(x: Any) -> str:
    return "-" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))


def render_status(api) -> str:
    """HTML for the worker behind ``api`` (a ``streams.serving.web.WebApi``)."""
    engine = api.views.engine
    serving = api.serving
    cal = serving.calibrator_info() if serving else None
    drift = serving.latest_drift() if serving else None
    parts = [f"<h1>feedrank worker {html.escape(api.settings.url)}</h1>",
             f"<p>partitions {sorted(engine.tables)}; events applied {engine.processed:,}; "
             f"dead-lettered {engine.dead_lettered:,}</p>"]
    served = serving.served_version if serving else None
    parts.append(f"<h2>Model</h2><p>{html.escape(served or 'none yet: /score answers 503 until one is published')}</p>")
    if cal and cal.get("model_version"):
        parts.append("<h2>Calibrators</h2>" + _table(
            ["model", "version", "source", "trained examples", "watermark ms"],
            [[cal["model_version"], cal.get("version"), cal.get("source"), cal.get("trained_examples"),
              cal.get("watermark_ms")]]))
    else:
        parts.append("<h2>Calibrators</h2><p>none yet" + (f" ({html.escape(str(cal['error']))})"
                                                           if cal and cal.get("error") else "") + "</p>")
    if drift:
        window = drift["alert_config"]["window"]
        tasks = drift["windows"][window]["tasks"]
        need = drift["alert_config"]["min_positives"]

        def alert(a: str) -> str:
            st = drift["alerts"][a]
            return st["state"] + (f" (gathering labels: {tasks[a].get('positives')} of {need} positives)"
                                  if st.get("gathering") else "")

        rows = [[a, _fmt(tasks[a].get("calibration_error")), format_interval(tasks[a].get("interval")),
                 _fmt(tasks[a].get("ece")), tasks[a].get("n"), tasks[a].get("positives"), alert(a)]
                for a in ACTIONS if a in tasks]
        parts.append(f"<h2>Calibration ({window} window)</h2>"
                     + _table(["task", "sum(p)/sum(y)", "99.9 % interval", "ECE", "n", "positives", "alert"], rows)
                     + "<p><a href='/calibration/report'>reliability diagrams</a> (every window, per task)</p>")
    snap = api.views.get_feedback_snapshot()
    rows = []
    for seg, c in sorted(snap.segments.items())[:40]:
        rates = [_fmt(c.actions.get(a, 0) / c.impressions) if c.impressions else "-" for a in ACTIONS]
        rows.append([seg, c.impressions, *rates])
    parts.append(f"<h2>Feedback loop, last {api.settings.feedback_window_min} minutes</h2>"
                 + _table(["segment", "impressions", *ACTIONS], rows))
    style = "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}</style>"
    return f"<!doctype html><html><head><meta http-equiv='refresh' content='5'>{style}</head><body>{''.join(parts)}</body></html>"
