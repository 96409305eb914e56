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


# -- against the libraries (scikit-learn, scipy: the `test` extra) -----------------------------------
def _cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    out = []
    for n in (5, 50, 2000):
        p = rng.uniform(size=n)
        y = (rng.uniform(size=n) < p).astype(float)
        y[0], y[1] = 0.0, 1.0  # both classes
        out.append((p, y))
    p = np.round(rng.uniform(size=500), 1)  # many ties
    out.append((p, (rng.uniform(size=500) < p).astype(float)))
    return out


@pytest.mark.parametrize("case", range(4))
def test_auc_matches_sklearn(case: int) -> None:
    sk = pytest.importorskip("sklearn.metrics")
    p, y = _cases()[case]
    assert m.auc(p, y) == pytest.approx(sk.roc_auc_score(y, p), abs=1e-12)


@pytest.mark.parametrize("case", range(4))
def test_log_loss_matches_sklearn(case: int) -> None:
    sk = pytest.importorskip("sklearn.metrics")
    p, y = _cases()[case]
    q = np.clip(p, m.LOG_EPS, 1 - m.LOG_EPS)  # sklearn no longer clips for us
    assert m.log_loss(p, y) == pytest.approx(sk.log_loss(y, q, labels=[0, 1]), rel=1e-12)


def test_ece_matches_sklearn_calibration_curve() -> None:
    calib = pytest.importorskip("sklearn.calibration")
    p, y = _cases()[2]
    prob_true, prob_pred = calib.calibration_curve(y, p, n_bins=m.N_BINS, strategy="uniform")
    counts = np.array([c for c in m.reliability_bins(p, y).counts if c > 0])
    expected = float(np.sum(counts * np.abs(prob_true - prob_pred)) / counts.sum())
    assert m.expected_calibration_error(p, y) == pytest.approx(expected, rel=1e-9)
    rb = m.reliability_bins(p, y)
    assert [v for v in rb.mean_pred if v is not None] == pytest.approx(list(prob_pred))
    assert [v for v in rb.mean_label if v is not None] == pytest.approx(list(prob_true))


@pytest.mark.parametrize("case", range(4))
def test_spearman_and_ranks_match_scipy(case: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    p, y = _cases()[case]
    other = p ** 3 + np.random.default_rng(case).normal(scale=0.1, size=p.size)
    assert m.spearman(p, other) == pytest.approx(stats.spearmanr(p, other).statistic, abs=1e-12)
    assert m.rankdata(p).tolist() == pytest.approx(stats.rankdata(p).tolist())


def test_undefined_values_are_none() -> None:
    assert m.auc(np.array([0.2, 0.3]), np.array([0, 0])) is None
    assert m.spearman(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])) is None
    assert m.spearman(np.array([1.0]), np.array([2.0])) is None
    assert m.calibration_error_from_sums(3.0, 0) is None
