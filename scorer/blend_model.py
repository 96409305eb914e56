"""A learned blending model: context-dependent multipliers on the base blend weights.

``w_t(x) = base_t(item type) * 2 sigmoid(g_t . z(x) + c_t)`` with ``z`` the
standardized user and query features (app, device, gender, surface, item type,
the user's 3 h / 1 day rates) taken from the calibration feature matrix. The
multipliers stay in (0, 2): a weight never changes sign, so hide stays a
penalty. Trained on logged rows to predict the realized utility
``sum_t base_t y_t`` from ``sum_t w_t(x) p_t`` (squared error, L2 toward the base
weights), so it learns where a task's probability over- or under-states its
contribution to engagement for a kind of user or query.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from features.calibration_features import CALIBRATION_FEATURE_NAMES
from features.events import ACTIONS

from .blender import BlendWeights, item_type_index

log = logging.getLogger(__name__)

CONTEXT_PREFIXES = ("app:", "device:", "gender:", "surface:", "item_type:", "user_3h:", "user_1d:")
CONTEXT_COLUMNS = np.asarray([i for i, n in enumerate(CALIBRATION_FEATURE_NAMES) if n.startswith(CONTEXT_PREFIXES)])
CONTEXT_NAMES = tuple(CALIBRATION_FEATURE_NAMES[i] for i in CONTEXT_COLUMNS)


@dataclass(frozen=True)
class BlendingModel:
    base: BlendWeights
    gate_w: np.ndarray  # [C, T]
    gate_b: np.ndarray  # [T]
    center: np.ndarray  # [C]
    scale: np.ndarray  # [C]

    def _z(self, X: np.ndarray) -> np.ndarray:
        return (X[:, CONTEXT_COLUMNS].astype(np.float64) - self.center) / self.scale

    def multipliers(self, X: np.ndarray) -> np.ndarray:
        """``[N, T]`` multipliers in (0, 2) from the calibration feature matrix ``X``."""
        return 2.0 / (1.0 + np.exp(-(self._z(X) @ self.gate_w + self.gate_b)))

    def row_weights(self, X: np.ndarray, item_types: Sequence[str] | np.ndarray) -> np.ndarray:
        """Per-item ``[N, T]`` weights to pass to ``blend(..., row_weights=...)``."""
        return self.base.matrix[item_type_index(item_types)] * self.multipliers(X)

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_mapping(), "context": list(CONTEXT_NAMES), "gate_w": self.gate_w.tolist(),
                "gate_b": self.gate_b.tolist(), "center": self.center.tolist(), "scale": self.scale.tolist()}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "BlendingModel":
        if list(d["context"]) != list(CONTEXT_NAMES):
            raise ValueError("blending model was trained on another feature layout; retrain it (feedrank tune-blend --learn)")
        return BlendingModel(BlendWeights.from_mapping(d["base"]), np.asarray(d["gate_w"]), np.asarray(d["gate_b"]),
                             np.asarray(d["center"]), np.asarray(d["scale"]))


def fit_blending_model(X: np.ndarray, probs: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                       item_types: Sequence[str] | np.ndarray, base: BlendWeights, l2: float = 1e-3,
                       steps: int = 100, lr: float = 1.0, seed: int = 0) -> BlendingModel:
    """Fit the gate on logged rows (``X`` calibration features, ``probs``/``labels``/``mask`` ``[N, T]``);
    full-batch L-BFGS, at most ``steps`` iterations."""
    torch.manual_seed(seed)
    ctx = X[:, CONTEXT_COLUMNS].astype(np.float64)
    center, scale = ctx.mean(0), np.maximum(ctx.std(0), 0.1)
    z = torch.as_tensor((ctx - center) / scale, dtype=torch.float32)
    bw = torch.as_tensor(base.matrix[item_type_index(item_types)], dtype=torch.float32)
    m = torch.as_tensor(mask, dtype=torch.float32)
    p = torch.as_tensor(probs, dtype=torch.float32) * m
    target = (bw * torch.as_tensor(labels, dtype=torch.float32) * m).sum(1)
    gw = torch.zeros(z.shape[1], len(ACTIONS), requires_grad=True)
    gb = torch.zeros(len(ACTIONS), requires_grad=True)
    opt = torch.optim.LBFGS([gw, gb], lr=lr, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        w = bw * 2 * torch.sigmoid(z @ gw + gb)
        loss = ((w * p).sum(1) - target).pow(2).mean() + l2 * (gw.pow(2).sum() + gb.pow(2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    loss = closure()
    log.info("blending model fit: final loss %.5f on %d rows", float(loss.detach()), len(target))
    return BlendingModel(base, gw.detach().double().numpy(), gb.detach().double().numpy(), center, scale)
