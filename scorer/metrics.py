"""The one metrics module: calibration and ranking metrics as pure numpy functions.

AUC, log loss, ECE, calibration error, reliability bins and Spearman rank
correlation, used by offline evaluation (``scorer.evaluate``), drift monitoring
(``scorer.drift``), replay and reports alike. numpy only: this module is on the
serving path; its tests check it against scikit-learn and scipy.

``p`` are predicted probabilities, ``y`` binary labels, both 1-D of equal length.
The ``*_from_bins`` variants compute the same numbers from reliability-bin
sufficient statistics, which is what the windowed drift accumulators keep.
Undefined values (no positives, no examples) are ``None`` so they serialize to
JSON ``null``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)

N_BINS = 10
LOG_EPS = 1e-7


def _check(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"predictions and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    return p, y


def calibration_error_from_sums(sum_pred: float, positives: float) -> float | None:
    """sum(predicted) / sum(actual) from the two sums; None without positives."""
    return float(sum_pred) / float(positives) if positives > 0 else None


#: the normal quantile of the calibration error's interval: 99.9 % two-sided, so that a calibrated task
#: watched every minute for hours does not alert on noise (a 99 % interval did, once in 1,000 windows)
INTERVAL_Z = 3.29


def poisson_mean_interval(count: float, z: float = INTERVAL_Z) -> tuple[float, float]:
    """Two-sided interval on a Poisson mean from one observed ``count`` (Byar's approximation of the exact
    Garwood interval: within 1 % of it from a count of 3, a little wider below; 0 is the lower end of 0)."""
    c = float(count)
    lo = 0.0 if c <= 0 else c * (1.0 - 1.0 / (9.0 * c) - z / (3.0 * np.sqrt(c))) ** 3
    u = c + 1.0
    hi = u * (1.0 - 1.0 / (9.0 * u) + z / (3.0 * np.sqrt(u))) ** 3
    return max(0.0, lo), hi


def calibration_error_interval(sum_pred: float, positives: float, z: float = INTERVAL_Z) -> tuple[float, float | None] | None:
    """Interval on sum(predicted) / E[sum(actual)]: the positives are treated as a Poisson count, the predictions
    as known. ``(low, None)`` when no positive was seen (no upper bound); None without predictions."""
    if sum_pred <= 0:
        return None
    lo_count, hi_count = poisson_mean_interval(positives, z)
    return float(sum_pred / hi_count), (float(sum_pred / lo_count) if lo_count > 0 else None)


def calibration_error(p: np.ndarray, y: np.ndarray) -> float | None:
    """sum(predicted) / sum(actual): 1 is calibrated, >1 over-predicts; None without positives."""
    p, y = _check(p, y)
    return calibration_error_from_sums(float(p.sum()), float(y.sum()))


def log_loss_sum(p: np.ndarray, y: np.ndarray, eps: float = LOG_EPS) -> float:
    """Summed binary cross-entropy (natural log, predictions clipped to ``[eps, 1 - eps]``); summable over tiles."""
    p, y = _check(p, y)
    q = np.clip(p, eps, 1.0 - eps)
    return float(-np.sum(y * np.log(q) + (1.0 - y) * np.log1p(-q)))


def log_loss(p: np.ndarray, y: np.ndarray, eps: float = LOG_EPS) -> float | None:
    """Mean binary cross-entropy (natural log); None for no examples."""
    p, y = _check(p, y)
    if p.size == 0:
        return None
    return log_loss_sum(p, y, eps) / p.size


@dataclass(frozen=True, slots=True)
class ReliabilityBins:
    """Equal-width bins of predicted probability on [0, 1]: counts and sums per bin."""

    edges: list[float]
    counts: list[int]
    sum_pred: list[float]
    sum_label: list[float]

    @property
    def mean_pred(self) -> list[float | None]:
        return [s / c if c else None for s, c in zip(self.sum_pred, self.counts)]

    @property
    def mean_label(self) -> list[float | None]:
        return [s / c if c else None for s, c in zip(self.sum_label, self.counts)]

    def to_dict(self) -> dict[str, list]:
        d = asdict(self)
        d["mean_pred"] = self.mean_pred
        d["mean_label"] = self.mean_label
        return d


def bin_index(p: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin of each probability; bin ``b`` is ``[b/n, (b+1)/n)``, the last one closed."""
    return np.clip((np.asarray(p, dtype=np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


def bin_sums(p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin ``(counts, sum_pred, sum_label)`` arrays of length ``n_bins``."""
    p, y = _check(p, y)
    b = bin_index(p, n_bins)
    return (
        np.bincount(b, minlength=n_bins).astype(np.int64),
        np.bincount(b, weights=p, minlength=n_bins),
        np.bincount(b, weights=y, minlength=n_bins),
    )


def reliability_bins(p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> ReliabilityBins:
    """Reliability-diagram data: per equal-width bin, count, sum of predictions and labels."""
    counts, sp, sy = bin_sums(p, y, n_bins)
    return ReliabilityBins(
        edges=[i / n_bins for i in range(n_bins + 1)],
        counts=[int(c) for c in counts],
        sum_pred=[float(s) for s in sp],
        sum_label=[float(s) for s in sy],
    )


def ece_from_bins(counts: np.ndarray, sum_pred: np.ndarray, sum_label: np.ndarray) -> float | None:
    """Expected calibration error = sum_b |sum_pred_b - sum_label_b| / N."""
    n = float(np.sum(counts))
    if n <= 0:
        return None
    return float(np.sum(np.abs(np.asarray(sum_pred) - np.asarray(sum_label))) / n)


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float | None:
    """ECE over ``n_bins`` equal-width bins: sum_b (n_b / N) |mean_pred_b - mean_label_b|."""
    return ece_from_bins(*bin_sums(p, y, n_bins))


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, ties given their average rank (``scipy.stats.rankdata``'s default)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    boundaries = np.flatnonzero(np.diff(sx)) + 1
    starts = np.concatenate([[0], boundaries]).astype(np.int64)
    ends = np.concatenate([boundaries, [x.size]]).astype(np.int64)
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # average rank of each run of ties
    return ranks


def auc(p: np.ndarray, y: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged; None if one class is absent."""
    p, y = _check(p, y)
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = p.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(p)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation of two score vectors (ties averaged); None when either is constant or short."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"score vectors differ in length: {a.shape[0]} vs {b.shape[0]}")
    if a.size < 2:
        return None
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = float(np.sqrt(np.sum(ra * ra) * np.sum(rb * rb)))
    return float(np.sum(ra * rb) / den) if den > 0 else None


__all__ = [
    "N_BINS",
    "ReliabilityBins",
    "auc",
    "bin_index",
    "bin_sums",
    "calibration_error",
    "calibration_error_from_sums",
    "calibration_error_interval",
    "poisson_mean_interval",
    "ece_from_bins",
    "expected_calibration_error",
    "log_loss",
    "log_loss_sum",
    "rankdata",
    "reliability_bins",
    "spearman",
]
