"""One task's calibrator: logistic regression over its logit column and the shared features.

``p = sigmoid(b + w . ((x - center) / scale))`` where ``x = X[:, task_columns(task)]``.
Standardizing with the offline fit's column statistics keeps both the Newton fit
and the online FTRL steps well conditioned. The prior correction for down-sampled
training data needs no special code: it is the fitted intercept and the
coefficient on the logit column (``log(r)`` for negatives kept at rate ``r``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.numeric import sigmoid
import torch

from features.calibration_features import N_CALIBRATION_FEATURES, task_columns, task_feature_names
from features.events import ACTIONS

from .errors import CalibratorStateError, IncompatibleCalibratorError, NotEnoughDataError

log = logging.getLogger(__name__)

#: Standardized inputs are clipped to this many standard deviations, so a
#: feature far outside its training range cannot swing the calibrated score.
Z_CLIP = 8.0


@dataclass(frozen=True)
class LogisticCalibrator:
    """Immutable parameters of one task's calibrator (safe to share across threads)."""

    task: str
    weights: np.ndarray  # [D] over task_columns(task), on standardized inputs
    bias: float
    center: np.ndarray  # [D]
    scale: np.ndarray  # [D], > 0

    def __post_init__(self) -> None:
        d = len(task_columns(self.task))
        for name in ("weights", "center", "scale"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (d,):
                raise IncompatibleCalibratorError(
                    f"calibrator {self.task!r}: {name} has shape {arr.shape}, feature layout needs ({d},); "
                    "refit the calibrators for this build (feedrank calibration fit / replay)"
                )
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "_cols", task_columns(self.task))

    @property
    def columns(self) -> np.ndarray:
        return self._cols  # type: ignore[attr-defined, no-any-return]

    @staticmethod
    def identity(task: str) -> "LogisticCalibrator":
        """Passes the raw score through: weight 1 on the task's logit, 0 elsewhere."""
        d = len(task_columns(task))
        w = np.zeros(d)
        w[0] = 1.0
        return LogisticCalibrator(task, w, 0.0, np.zeros(d), np.ones(d))

    def design(self, X: np.ndarray) -> np.ndarray:
        """Standardized ``[N, D]`` inputs of this task from the full feature matrix."""
        if X.ndim != 2 or X.shape[1] != N_CALIBRATION_FEATURES:
            raise IncompatibleCalibratorError(
                f"calibration features must be [N, {N_CALIBRATION_FEATURES}], got {X.shape}; "
                "features and calibrators come from different builds"
            )
        return np.clip((X[:, self.columns].astype(np.float64) - self.center) / self.scale, -Z_CLIP, Z_CLIP)

    def logit(self, X: np.ndarray) -> np.ndarray:
        """Calibrated logits ``[N]`` from the full ``[N, F]`` matrix."""
        return self.design(X) @ self.weights + self.bias

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``[N]``."""
        return sigmoid(self.logit(X))

    def raw_units(self) -> dict[str, float]:
        """Coefficients on the unstandardized features (and the intercept), for reports."""
        w = self.weights / self.scale
        out = {name: float(v) for name, v in zip(task_feature_names(self.task), w)}
        out["intercept"] = float(self.bias - np.dot(w, self.center))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "features": list(task_feature_names(self.task)),
            "weights": self.weights.tolist(),
            "bias": float(self.bias),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "LogisticCalibrator":
        try:
            task = d["task"]
            if task not in ACTIONS:
                raise IncompatibleCalibratorError(f"calibrator for unknown task {task!r}; known tasks: {list(ACTIONS)}")
            if list(d["features"]) != list(task_feature_names(task)):
                raise IncompatibleCalibratorError(
                    f"calibrator {task!r} was fit on a different feature layout; refit it (feedrank replay / calibration fit)"
                )
            return LogisticCalibrator(task, np.asarray(d["weights"], float), float(d["bias"]), np.asarray(d["center"], float), np.asarray(d["scale"], float))
        except (KeyError, TypeError) as exc:
            raise CalibratorStateError(f"malformed calibrator state: missing or bad field {exc}") from exc


#: Extra L2 per feature-name prefix. The 30-minute feedback rates vary mostly in
#: time: over a few hours of logs they are a few noisy values per segment that a fit
#: would latch onto, so they get a strong prior (they still help with long logs).
L2_PREFIX_SCALE: dict[str, float] = {"fb30m_": 100.0}


def l2_scales(task: str) -> np.ndarray:
    names = task_feature_names(task)
    return np.asarray([next((v for k, v in L2_PREFIX_SCALE.items() if n.startswith(k)), 1.0) for n in names])


def column_stats(Z: np.ndarray, min_scale: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per column; std floored at ``min_scale`` (feature units) so a nearly
    constant column cannot be blown up into a large standardized signal."""
    center = Z.mean(axis=0)
    scale = np.maximum(Z.std(axis=0), min_scale)
    return center, scale


def _weighted_gram(A: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``A^T diag(w) A`` in float64. Through torch: multi-threaded OpenBLAS GEMM from numpy
    slowed ~70x on a busy 2-core machine (spinning threads), torch's pool does not."""
    At = torch.from_numpy(np.ascontiguousarray(A))
    return (At * torch.from_numpy(w)[:, None]).T.matmul(At).double().numpy()


def fit_logistic(
    Z: np.ndarray,
    y: np.ndarray,
    l2: float = 1e-3,
    max_iter: int = 30,
    tol: float = 1e-9,
    init: tuple[np.ndarray, float] | None = None,
    hessian_rows: int = 50_000,
    l2_scale: np.ndarray | None = None,
) -> tuple[np.ndarray, float, int]:
    """Newton's method for ``mean logloss + sum_i l2 * l2_scale_i / 2 * w_i^2`` (bias unpenalized).

    Args:
        Z: ``[N, D]`` standardized inputs. y: ``[N]`` 0/1 labels.
    Returns:
        ``(w [D], b, iterations)``.
    """
    n, d = Z.shape
    A = np.empty((n, d + 1))
    A[:, :d] = Z
    A[:, d] = 1.0
    theta = np.zeros(d + 1)
    if init is not None:
        theta[:d], theta[d] = init[0], init[1]
    else:
        pbar = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
        theta[d] = np.log(pbar / (1 - pbar))
    # The Hessian comes from at most ``hessian_rows`` rows (float32): the gradient
    # stays exact, so Newton with line search still converges to the optimum.
    hess_rows = slice(None) if n <= hessian_rows else np.random.default_rng(0).choice(n, hessian_rows, replace=False)
    Ah = A[hess_rows].astype(np.float32)
    reg = np.zeros(d + 1)
    reg[:d] = l2 if l2_scale is None else l2 * np.asarray(l2_scale, dtype=np.float64)

    def objective(th: np.ndarray) -> float:
        z = A @ th
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(reg * th * th))

    f = objective(theta)
    it = 0
    for it in range(1, max_iter + 1):
        p = sigmoid(A @ theta)
        grad = A.T @ (p - y) / n + reg * theta
        wh = (p[hess_rows] * (1 - p[hess_rows])).astype(np.float32)
        H = _weighted_gram(Ah, wh) / len(wh) + np.diag(reg + 1e-10)
        step = np.linalg.solve(H, grad)
        t = 1.0
        while True:
            cand = theta - t * step
            fc = objective(cand)
            if fc <= f - 1e-4 * t * float(grad @ step) or t < 1e-6:
                break
            t *= 0.5
        theta, f_old, f = cand, f, fc
        if abs(f_old - f) < tol:
            break
    return theta[:d], float(theta[d]), it


def fit_calibrator(task: str, X: np.ndarray, y: np.ndarray, l2: float = 1e-3, min_positives: int = 20) -> LogisticCalibrator:
    """Fit one task's calibrator offline on logged rows (full feature matrix ``X``, labels ``y``)."""
    y = np.asarray(y, dtype=np.float64)
    pos = int(y.sum())
    if pos < min_positives or pos > len(y) - min_positives:
        raise NotEnoughDataError(
            f"task {task!r}: {pos} positives in {len(y)} rows, need at least {min_positives} of each class; "
            "log more calibration traffic or lower --min-positives"
        )
    cols = task_columns(task)
    raw = X[:, cols].astype(np.float64)
    center, scale = column_stats(raw)
    w, b, iters = fit_logistic(np.clip((raw - center) / scale, -Z_CLIP, Z_CLIP), y, l2=l2, l2_scale=l2_scales(task))
    log.info("fit calibrator %s on %d rows (%d positives) in %d Newton steps", task, len(y), pos, iters)
    return LogisticCalibrator(task, w, b, center, scale)
