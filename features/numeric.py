"""The logistic function and its inverse, one definition each for features, world, scorer and calibration."""

from __future__ import annotations

import math

import numpy as np

#: probabilities are clipped to [LOGIT_EPS, 1 - LOGIT_EPS] before their logit is taken
LOGIT_EPS = 1e-5


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """``1 / (1 + exp(-x))`` elementwise, without overflow for large ``|x|`` (the tanh form)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def logit(p: float, eps: float = LOGIT_EPS) -> float:
    """``log(p / (1 - p))`` of ``p`` clipped to ``[eps, 1 - eps]``."""
    p = min(max(p, eps), 1.0 - eps)
    return math.log(p / (1.0 - p))


def logits(p: np.ndarray, eps: float = LOGIT_EPS) -> np.ndarray:
    """``logit`` elementwise over an array."""
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(q / (1.0 - q))
