"""End to end on synthetic traffic: offline fit corrects down-sampling; online FTRL follows a shift.

Prints the measured numbers (run with ``-s`` to see them).
"""

from __future__ import annotations

import numpy as np
import pytest

from features.events import ACTIONS
from scorer import metrics as m
from scorer.calibration import CalibratorHolder, CalibratorSet, FtrlConfig, LabeledBatch, OnlineCalibration, fit_calibrator_set
from features.numeric import sigmoid
from scorer.calibration.synthetic import CalibrationSim, SimConfig
from scorer.drift import AlertConfig, DriftMonitor, WindowSpec

#: trains models or fits calibrators on simulated traffic (seconds to a minute): not in the fast tier
pytestmark = pytest.mark.slow

MIN = 60_000
ENOUGH_POSITIVES = 2000


@pytest.fixture(scope="module")
def world() -> dict:
    sim = CalibrationSim(SimConfig(seed=7))
    sim.run(30)  # fill the 30-minute feedback loop
    train = sim.run(60)
    test = sim.run(60)
    batch = LabeledBatch.concat([s.batch for s in train])
    cs = fit_calibrator_set(batch, model_version="sim-model-1")
    return {"sim": sim, "cs": cs, "test": test}


def test_offline_fit_recovers_downsampling_shift(world: dict) -> None:
    cs: CalibratorSet = world["cs"]
    test = world["test"]
    te = LabeledBatch.concat([s.batch for s in test])
    raw = np.concatenate([s.raw_logits for s in test])
    true_p = np.concatenate([s.true_p for s in test])
    P = cs.calibrate(te.X)
    print()
    for t, a in enumerate(ACTIONS):
        rows = te.mask[:, t]
        y, p = te.y[rows, t], P[rows, t]
        raw_ce = m.calibration_error(sigmoid(raw[rows, t]), y)
        ce, ece = m.calibration_error(p, y), m.expected_calibration_error(p, y)
        ru = cs.calibrators[a].raw_units()
        vs_truth = float(p.sum() / true_p[rows, t].sum())  # only a simulator knows this one
        print(f"{a:15s} positives={int(y.sum()):6d} raw CE={raw_ce:6.2f} calibrated CE={ce:.4f} ECE={ece:.4f} "
              f"sum(p)/sum(true p)={vs_truth:.4f} "
              f"logloss={m.log_loss(p, y):.4f} AUC={m.auc(p, y):.3f} logit coef={ru[f'logit:{a}']:.2f}")
        assert raw_ce > 2.0  # the raw scores are visibly off (negatives were down-sampled)
        assert 0.97 <= vs_truth <= 1.03, a
        if y.sum() >= ENOUGH_POSITIVES:
            assert 0.97 <= ce <= 1.03, a
            assert ece <= 0.01, a


def test_online_ftrl_follows_a_country_shift_and_alerts_clear(world: dict) -> None:
    sim: CalibrationSim = world["sim"]
    frozen: CalibratorSet = world["cs"]
    holder = CalibratorHolder(frozen)
    online = OnlineCalibration(frozen, FtrlConfig())
    windows = (WindowSpec("10m", 10 * MIN, 30_000), WindowSpec("1h", 60 * MIN, 5 * MIN))
    mon = DriftMonitor(windows, AlertConfig(window="10m", low=0.9, high=1.1, min_positives=500))
    affected = ("click", "repin")
    fired: dict[str, int] = {}
    cleared: dict[str, int] = {}
    frozen_p, frozen_y, online_p = [], [], []
    shift_ms = None
    for minute in range(100):
        if minute == 20:
            sim.shift("BR", affected, 2.0)
            shift_ms = sim.now_ms
        step = sim.step()
        b = step.batch
        p = holder.calibrate(b.X)  # served before the labels arrive
        mon.observe(b.ts, p, b.y, b.mask)
        online.update(b.X, b.y, b.mask, b.ts)
        holder.swap(online.snapshot())  # the snapshot interval: one minute of event time
        rec = mon.record(step.end_ms)
        for tr in rec["transitions"]:
            assert shift_ms is not None, f"alert before the shift: {tr}"
            if tr["to"] != "ok":
                fired.setdefault(tr["task"], tr["ts"] - shift_ms)
            else:
                cleared[tr["task"]] = tr["ts"] - shift_ms
        if minute >= 90:
            frozen_p.append(frozen.calibrate(b.X)), frozen_y.append(b.y), online_p.append(p)
    print()
    for a in affected:
        print(f"{a}: alert fired {fired.get(a, -1) / MIN:.1f} min after the shift, "
              f"cleared {cleared.get(a, -1) / MIN:.1f} min after (event time)")
    fp, fy, op = np.concatenate(frozen_p), np.concatenate(frozen_y), np.concatenate(online_p)
    for t, a in enumerate(ACTIONS[:5]):
        print(f"{a:12s} last 10 min CE: frozen calibrator {m.calibration_error(fp[:, t], fy[:, t]):.3f}, "
              f"online {m.calibration_error(op[:, t], fy[:, t]):.3f}")
    for a in affected:
        assert a in fired, f"no drift alert for shifted task {a}"
        assert a in cleared and cleared[a] > fired[a], f"alert for {a} did not clear"
        assert mon.state(a).value == "ok"
    assert not set(fired) - set(affected), f"alerts for unshifted tasks: {set(fired) - set(affected)}"
