"""Calibration and ranking metrics as pure functions of predictions and labels.

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


def calibration_error(p: np.ndarray, y: np.ndarray) -> float | None:
    """sum(predicted) / sum(actual): 1 is calibrated, >1 over-predicts; None without positives."""
    p, y = _check(p, y)
    pos = float(y.sum())
    return float(p.sum()) / pos if pos > 0 else None


def log_loss(p: np.ndarray, y: np.ndarray, eps: float = LOG_EPS) -> float | None:
    """Mean binary cross-entropy (natural log); None for no examples."""
    p, y = _check(p, y)
    if p.size == 0:
        return None
    q = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log1p(-q)))


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


def auc(p: np.ndarray, y: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged; None if one class is absent."""
    p, y = _check(p, y)
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = p.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    ranks = np.empty(p.size, dtype=np.float64)
    # average ranks over runs of tied scores
    boundaries = np.flatnonzero(np.diff(sp)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [p.size]])
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


__all__ = [
    "N_BINS",
    "ReliabilityBins",
    "auc",
    "bin_index",
    "bin_sums",
    "calibration_error",
    "ece_from_bins",
    "expected_calibration_error",
    "log_loss",
    "reliability_bins",
]
