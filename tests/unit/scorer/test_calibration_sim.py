"""End to end on synthetic traffic: offline fit corrects down-sampling; online FTRL follows a shift.

Prints the measured numbers (run with ``-s`` to see them).
"""

from __future__ import annotations

import numpy as np
import pytest

from features.events import ACTIONS
from scorer import metrics as m
from scorer.calibration import CalibratorSet, LabeledBatch, fit_calibrator_set
from features.numeric import sigmoid
from scorer.calibration.synthetic import CalibrationSim, SimConfig
from scorer import plots
from scorer.calibration_bench import LiveCalibrationConfig, format_result, run_live, write_plots

#: trains models or fits calibrators on simulated traffic (seconds to a minute): not in the fast tier
pytestmark = pytest.mark.slow

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


def test_online_ftrl_follows_a_country_shift_and_alerts_clear(world: dict, tmp_path) -> None:
    # the live calibration benchmark (``feedrank calibration bench``) on this module's simulator
    cfg = LiveCalibrationConfig()
    res = run_live(cfg, world["sim"], world["cs"])  # the fixture ran the warm-up, training and hold-out minutes
    print()
    print(format_result(res))
    fired, cleared = res["fired_min_after_shift"], res["cleared_min_after_shift"]
    assert not res["alerts_before_shift"], f"alert before the shift: {res['alerts_before_shift']}"
    for a in cfg.shift_tasks:
        assert a in fired, f"no drift alert for shifted task {a}"
        assert a in cleared and cleared[a] > fired[a], f"alert for {a} did not clear"
        assert res["final_alert_states"][a] == "ok"
    assert not set(fired) - set(cfg.shift_tasks), f"alerts for unshifted tasks: {set(fired) - set(cfg.shift_tasks)}"
    assert len(res["by_minute"]) == cfg.minutes
    if plots.available():
        svg = write_plots(res, tmp_path)[0].read_text()
        assert "alert band 0.9..1.1" in svg and all(a in svg for a in ACTIONS)
