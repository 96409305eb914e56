"""All tasks' calibrators in one pass give what each task's calibrator gives on its own."""

from __future__ import annotations

import numpy as np
import pytest

from features.calibration_features import N_CALIBRATION_FEATURES, task_columns
from features.events import ACTIONS
from scorer.calibration.calset import CalibratorSet
from scorer.calibration.logistic import LogisticCalibrator
from scorer.calibration.stacked import _CONST_COLS


def _random_set(rng) -> CalibratorSet:
    cals = {}
    for a in ACTIONS:
        d = len(task_columns(a))
        cals[a] = LogisticCalibrator(a, rng.normal(0, 1, d), float(rng.normal()), rng.normal(0, 1, d),
                                     rng.uniform(0.1, 3, d))
    return CalibratorSet("m1", cals, version=3)


@pytest.mark.parametrize("one_request", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_stacked_equals_per_task(seed: int, one_request: bool) -> None:
    rng = np.random.default_rng(seed)
    cs = _random_set(rng)
    X = rng.normal(0, 5, size=(int(rng.integers(1, 300)), N_CALIBRATION_FEATURES)).astype(np.float32)
    if one_request:  # the request's context columns equal in every row: folded once
        X[:, _CONST_COLS] = X[0, _CONST_COLS]
    want = np.stack([cs.calibrators[a].predict(X) for a in ACTIONS], axis=1)
    np.testing.assert_allclose(cs.calibrate(X), want, rtol=1e-12, atol=1e-14)


def test_identity_passes_the_raw_score_through() -> None:
    X = np.zeros((4, N_CALIBRATION_FEATURES), dtype=np.float32)
    X[:, 0] = [-2, -1, 0, 3]
    p = CalibratorSet.identity("m").calibrate(X)
    np.testing.assert_allclose(p[:, 0], 1 / (1 + np.exp(-X[:, 0].astype(np.float64))), rtol=1e-12)
