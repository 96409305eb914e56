"""Pictures with matplotlib: reliability diagrams and plots over time, as PNG, SVG or HTML (inline SVG).

matplotlib is an optional extra (``pip install 'feedrank[plots]'``), kept out of
the serving dependencies: it is imported on first use, and a missing install
raises :class:`PlotsUnavailable` with the command that fixes it. Figures are
``matplotlib.figure.Figure`` objects drawn by the Agg canvas: no pyplot, no
display, no global figure registry (a worker may draw one off its event loop).
SVG keeps its text as text (``svg.fonttype: none``), so task names, axis labels
and figures can be searched in the file.
"""

from __future__ import annotations

import html
import io
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'feedrank[plots]'"
FORMATS = (".png", ".svg", ".html")
_RC = {"svg.fonttype": "none", "svg.hashsalt": "feedrank", "font.size": 9, "axes.titlesize": 9}


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed: pictures need the ``plots`` extra."""

    def __init__(self, cause: BaseException | None = None) -> None:
        super().__init__(f"drawing pictures needs matplotlib, which is not installed; run: {INSTALL_HINT}"
                         + (f" ({cause})" if cause else ""))


def require() -> Any:
    """The ``matplotlib`` module, imported on first use; :class:`PlotsUnavailable` when it is not installed."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401
    except ImportError as exc:  # the plots extra is not installed
        raise PlotsUnavailable(exc) from exc
    return matplotlib


def new_figure(figsize: tuple[float, float]) -> Any:
    """A ``matplotlib.figure.Figure`` with constrained layout (not registered with pyplot: collected when dropped)."""
    return require().figure.Figure(figsize=figsize, layout="constrained")


def available() -> bool:
    try:
        require()
    except PlotsUnavailable:
        return False
    return True


# -- output ------------------------------------------------------------------------------------
def figure_bytes(fig: Any, fmt: str) -> bytes:
    """The figure as ``png`` or ``svg`` bytes."""
    buf = io.BytesIO()
    with require().rc_context(_RC):
        fig.savefig(buf, format=fmt, dpi=110 if fmt == "png" else None, bbox_inches="tight",
                    metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


def figure_svg(fig: Any) -> str:
    """The figure as SVG text, without the XML prologue (ready to inline in HTML)."""
    text = figure_bytes(fig, "svg").decode("utf-8")
    return text[text.index("<svg"):]


def html_page(title: str, svg: str, note: str = "", extra_html: str = "") -> str:
    """A standalone HTML page embedding ``svg``."""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;margin:16px}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
            f"<h2>{html.escape(title)}</h2>" + (f"<p>{html.escape(note)}</p>" if note else "")
            + svg + extra_html + "</body></html>")


def save(fig: Any, out: str | Path, title: str = "", note: str = "", extra_html: str = "") -> Path:
    """Write ``fig`` to ``out`` by its suffix: ``.png``, ``.svg`` or ``.html`` (the SVG inline)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{out}: picture files end in {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        out.write_bytes(figure_bytes(fig, "png"))
    elif suffix == ".svg":
        out.write_bytes(figure_bytes(fig, "svg"))
    else:
        out.write_text(html_page(title or out.stem, figure_svg(fig), note, extra_html), encoding="utf-8")
    log.info("picture written to %s", out)
    return out


def save_all(fig: Any, stem: str | Path, suffixes: Sequence[str] = (".svg", ".png")) -> list[Path]:
    """Write ``fig`` once per suffix next to each other (``stem.svg``, ``stem.png``)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for s in suffixes:
        p = stem.with_suffix(s)
        if s == ".html":
            p.write_text(html_page(stem.name, figure_svg(fig)), encoding="utf-8")
        else:
            p.write_bytes(figure_bytes(fig, s.lstrip(".")))
        out.append(p)
    return out


# -- reliability diagrams ------------------------------------------------------------------------
def _fmt(v: Any, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _points(s: Mapping[str, Any]) -> list[tuple[float, float, int]]:
    b = s["bins"]
    return [(sp / c, sy / c, int(c)) for sp, sy, c in zip(b["sum_pred"], b["sum_label"], b["counts"]) if c > 0]


def panel_title(task: str, s: Mapping[str, Any]) -> str:
    return (f"{task}\ncalibration error {_fmt(s.get('calibration_error'))} · ECE {_fmt(s.get('ece'))} · "
            f"positives {s.get('positives', 0)}")


def reliability_figure(columns: Mapping[str, Mapping[str, Mapping[str, Any]]], tasks: Sequence[str],
                       title: str = "Reliability diagrams") -> Any:
    """One panel per task (rows) and column (e.g. a drift record's windows, side by side).

    ``columns`` maps a column name (``""`` for a single unnamed one) to drift-record-shaped task
    summaries (``n``, ``positives``, ``calibration_error``, ``ece``, ``bins``). Each panel: mean
    predicted probability vs observed rate per bin, the diagonal, each bin's count beside its point,
    and calibration error, ECE and positives in its title.
    """
    mpl = require()
    names = list(columns)
    tasks = [t for t in tasks if any(t in columns[c] for c in names)]
    if len(names) == 1:  # one set of tasks: a grid of 3 across
        ncols = min(3, max(len(tasks), 1))
        nrows = max(1, -(-len(tasks) // ncols))
        cells = [(names[0], t) for t in tasks]
    else:  # windows side by side, a row per task
        ncols, nrows = len(names), max(len(tasks), 1)
        cells = [(c, t) for t in tasks for c in names]
    with mpl.rc_context(_RC):
        fig = new_figure((3.6 * ncols, 3.4 * nrows))
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax in axes.ravel()[len(cells):]:
            ax.set_visible(False)
        for ax, (col, task) in zip(axes.ravel(), cells):
            s = columns[col].get(task)
            if s is None:
                ax.set_visible(False)
                continue
            pts = _points(s)
            top = min(1.0, max([0.1] + [max(x, y) for x, y, _ in pts]) * 1.15)  # zoom to where predictions are
            ax.plot([0, top], [0, top], ls="--", color="0.6", lw=1, label="perfect calibration")
            if pts:
                xs, ys, ns = zip(*pts)
                nmax = max(ns)
                ax.plot(xs, ys, color="#1f77b4", lw=1)
                ax.scatter(xs, ys, s=[12 + 100 * (n / nmax) ** 0.5 for n in ns], color="#1f77b4", alpha=0.75,
                           zorder=3, label="bins (area ~ count)")
                for x, y, n in pts:
                    ax.annotate(f"n={n}", (x, min(y, top)), textcoords="offset points", xytext=(4, -10), fontsize=7,
                                color="0.25")
            else:
                ax.text(0.5 * top, 0.5 * top, "no examples", ha="center", va="center", color="0.4")
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
            ax.set_aspect("equal")
            ax.set_xlabel("mean predicted probability")
            ax.set_ylabel("observed rate")
            ax.set_title((f"[{col}] " if col else "") + panel_title(task, s))
            ax.grid(alpha=0.25)
        if cells:
            axes.ravel()[0].legend(loc="upper left", fontsize=7)
        fig.suptitle(title, fontsize=11)
    return fig


def summary_table(columns: Mapping[str, Mapping[str, Mapping[str, Any]]], tasks: Sequence[str]) -> str:
    """An HTML table of the panels' figures (n, positives, calibration error, ECE, log loss)."""
    rows = ["<table><tr><th>window</th><th>task</th><th>n</th><th>positives</th><th>calibration error</th>"
            "<th>ECE</th><th>log loss</th></tr>"]
    for c, summ in columns.items():
        for t in tasks:
            s = summ.get(t)
            if s is None:
                continue
            rows.append(f"<tr><td>{html.escape(c or '-')}</td><td>{html.escape(t)}</td><td>{s.get('n', 0)}</td>"
                        f"<td>{s.get('positives', 0)}</td><td>{_fmt(s.get('calibration_error'))}</td>"
                        f"<td>{_fmt(s.get('ece'))}</td><td>{_fmt(s.get('log_loss'), 4)}</td></tr>")
    return "".join(rows) + "</table>"


# -- plots over time ------------------------------------------------------------------------------
def timeseries_figure(x: Sequence[float], panels: Sequence[tuple[str, Mapping[str, Sequence[float | None]]]],
                      title: str, xlabel: str = "minute",
                      bands: Mapping[int, tuple[float, float, str]] | None = None, from_zero: bool = True,
                      integer_x: bool = True, vlines: Sequence[tuple[float, str]] = ()) -> Any:
    """Stacked panels sharing the x axis: ``panels`` is ``[(y label, {series name: values})]``;
    ``bands`` shades ``{panel index: (low, high, label)}`` (e.g. an alert band); ``from_zero``: y axes
    start at 0 (quantities, not deviations); ``integer_x``: whole-number ticks (minutes); ``vlines``:
    ``[(x, label)]`` events marked on every panel (labelled in the first)."""
    mpl = require()
    from matplotlib.ticker import MaxNLocator

    with mpl.rc_context(_RC):
        fig = new_figure((9, max(3.6, 2.1 * len(panels) + 0.6)))
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)
        for i, (ax, (ylabel, series)) in enumerate(zip(axes[:, 0], panels)):
            for name, ys in series.items():
                pts = [(a, b) for a, b in zip(x, ys) if b is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, lw=1.2, label=name)
            if bands and i in bands:
                lo, hi, label = bands[i]
                ax.axhspan(lo, hi, color="tab:green", alpha=0.12, label=label)
                ax.axhline(lo, color="tab:green", lw=0.8, ls="--")
                ax.axhline(hi, color="tab:green", lw=0.8, ls="--")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.25)
            for vx, vlabel in vlines:
                ax.axvline(vx, color="0.35", ls=":", lw=1, label=vlabel if i == 0 else None)
            if from_zero:
                ax.set_ylim(bottom=0)
            if len(series) > 1 or (bands and i in bands) or (vlines and i == 0):
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        axes[-1, 0].set_xlabel(xlabel)
        if integer_x:
            axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(title, fontsize=11)
    return fig


def histogram_figure(distributions: Mapping[str, Sequence[float]], title: str, xlabel: str,
                     quantiles: Sequence[float] = (0.5, 0.99), bins: int = 50, log_x: bool = False) -> Any:
    """Distributions side by side on one axis: a step histogram per label, its quantiles marked and
    named in the legend (``p50 = ...``)."""
    import numpy as np

    mpl = require()
    data = {k: np.asarray([x for x in v if x is not None and np.isfinite(x)], dtype=np.float64)
            for k, v in distributions.items()}
    allv = np.concatenate([v for v in data.values() if v.size] or [np.zeros(0)])
    with mpl.rc_context(_RC):
        fig = new_figure((7.5, 3.8))
        ax = fig.subplots()
        if allv.size:
            lo, hi = float(allv.min()), float(allv.max())
            edges = (np.geomspace(max(lo, 1e-3), max(hi, lo * 1.01, 2e-3), bins + 1) if log_x
                     else np.linspace(lo, max(hi, lo + 1e-9), bins + 1))
            colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
            for i, (label, v) in enumerate(data.items()):
                if not v.size:
                    continue
                c = colors[i % len(colors)]
                qs = ", ".join(f"p{q * 100:g} = {float(np.quantile(v, q)):.3g}" for q in quantiles)
                ax.hist(v, bins=edges, histtype="step", lw=1.5, color=c, label=f"{label} (n={v.size}; {qs})")
                for q, ls in zip(quantiles, ("--", ":", "-.")):
                    ax.axvline(float(np.quantile(v, q)), color=c, ls=ls, lw=1)
            ax.legend(fontsize=7)
            if log_x:
                from matplotlib.ticker import FuncFormatter

                ax.set_xscale("log")
                plain = FuncFormatter(lambda v, _pos: f"{v:g}")
                ax.xaxis.set_major_formatter(plain)
                ax.xaxis.set_minor_formatter(plain)
        else:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("samples")
        ax.set_title(title)
        ax.grid(alpha=0.25)
    return fig


__all__ = ["FORMATS", "INSTALL_HINT", "PlotsUnavailable", "available", "figure_bytes", "figure_svg",
           "histogram_figure", "html_page", "new_figure", "panel_title", "reliability_figure", "require", "save", "save_all",
           "summary_table", "timeseries_figure"]
