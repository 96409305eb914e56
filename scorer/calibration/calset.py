"""A versioned set of per-task calibrators tied to a model version, and its serving holder.

``CalibratorSet`` is immutable: serving reads it without locks. ``CalibratorHolder``
owns the current set; ``swap(new)`` replaces it atomically (one reference
assignment under a lock that only writers take), so a request that grabbed a set
keeps using it while the next request sees the new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Mapping

import numpy as np

from features.calibration_features import CALIBRATION_FEATURE_NAMES, N_CALIBRATION_FEATURES
from features.events import ACTIONS

from .errors import CalibratorStateError, IncompatibleCalibratorError
from .logistic import LogisticCalibrator
from .stacked import StackedCalibrators

log = logging.getLogger(__name__)

FORMAT = "feedrank.calibrators/1"
FEATURE_LAYOUT_HASH = hashlib.sha256("\n".join(CALIBRATION_FEATURE_NAMES).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CalibratorSet:
    """One calibrator per task in ``ACTIONS`` for the raw scores of ``model_version``.

    ``version`` grows with every refit or online snapshot of the same model.
    ``source`` says where it came from (identity, offline-fit, replay, online).
    """

    model_version: str
    calibrators: Mapping[str, LogisticCalibrator]
    version: int = 1
    source: str = "offline-fit"
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    trained_examples: int = 0
    watermark_ms: int = 0  # event time of the newest label folded in
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [a for a in ACTIONS if a not in self.calibrators]
        if missing:
            raise IncompatibleCalibratorError(f"calibrator set for model {self.model_version!r} lacks tasks {missing}")

    @staticmethod
    def identity(model_version: str) -> "CalibratorSet":
        """Raw scores passed through (what serves before any calibrator exists)."""
        return CalibratorSet(model_version, {a: LogisticCalibrator.identity(a) for a in ACTIONS}, version=0, source="identity")

    def calibrate(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``[N, T]`` (``ACTIONS`` order) from features ``[N, F]``."""
        if X.ndim != 2 or X.shape[1] != N_CALIBRATION_FEATURES:
            raise IncompatibleCalibratorError(
                f"calibration features must be [N, {N_CALIBRATION_FEATURES}], got {X.shape}"
            )
        return self._stacked.predict(X)

    @cached_property
    def _stacked(self) -> StackedCalibrators:
        """Every task in one pass (built on first use; the set is immutable)."""
        return StackedCalibrators.of([self.calibrators[a] for a in ACTIONS])

    def next_version(self, **changes: Any) -> "CalibratorSet":
        return replace(self, version=self.version + 1, created_ms=int(time.time() * 1000), **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "feature_layout": FEATURE_LAYOUT_HASH,
            "model_version": self.model_version,
            "version": self.version,
            "source": self.source,
            "created_ms": self.created_ms,
            "trained_examples": self.trained_examples,
            "watermark_ms": self.watermark_ms,
            "meta": dict(self.meta),
            "tasks": {a: self.calibrators[a].to_dict() for a in ACTIONS},
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode("utf-8")

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "CalibratorSet":
        if d.get("format") != FORMAT:
            raise CalibratorStateError(f"unknown calibrator format {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("feature_layout") != FEATURE_LAYOUT_HASH:
            raise IncompatibleCalibratorError(
                "calibrators were fit on a different calibration feature layout; "
                "refit them for this build (feedrank replay --model ... or feedrank calibration fit)"
            )
        try:
            return CalibratorSet(
                model_version=str(d["model_version"]),
                calibrators={a: LogisticCalibrator.from_dict(c) for a, c in d["tasks"].items()},
                version=int(d["version"]),
                source=str(d.get("source", "unknown")),
                created_ms=int(d.get("created_ms", 0)),
                trained_examples=int(d.get("trained_examples", 0)),
                watermark_ms=int(d.get("watermark_ms", 0)),
                meta=dict(d.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibratorStateError(f"malformed calibrator set: {exc}") from exc

    @staticmethod
    def from_bytes(raw: bytes) -> "CalibratorSet":
        try:
            return CalibratorSet.from_dict(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibratorStateError(f"calibrator set is not UTF-8 JSON: {exc}") from exc


class CalibratorHolder:
    """The serving slot: ``current`` is lock-free to read, ``swap`` is atomic."""

    def __init__(self, initial: CalibratorSet) -> None:
        self._current = initial
        self._lock = threading.Lock()
        self.swaps = 0

    @property
    def current(self) -> CalibratorSet:
        return self._current

    def calibrate(self, X: np.ndarray) -> np.ndarray:
        """Calibrate with one consistent set (grabbed once), ``[N, T]``."""
        return self._current.calibrate(X)

    def swap(self, new: CalibratorSet, allow_model_change: bool = False) -> CalibratorSet:
        """Install ``new``; returns the previous set.

        Refuses a set for another model version unless ``allow_model_change``
        (the serving side swaps model and calibrators together), and refuses a
        set older than the current one for the same model (a late or replayed
        message must not roll calibrators back).
        """
        with self._lock:
            old = self._current
            if new.model_version != old.model_version and not allow_model_change:
                raise IncompatibleCalibratorError(
                    f"calibrators are for model {new.model_version!r} but serving runs {old.model_version!r}; "
                    "swap the model and its calibrators together (allow_model_change=True)"
                )
            if new.model_version == old.model_version and new.version < old.version:
                raise IncompatibleCalibratorError(
                    f"refusing to roll calibrators of {old.model_version!r} back from v{old.version} to v{new.version}"
                )
            self._current = new
            self.swaps += 1
        log.info("calibrators swapped: model %s v%d (%s) -> model %s v%d (%s)",
                 old.model_version, old.version, old.source, new.model_version, new.version, new.source)
        return old
