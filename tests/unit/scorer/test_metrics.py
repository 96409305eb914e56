"""Each metric against a hand-computed case."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scorer import metrics as m

P = np.array([0.1, 0.4, 0.35, 0.8])
Y = np.array([0, 0, 1, 1])


def test_calibration_error_hand_case() -> None:
    # sum(p) = 1.65, sum(y) = 2
    assert m.calibration_error(P, Y) == pytest.approx(0.825)
    assert m.calibration_error(P, np.zeros(4)) is None


def test_log_loss_hand_case() -> None:
    expected = -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    assert m.log_loss(P, Y) == pytest.approx(expected)
    assert m.log_loss(np.array([]), np.array([])) is None
    # clipping keeps a confident mistake finite
    assert math.isfinite(m.log_loss(np.array([0.0]), np.array([1])))


def test_ece_hand_case() -> None:
    # one example per bin (1, 4, 3, 8): (|.1-0| + |.4-0| + |.35-1| + |.8-1|) / 4
    assert m.expected_calibration_error(P, Y) == pytest.approx(1.35 / 4)
    # three in one bin: |0.37 - 1| / 3
    assert m.expected_calibration_error(np.array([0.1, 0.15, 0.12]), np.array([0, 1, 0])) == pytest.approx(0.21)
    assert m.expected_calibration_error(np.array([]), np.array([])) is None


def test_reliability_bins_hand_case() -> None:
    rb = m.reliability_bins(np.array([0.05, 0.07, 0.55, 1.0]), np.array([0, 1, 1, 1]))
    assert rb.counts == [2, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert rb.sum_pred[0] == pytest.approx(0.12)
    assert rb.sum_label == [1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    assert rb.mean_pred[0] == pytest.approx(0.06) and rb.mean_label[0] == pytest.approx(0.5)
    assert rb.mean_pred[1] is None
    json.dumps(rb.to_dict())  # serializable


def test_auc_hand_case() -> None:
    # pos 0.35 beats 0.1, loses to 0.4; pos 0.8 beats both -> 3/4
    assert m.auc(P, Y) == pytest.approx(0.75)
    assert m.auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert m.auc(np.array([0.1, 0.2, 0.2, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx((1 + 0.5 + 2) / 4)
    assert m.auc(P, np.ones(4)) is None


def test_ece_from_bins_matches_direct() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=1000)
    y = (rng.uniform(size=1000) < p).astype(float)
    assert m.ece_from_bins(*m.bin_sums(p, y)) == pytest.approx(m.expected_calibration_error(p, y))


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        m.calibration_error(np.zeros(3), np.zeros(2))
