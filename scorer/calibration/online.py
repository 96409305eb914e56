"""Online calibration of all tasks from ``labeled-impressions``, resumable after a restart.

Typical use on the streams side::

    online = OnlineCalibration(holder.current)          # or OnlineCalibration.from_bytes(saved)
    online.update(X, y, mask, ts)                        # per message set of labeled impressions
    if online.due(now_ms):                               # every publish interval
        holder.swap(online.snapshot()); table[model] = online.to_bytes()
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from features.events import ACTIONS

from .calset import CalibratorSet
from .data import LabeledBatch
from .errors import CalibratorStateError, IncompatibleCalibratorError
from .ftrl import FtrlCalibrator, FtrlConfig

log = logging.getLogger(__name__)

STATE_FORMAT = "feedrank.online-calibration/1"


class OnlineCalibration:
    """FTRL state of every task, warm-started from ``base``; produces new ``CalibratorSet`` versions."""

    def __init__(self, base: CalibratorSet, config: FtrlConfig = FtrlConfig(), snapshot_interval_ms: int = 60_000) -> None:
        self.base = base
        self.config = config
        self.tasks = {a: FtrlCalibrator(base.calibrators[a], config) for a in ACTIONS}
        self.version = base.version
        self.watermark_ms = base.watermark_ms
        self.examples = 0
        self.snapshot_interval_ms = snapshot_interval_ms
        self._last_snapshot_ms = 0

    @property
    def model_version(self) -> str:
        return self.base.model_version

    def update(self, X: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None, ts: np.ndarray | None = None) -> dict[str, float]:
        """Fold labeled rows in: ``X [N, F]``, ``y [N, T]``, ``mask [N, T]`` (task applies), ``ts [N]`` epoch ms.

        Returns each task's mean log loss on the rows before the update (progressive validation).
        """
        y = np.asarray(y)
        mask = np.ones(y.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        losses: dict[str, float] = {}
        for t, a in enumerate(ACTIONS):
            rows = mask[:, t]
            if rows.any():
                losses[a] = self.tasks[a].update(X[rows], y[rows, t])
        self.examples += len(y)
        if ts is not None and len(ts):
            self.watermark_ms = max(self.watermark_ms, int(np.max(ts)))
        return losses

    def update_batch(self, batch: LabeledBatch) -> dict[str, float]:
        return self.update(batch.X, batch.y, batch.mask, batch.ts)

    def due(self, now_ms: int) -> bool:
        """True once per ``snapshot_interval_ms`` of event time (then remembers it)."""
        if now_ms - self._last_snapshot_ms >= self.snapshot_interval_ms:
            self._last_snapshot_ms = now_ms
            return True
        return False

    def snapshot(self) -> CalibratorSet:
        """An immutable set with the current weights and the next version number."""
        self.version += 1
        return CalibratorSet(
            self.base.model_version,
            {a: f.snapshot() for a, f in self.tasks.items()},
            version=self.version,
            source="online",
            trained_examples=self.base.trained_examples + self.examples,
            watermark_ms=self.watermark_ms,
            meta={"base_version": self.base.version, "online_examples": self.examples},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "base": self.base.to_dict(),
            "config": self.config.to_dict(),
            "version": self.version,
            "watermark_ms": self.watermark_ms,
            "examples": self.examples,
            "tasks": {a: f.state_dict() for a, f in self.tasks.items()},
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode("utf-8")

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "OnlineCalibration":
        if d.get("format") != STATE_FORMAT:
            raise CalibratorStateError(f"unknown online calibration state format {d.get('format')!r}, expected {STATE_FORMAT!r}")
        try:
            base = CalibratorSet.from_dict(d["base"])
            oc = OnlineCalibration(base, FtrlConfig(**d["config"]))
            for a in ACTIONS:
                oc.tasks[a].load_state_dict(d["tasks"][a])
            oc.version = int(d["version"])
            oc.watermark_ms = int(d["watermark_ms"])
            oc.examples = int(d["examples"])
            return oc
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibratorStateError(f"malformed online calibration state: {exc}") from exc

    @staticmethod
    def from_bytes(raw: bytes) -> "OnlineCalibration":
        try:
            return OnlineCalibration.from_dict(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibratorStateError(f"online calibration state is not UTF-8 JSON: {exc}") from exc

    @staticmethod
    def resume_or_start(saved: bytes | None, current: CalibratorSet, config: FtrlConfig = FtrlConfig()) -> "OnlineCalibration":
        """Resume from saved state when it belongs to ``current``'s model and is not older; else start from ``current``."""
        if saved:
            try:
                oc = OnlineCalibration.from_bytes(saved)
                if oc.model_version == current.model_version and oc.version >= current.version:
                    return oc
                log.info("saved online state is for model %s v%d; starting from model %s v%d",
                         oc.model_version, oc.version, current.model_version, current.version)
            except (CalibratorStateError, IncompatibleCalibratorError) as exc:
                log.warning("discarding unreadable online calibration state: %s", exc)
        return OnlineCalibration(current, config)
