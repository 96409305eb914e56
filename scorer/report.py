"""``feedrank calibration report``: reliability diagrams per task, as HTML (inline SVG) or PNG.

Input is either a drift record (its reliability bins per window and task) or
labeled examples (bins computed here). No plotting library: the HTML is
hand-written SVG, and the PNG comes from a tiny rasterizer plus a zlib PNG writer.
"""

from __future__ import annotations

import html
import logging
import struct
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from features.events import ACTIONS

from .calibration import CalibratorSet, LabeledBatch
from .drift import task_stats, task_summary  # the same sufficient statistics as the monitor

log = logging.getLogger(__name__)

PANEL = 220  # px per task panel (square plot area)
PAD = 30


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


def _points(s: Mapping[str, Any]) -> list[tuple[float, float, int]]:
    b = s["bins"]
    return [(sp / c, sy / c, c) for sp, sy, c in zip(b["sum_pred"], b["sum_label"], b["counts"]) if c > 0]


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_html(summaries: Mapping[str, Mapping[str, Any]], title: str = "Reliability diagrams") -> str:
    """One SVG panel per task: mean predicted vs observed rate per bin (dot area ~ count), the diagonal."""
    panels = []
    for a in ACTIONS:
        s = summaries.get(a)
        if s is None:
            continue
        pts = _points(s)
        # zoom to where the predictions are: max of predicted and observed means, at least 0.1
        top = max([0.1] + [max(x, y) for x, y, _ in pts]) * 1.1
        top = min(1.0, top)
        sc = PANEL / top
        nmax = max([c for _, _, c in pts] or [1])
        dots = "".join(
            f'<circle cx="{PAD + x * sc:.1f}" cy="{PAD + PANEL - y * sc:.1f}" r="{2 + 6 * (c / nmax) ** 0.5:.1f}" '
            f'fill="#1f77b4" fill-opacity="0.7"><title>pred {x:.4f} obs {y:.4f} n={c}</title></circle>'
            for x, y, c in pts)
        line = " ".join(f"{PAD + x * sc:.1f},{PAD + PANEL - y * sc:.1f}" for x, y, _ in pts)
        ticks = "".join(
            f'<text x="{PAD + v * sc:.1f}" y="{PAD + PANEL + 14}" font-size="9" text-anchor="middle">{v:.2f}</text>'
            f'<text x="{PAD - 4}" y="{PAD + PANEL - v * sc + 3:.1f}" font-size="9" text-anchor="end">{v:.2f}</text>'
            for v in np.linspace(0, top, 5)[1:])
        caption = (f"n={s['n']} pos={s['positives']} CE={_fmt(s['calibration_error'])} "
                   f"ECE={_fmt(s['ece'])} LL={_fmt(s['log_loss'])}")
        panels.append(
            f'<figure><svg width="{PANEL + 2 * PAD}" height="{PANEL + 2 * PAD}" xmlns="http://www.w3.org/2000/svg">'
            f'<rect x="{PAD}" y="{PAD}" width="{PANEL}" height="{PANEL}" fill="none" stroke="#999"/>'
            f'<line x1="{PAD}" y1="{PAD + PANEL}" x2="{PAD + PANEL}" y2="{PAD}" stroke="#bbb" stroke-dasharray="4"/>'
            f'<polyline points="{line}" fill="none" stroke="#1f77b4"/>{dots}{ticks}'
            f'<text x="{PAD}" y="18" font-size="13" font-weight="bold">{html.escape(a)}</text></svg>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif}figure{display:inline-block;margin:8px}"
            "figcaption{font-size:11px;max-width:280px}</style></head><body>"
            f"<h2>{html.escape(title)}</h2><p>x: mean predicted probability per bin; y: observed rate; "
            "dashed: perfect calibration; dot area ~ examples in the bin.</p>" + "".join(panels) + "</body></html>")


# -- PNG ------------------------------------------------------------------------------------
def _png_bytes(img: np.ndarray) -> bytes:
    """Encode an ``[H, W, 3]`` uint8 image as PNG (no filter, zlib)."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _line(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, color: tuple[int, int, int]) -> None:
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, n).round().astype(int)
    ys = np.linspace(y0, y1, n).round().astype(int)
    ok = (xs >= 0) & (xs < img.shape[1]) & (ys >= 0) & (ys < img.shape[0])
    img[ys[ok], xs[ok]] = color


def _disc(img: np.ndarray, cx: float, cy: float, r: float, color: tuple[int, int, int]) -> None:
    h, w, _ = img.shape
    y, x = np.ogrid[:h, :w]
    img[(x - cx) ** 2 + (y - cy) ** 2 <= r * r] = color


def render_png(summaries: Mapping[str, Mapping[str, Any]]) -> bytes:
    """The same panels as ``render_html`` as a PNG (no text: the task order is ``ACTIONS``, left to right)."""
    tasks = [a for a in ACTIONS if a in summaries]
    size = PANEL + 2 * PAD
    img = np.full((size, size * max(len(tasks), 1), 3), 255, dtype=np.uint8)
    for i, a in enumerate(tasks):
        ox = i * size
        pts = _points(summaries[a])
        top = min(1.0, max([0.1] + [max(x, y) for x, y, _ in pts]) * 1.1)
        sc = PANEL / top
        grey, light, blue = (150, 150, 150), (200, 200, 200), (31, 119, 180)
        for (x0, y0, x1, y1) in ((0, 0, PANEL, 0), (0, PANEL, PANEL, PANEL), (0, 0, 0, PANEL), (PANEL, 0, PANEL, PANEL)):
            _line(img, ox + PAD + x0, PAD + y0, ox + PAD + x1, PAD + y1, grey)
        _line(img, ox + PAD, PAD + PANEL, ox + PAD + PANEL, PAD, light)
        prev = None
        nmax = max([c for _, _, c in pts] or [1])
        for x, y, c in pts:
            px, py = ox + PAD + x * sc, PAD + PANEL - min(y, top) * sc
            if prev:
                _line(img, prev[0], prev[1], px, py, blue)
            _disc(img, px, py, 2 + 5 * (c / nmax) ** 0.5, blue)
            prev = (px, py)
    return _png_bytes(img)


def write_report(out: str | Path, summaries: Mapping[str, Mapping[str, Any]], title: str = "Reliability diagrams") -> Path:
    """Write ``.png`` or ``.html`` (by suffix) and return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        out.write_bytes(render_png(summaries))
    else:
        out.write_text(render_html(summaries, title), encoding="utf-8")
    log.info("calibration report written to %s", out)
    return out


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
