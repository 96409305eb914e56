"""Every task's calibrator applied in one pass over the feature matrix, the request's constant part once.

``LogisticCalibrator.predict`` per task gathers, standardizes and clips all of a
task's ~73 columns for every row: six tasks, ~220,000 values for 500 candidates.
Of those columns only the task's two logit columns and the item-type,
position-bucket and item-rate columns differ between the candidates of one
request; the context, user and feedback columns (``shared_context_row``) are the
same in every row. ``StackedCalibrators`` computes their contribution once per
task from row 0 (when the rows do agree on them; else it reads every column of
every row) and the rest as one ``[N, T, D]`` array: the same numbers as the
per-task path, to float rounding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from features.calibration_features import SHARED_FEATURE_NAMES, SHARED_OFFSET, TASK_BLOCK_WIDTH
from features.numeric import sigmoid

from .logistic import Z_CLIP, LogisticCalibrator

log = logging.getLogger(__name__)

#: shared columns that differ between the candidates of one request; the rest come from the request alone
PER_CANDIDATE_PREFIXES = ("item_type:", "pos_bucket:", "item_1d:")
_SHARED_VARYING = np.asarray([i for i, n in enumerate(SHARED_FEATURE_NAMES) if n.startswith(PER_CANDIDATE_PREFIXES)])
_SHARED_CONSTANT = np.asarray([i for i, n in enumerate(SHARED_FEATURE_NAMES)
                               if not n.startswith(PER_CANDIDATE_PREFIXES)])
#: positions in a task's design vector (its two logit columns first, then every shared column)
_VAR_POS = np.concatenate([np.arange(TASK_BLOCK_WIDTH), TASK_BLOCK_WIDTH + _SHARED_VARYING])
_CONST_POS = TASK_BLOCK_WIDTH + _SHARED_CONSTANT
#: the request-constant columns in the full matrix
_CONST_COLS = SHARED_OFFSET + _SHARED_CONSTANT


@dataclass(frozen=True)
class _Part:
    cols: np.ndarray  # [T, D] column indices into the full matrix
    center: np.ndarray  # [T, D]
    scale: np.ndarray  # [T, D]
    weights: np.ndarray  # [T, D]

    @staticmethod
    def of(cals: Sequence[LogisticCalibrator], pos: np.ndarray) -> "_Part":
        return _Part(np.stack([c.columns[pos] for c in cals]), np.stack([c.center[pos] for c in cals]),
                     np.stack([c.scale[pos] for c in cals]), np.stack([c.weights[pos] for c in cals]))

    def z(self, X: np.ndarray) -> np.ndarray:
        """Standardized, clipped inputs ``[..., T, D]`` of ``X`` ``[..., F]``."""
        z = X[..., self.cols] - self.center  # float32 features promote to float64 here
        z /= self.scale
        return np.clip(z, -Z_CLIP, Z_CLIP, out=z)


@dataclass(frozen=True)
class StackedCalibrators:
    """The calibrators of ``T`` tasks (``ACTIONS`` order) as stacked arrays."""

    varying: _Part
    constant: _Part
    full: _Part
    bias: np.ndarray  # [T]

    @staticmethod
    def of(cals: Sequence[LogisticCalibrator]) -> "StackedCalibrators":
        every = np.arange(len(cals[0].columns))
        return StackedCalibrators(_Part.of(cals, _VAR_POS), _Part.of(cals, _CONST_POS), _Part.of(cals, every),
                                  np.asarray([c.bias for c in cals], dtype=np.float64))

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Calibrated logits ``[N, T]`` from the full ``[N, F]`` matrix."""
        if len(X) > 1 and (X[1:, _CONST_COLS] == X[0, _CONST_COLS]).all():  # one request's rows
            once = np.einsum("td,td->t", self.constant.z(X[0]), self.constant.weights)
            return np.einsum("ntd,td->nt", self.varying.z(X), self.varying.weights) + (once + self.bias)
        return np.einsum("ntd,td->nt", self.full.z(X), self.full.weights) + self.bias

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``[N, T]``."""
        return sigmoid(self.logits(X))


__all__ = ["PER_CANDIDATE_PREFIXES", "StackedCalibrators"]
