"""Labeled calibration examples: the logged rows calibrators are fit and replayed on."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from features.calibration_features import N_CALIBRATION_FEATURES
from features.events import ACTIONS

from .errors import CalibratorStateError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabeledBatch:
    """``N`` logged impressions with calibration features and per-task labels.

    Attributes:
        X: ``[N, N_CALIBRATION_FEATURES]`` float32 (logit columns = the serving model's).
        y: ``[N, T]`` 0/1 labels in ``ACTIONS`` order.
        mask: ``[N, T]`` bool, False where a task does not apply (video views on organic items).
        ts: ``[N]`` int64 event time (epoch ms) of the label.
        extras: optional per-row arrays (model inputs for replay, request ids, ...).
    """

    X: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    ts: np.ndarray
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.X.shape[0]
        if self.X.ndim != 2 or self.X.shape[1] != N_CALIBRATION_FEATURES:
            raise ValueError(f"X must be [N, {N_CALIBRATION_FEATURES}], got {self.X.shape}")
        for name, arr, shape in (("y", self.y, (n, len(ACTIONS))), ("mask", self.mask, (n, len(ACTIONS))), ("ts", self.ts, (n,))):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        for k, v in self.extras.items():
            if v.shape[0] != n:
                raise ValueError(f"extras[{k!r}] has {v.shape[0]} rows, expected {n}")

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def take(self, idx: np.ndarray | slice) -> "LabeledBatch":
        return LabeledBatch(self.X[idx], self.y[idx], self.mask[idx], self.ts[idx], {k: v[idx] for k, v in self.extras.items()})

    def with_X(self, X: np.ndarray) -> "LabeledBatch":
        return LabeledBatch(X, self.y, self.mask, self.ts, self.extras)

    def split_by_time(self, frac: float) -> tuple["LabeledBatch", "LabeledBatch"]:
        """Earlier ``frac`` of rows (by event time) and the rest: train / held-out."""
        order = np.argsort(self.ts, kind="stable")
        cut = int(len(self) * frac)
        return self.take(order[:cut]), self.take(order[cut:])

    @staticmethod
    def concat(batches: Sequence["LabeledBatch"]) -> "LabeledBatch":
        if not batches:
            raise ValueError("no batches to concatenate")
        keys = set(batches[0].extras)
        return LabeledBatch(
            np.concatenate([b.X for b in batches]),
            np.concatenate([b.y for b in batches]),
            np.concatenate([b.mask for b in batches]),
            np.concatenate([b.ts for b in batches]),
            {k: np.concatenate([b.extras[k] for b in batches]) for k in keys},
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as ``.npz`` (atomically: temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, X=self.X, y=self.y, mask=self.mask, ts=self.ts, actions=np.asarray(ACTIONS),
                **{f"extra__{k}": v for k, v in self.extras.items()},
            )
        os.replace(tmp, path)

    @staticmethod
    def load(path: str | os.PathLike[str]) -> "LabeledBatch":
        try:
            with np.load(path, allow_pickle=False) as z:
                if tuple(str(a) for a in z["actions"]) != ACTIONS:
                    raise CalibratorStateError(
                        f"{path}: logged with actions {list(z['actions'])}, this build has {list(ACTIONS)}; re-log the calibration data"
                    )
                extras = {k[len("extra__"):]: z[k] for k in z.files if k.startswith("extra__")}
                return LabeledBatch(z["X"], z["y"], z["mask"].astype(bool), z["ts"].astype(np.int64), extras)
        except (OSError, KeyError, ValueError) as exc:
            raise CalibratorStateError(f"cannot read labeled examples from {path}: {exc}") from exc
