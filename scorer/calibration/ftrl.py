"""Online calibrator updates: FTRL-Proximal with L1/L2, warm-started from a fitted calibrator.

Per coordinate ``i`` it keeps ``z_i`` and ``n_i`` (sum of squared gradients);
``w_i = -(z_i - sign(z_i) l1) / ((beta + sqrt(n_i)) / alpha + l2)`` (0 when
``|z_i| <= l1``); the bias is unregularized. Updates run on mini-batches: the
gradient is summed over the batch and ``n`` grows by the per-example squared
gradients, so the step schedule matches per-example FTRL. ``n`` is capped at
``n_max`` (re-solving ``z`` so the weights stay put), which keeps the per-coordinate
learning rate above ``alpha / (beta + sqrt(n_max))``: a calibrator must keep
following drift after months of traffic.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from features.numeric import sigmoid

from .logistic import Z_CLIP, LogisticCalibrator

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FtrlConfig:
    """FTRL-Proximal hyper-parameters (see module docstring)."""

    alpha: float = 0.02
    beta: float = 1.0
    l1: float = 0.0
    l2: float = 1.0
    warm_start_n: float = 100.0
    n_max: float = 10_000.0
    batch_size: int = 128

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class FtrlCalibrator:
    """Mutable FTRL state of one task; ``snapshot()`` gives an immutable ``LogisticCalibrator``."""

    def __init__(self, init: LogisticCalibrator, config: FtrlConfig = FtrlConfig()) -> None:
        self.config = config
        self.task = init.task
        self.center = init.center
        self.scale = init.scale
        theta = np.concatenate([init.weights, [init.bias]])
        self.n = np.full(theta.shape, float(config.warm_start_n))
        self.z = self._solve_z(theta, self.n)
        self.examples = 0
        self._cols = init.columns
        self._theta = theta.copy()

    def _denom(self, n: np.ndarray) -> np.ndarray:
        c = self.config
        d = (c.beta + np.sqrt(n)) / c.alpha
        d[:-1] += c.l2
        return d

    def _solve_z(self, theta: np.ndarray, n: np.ndarray) -> np.ndarray:
        """The ``z`` for which ``_weights()`` returns ``theta`` at accumulator ``n``."""
        z = -theta * self._denom(n)
        z[:-1] -= np.sign(theta[:-1]) * self.config.l1
        return z

    def _weights(self) -> np.ndarray:
        c = self.config
        z = self.z
        w = -z / self._denom(self.n)
        if c.l1 > 0:
            shrunk = -(z[:-1] - np.sign(z[:-1]) * c.l1) / self._denom(self.n)[:-1]
            w[:-1] = np.where(np.abs(z[:-1]) <= c.l1, 0.0, shrunk)
        return w

    def update(self, X: np.ndarray, y: np.ndarray) -> float:
        """Apply labeled rows (full feature matrix ``X``, labels ``y``); returns their mean log loss before the update."""
        if len(y) == 0:
            return 0.0
        Z = np.clip((X[:, self._cols].astype(np.float64) - self.center) / self.scale, -Z_CLIP, Z_CLIP)
        A = np.concatenate([Z, np.ones((len(y), 1))], axis=1)
        y = np.asarray(y, dtype=np.float64)
        loss = 0.0
        bs = self.config.batch_size
        for s in range(0, len(y), bs):
            a, t = A[s : s + bs], y[s : s + bs]
            zlin = a @ self._theta
            loss += float(np.sum(np.logaddexp(0.0, zlin) - t * zlin))
            g_ex = (sigmoid(zlin) - t)[:, None] * a
            g = g_ex.sum(axis=0)
            g2 = np.einsum("ij,ij->j", g_ex, g_ex)
            n_new = self.n + g2
            sigma = (np.sqrt(n_new) - np.sqrt(self.n)) / self.config.alpha
            self.z += g - sigma * self._theta
            self.n = n_new
            self._theta = self._weights()
        over = self.n > self.config.n_max
        if np.any(over):
            self.n = np.minimum(self.n, self.config.n_max)
            self.z = self._solve_z(self._theta, self.n)  # same weights, faster learning from here
        self.examples += len(y)
        return loss / len(y)

    def snapshot(self) -> LogisticCalibrator:
        return LogisticCalibrator(self.task, self._theta[:-1].copy(), float(self._theta[-1]), self.center, self.scale)

    def state_dict(self) -> dict[str, Any]:
        return {"task": self.task, "z": self.z.tolist(), "n": self.n.tolist(), "examples": self.examples}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        z, n = np.asarray(d["z"], float), np.asarray(d["n"], float)
        if z.shape != self.z.shape or n.shape != self.n.shape or d["task"] != self.task:
            from .errors import IncompatibleCalibratorError

            raise IncompatibleCalibratorError(
                f"online state for {d.get('task')!r} has {z.shape[0]} coordinates, calibrator {self.task!r} has {self.z.shape[0]}; "
                "start the online state from the current calibrator set"
            )
        self.z, self.n, self.examples = z, n, int(d["examples"])
        self._theta = self._weights()
