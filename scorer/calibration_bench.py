"""The live calibration benchmark: online FTRL calibrators and the drift alert through a traffic shift.

Synthetic traffic (``scorer.calibration.synthetic``): calibrators are fitted
offline on an hour, then for ``minutes`` of event time each minute's traffic is
served with the current calibrators, folded into the drift monitor and into the
online (FTRL) calibrators, whose snapshot is swapped in every minute. At
``shift_minute`` one country's (45 % of traffic) click and repin rates double.
Per minute it keeps each task's calibration error over the alert window, its
positives and alert state; ``write_plots`` draws the calibration error by minute
with the alert band (``calibration.svg``/``.png``).
``feedrank calibration bench --out DIR`` runs it and writes ``results.json`` and
the plot; ``tests/unit/scorer/test_calibration_sim.py`` checks the same run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.events import ACTIONS

from . import metrics as m
from .calibration import CalibratorHolder, CalibratorSet, FtrlConfig, LabeledBatch, OnlineCalibration, fit_calibrator_set
from .calibration.synthetic import CalibrationSim, SimConfig
from .drift import AlertConfig, DriftMonitor, WindowSpec

log = logging.getLogger(__name__)

MIN = 60_000


@dataclass(frozen=True)
class LiveCalibrationConfig:
    seed: int = 7
    warm_minutes: int = 30  # fills the simulator's 30-minute feedback loop
    train_minutes: int = 60  # the offline fit of the frozen calibrators
    holdout_minutes: int = 60  # then traffic the offline fit is checked on (as in the tests), before the loop
    minutes: int = 100
    shift_minute: int = 20
    shift_country: str = "BR"
    shift_tasks: tuple[str, ...] = ("click", "repin")
    shift_factor: float = 2.0
    window_minutes: int = 10  # the alert window
    low: float = 0.9
    high: float = 1.1
    min_positives: int = 500
    compare_last_minutes: int = 10  # frozen vs online calibration error over the last minutes


def setup(cfg: LiveCalibrationConfig) -> tuple[CalibrationSim, CalibratorSet]:
    """The simulator after warm-up, the offline fit's traffic and the hold-out, and the frozen calibrators."""
    sim = CalibrationSim(SimConfig(seed=cfg.seed))
    sim.run(cfg.warm_minutes)
    train = sim.run(cfg.train_minutes)
    cs = fit_calibrator_set(LabeledBatch.concat([s.batch for s in train]), model_version="sim-model-1")
    sim.run(cfg.holdout_minutes)
    return sim, cs


def run_live(cfg: LiveCalibrationConfig = LiveCalibrationConfig(), sim: CalibrationSim | None = None,
             frozen: CalibratorSet | None = None) -> dict[str, Any]:
    """Run the loop; returns a JSON-able result with ``by_minute`` rows, alert times and the last minutes' figures."""
    if sim is None or frozen is None:
        sim, frozen = setup(cfg)
    holder = CalibratorHolder(frozen)
    online = OnlineCalibration(frozen, FtrlConfig())
    wname = f"{cfg.window_minutes}m"
    windows = (WindowSpec(wname, cfg.window_minutes * MIN, 30_000), WindowSpec("1h", 60 * MIN, 5 * MIN))
    mon = DriftMonitor(windows, AlertConfig(window=wname, low=cfg.low, high=cfg.high, min_positives=cfg.min_positives))
    fired: dict[str, int] = {}
    cleared: dict[str, int] = {}
    early: list[dict[str, Any]] = []  # transitions before the shift (there should be none)
    rows: list[dict[str, Any]] = []
    frozen_p, frozen_y, online_p, masks = [], [], [], []
    shift_ms: int | None = None
    for minute in range(cfg.minutes):
        if minute == cfg.shift_minute:
            sim.shift(cfg.shift_country, cfg.shift_tasks, cfg.shift_factor)
            shift_ms = sim.now_ms
        step = sim.step()
        b = step.batch
        p = holder.calibrate(b.X)  # served before the labels arrive
        mon.observe(b.ts, p, b.y, b.mask)
        online.update(b.X, b.y, b.mask, b.ts)
        holder.swap(online.snapshot())  # the snapshot interval: one minute of event time
        rec = mon.record(step.end_ms)
        tasks = rec["windows"][wname]["tasks"]
        rows.append({"minute": minute + 1,
                     "calibration_error": {a: tasks[a]["calibration_error"] for a in ACTIONS},
                     "positives": {a: tasks[a]["positives"] for a in ACTIONS},
                     "alerts": {a: rec["alerts"][a]["state"] for a in ACTIONS}})
        for tr in rec["transitions"]:
            if shift_ms is None:
                early.append(tr)
            elif tr["to"] != "ok":
                fired.setdefault(tr["task"], tr["ts"] - shift_ms)
            else:
                cleared[tr["task"]] = tr["ts"] - shift_ms
        if minute >= cfg.minutes - cfg.compare_last_minutes:
            frozen_p.append(frozen.calibrate(b.X)), frozen_y.append(b.y), online_p.append(p), masks.append(b.mask)
    fp, fy, op, mk = (np.concatenate(x) for x in (frozen_p, frozen_y, online_p, masks))
    last = {a: {"frozen": m.calibration_error(fp[mk[:, t], t], fy[mk[:, t], t]),
                "online": m.calibration_error(op[mk[:, t], t], fy[mk[:, t], t])}
            for t, a in enumerate(ACTIONS)}  # rows where the task applies (video views: videos)
    return {"config": asdict(cfg), "alert_window": wname, "alert_band": [cfg.low, cfg.high],
            "by_minute": rows, "alerts_before_shift": early,
            "fired_min_after_shift": {a: v / MIN for a, v in fired.items()},
            "cleared_min_after_shift": {a: v / MIN for a, v in cleared.items()},
            "final_alert_states": {a: mon.state(a).value for a in ACTIONS},
            f"last_{cfg.compare_last_minutes}_min_calibration_error": last}


def figure(result: dict[str, Any]) -> Any:
    """Per-task calibration error over the alert window by minute, the alert band shaded, the shift marked."""
    from .plots import timeseries_figure

    rows = result["by_minute"]
    lo, hi = result["alert_band"]
    cfg = result.get("config", {})
    x = [r["minute"] for r in rows]
    series = {a: [r["calibration_error"].get(a) for r in rows] for a in ACTIONS}
    marks = []
    if cfg.get("shift_minute") is not None:
        marks.append((cfg["shift_minute"] + 0.5, f"shift: {cfg.get('shift_country')} "
                      f"{'+'.join(cfg.get('shift_tasks', ()))} x{cfg.get('shift_factor')}"))
    return timeseries_figure(
        x, [(f"calibration error ({result['alert_window']} window)", series)],
        "Live calibration: online calibrators through a shift, by minute (event time)",
        xlabel="minute (event time)", bands={0: (lo, hi, f"alert band {lo:g}..{hi:g}")}, from_zero=False,
        vlines=marks)


def write_plots(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``calibration.svg`` and ``calibration.png`` in ``out_dir``."""
    from .plots import save_all

    return save_all(figure(result), Path(out_dir) / "calibration", (".svg", ".png"))


def format_result(result: dict[str, Any]) -> str:
    lines = []
    for a in result["config"]["shift_tasks"]:
        lines.append(f"{a}: alert fired {result['fired_min_after_shift'].get(a, -1):.1f} min after the shift, "
                     f"cleared {result['cleared_min_after_shift'].get(a, -1):.1f} min after (event time)")
    key = next(k for k in result if k.startswith("last_"))
    for a, v in result[key].items():
        f = "-" if v["frozen"] is None else f"{v['frozen']:.3f}"
        o = "-" if v["online"] is None else f"{v['online']:.3f}"
        lines.append(f"{a:15s} {key.replace('_', ' ')}: frozen calibrator {f}, online {o}")
    return "\n".join(lines)


def run_and_write(cfg: LiveCalibrationConfig, out_dir: str | Path) -> tuple[dict[str, Any], list[Path]]:
    """Run, write ``results.json`` and the plot (skipped with a note without matplotlib)."""
    from .plots import PlotsUnavailable

    result = run_live(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    try:
        paths = write_plots(result, out)
    except PlotsUnavailable as exc:
        log.warning("calibration plot skipped: %s", exc)
    result["plots"] = [str(p) for p in paths]
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result, [out / "results.json", *paths]


__all__ = ["LiveCalibrationConfig", "figure", "format_result", "run_and_write", "run_live", "setup", "write_plots"]
