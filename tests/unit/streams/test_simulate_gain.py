"""The demo's ranking-quality interval: ``gain_interval`` from running sums against a bootstrap and its coverage."""

from __future__ import annotations

import numpy as np

from streams.tools.simulate import gain_captured, gain_interval


def _sums(a: np.ndarray, b: np.ndarray) -> tuple[int, float, float, float, float, float]:
    return len(a), float(a.sum()), float(b.sum()), float((a * a).sum()), float((b * b).sum()), float((a * b).sum())


def _requests(rng: np.random.Generator, n: int, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """Per request: b = best - random (> 0), a = ranked - random, noisy around ``gain`` × b."""
    b = rng.gamma(2.0, 0.05, n)
    return gain * b + rng.normal(0.0, 0.04, n), b


def test_interval_matches_a_bootstrap_over_requests() -> None:
    rng = np.random.default_rng(0)
    a, b = _requests(rng, 3000, 0.6)
    lo, hi = gain_interval(*_sums(a, b))
    r = gain_captured(a.sum(), 0.0, b.sum())
    assert lo < r < hi and abs((lo + hi) / 2 - r) < 1e-12
    draws = rng.integers(0, len(a), (2000, len(a)))
    boot = a[draws].sum(1) / b[draws].sum(1)
    b_lo, b_hi = np.percentile(boot, [2.5, 97.5])
    assert abs((hi - lo) - (b_hi - b_lo)) < 0.15 * (b_hi - b_lo)


def test_interval_covers_the_true_gain_about_95_percent_of_runs() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(300):
        a, b = _requests(rng, 400, 0.5)
        lo, hi = gain_interval(*_sums(a, b))
        covered += lo <= 0.5 <= hi
    assert 0.90 <= covered / 300 <= 0.99


def test_no_interval_without_two_requests_or_a_gain_to_capture() -> None:
    assert gain_interval(1, 0.1, 0.2, 0.01, 0.04, 0.02) is None
    assert gain_interval(5, 0.0, 0.0, 0.0, 0.0, 0.0) is None
