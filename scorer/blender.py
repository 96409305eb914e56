"""The blender: utility = sum over actions of weight x calibrated probability.

One weight set per item type (organic, video) with a large negative weight on
hide. Weights come from a JSON or YAML file that ``BlendConfigSource`` reloads
when its mtime changes (no restart; a bad edit keeps the last good weights and
is reported in ``last_error``), and a request may override any of them for an
experiment. The file format is documented in ``docs/calibration.md``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from features.events import ACTIONS, ITEM_TYPES

log = logging.getLogger(__name__)

T = len(ACTIONS)
HIDE = ACTIONS.index("hide")

#: Used when no file is configured: engagement weighted by depth, hide strongly negative.
DEFAULT_WEIGHTS: Mapping[str, Mapping[str, float]] = {
    "organic": {"click": 1.0, "long_click": 2.0, "closeup": 1.0, "repin": 4.0, "hide": -40.0, "video_view_10s": 0.0},
    "video": {"click": 0.5, "long_click": 1.0, "closeup": 1.0, "repin": 3.0, "hide": -40.0, "video_view_10s": 2.0},
}


class BlendConfigError(ValueError):
    """A blend configuration that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class BlendWeights:
    """``matrix[i, t]`` = weight of action ``ACTIONS[t]`` for item type ``ITEM_TYPES[i]``."""

    matrix: np.ndarray
    version: str = "default"

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape != (len(ITEM_TYPES), T):
            raise BlendConfigError(f"blend weights must be [{len(ITEM_TYPES)} item types, {T} actions], got {m.shape}")
        if not np.all(np.isfinite(m)):
            raise BlendConfigError("blend weights must be finite numbers")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    @staticmethod
    def from_mapping(d: Mapping[str, Any], version: str = "config") -> "BlendWeights":
        """Parse ``{"weights": {item_type: {action: weight}}}`` (or the inner mapping itself)."""
        inner = d.get("weights", d)
        if not isinstance(inner, Mapping):
            raise BlendConfigError("blend config: 'weights' must map item types to {action: weight}")
        unknown = set(inner) - set(ITEM_TYPES)
        if unknown:
            raise BlendConfigError(f"blend config: unknown item types {sorted(unknown)}; expected {list(ITEM_TYPES)}")
        missing = [it for it in ITEM_TYPES if it not in inner]
        if missing:
            raise BlendConfigError(f"blend config: no weights for item types {missing}; give every type a weight set")
        m = np.zeros((len(ITEM_TYPES), T))
        for i, it in enumerate(ITEM_TYPES):
            row = inner[it]
            bad = set(row) - set(ACTIONS)
            if bad:
                raise BlendConfigError(f"blend config: unknown actions {sorted(bad)} for {it}; expected {list(ACTIONS)}")
            for a, w in row.items():
                try:
                    m[i, ACTIONS.index(a)] = float(w)
                except (TypeError, ValueError):
                    raise BlendConfigError(f"blend config: weight {it}.{a} = {w!r} is not a number") from None
        if np.any(m[:, HIDE] > 0):
            raise BlendConfigError("blend config: the hide weight must be negative (a hide is a bad outcome)")
        return BlendWeights(m, version=str(d.get("version", version)))

    def to_mapping(self) -> dict[str, Any]:
        return {"version": self.version, "weights": {it: {a: float(self.matrix[i, t]) for t, a in enumerate(ACTIONS)}
                                                     for i, it in enumerate(ITEM_TYPES)}}

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> "BlendWeights":
        """Per-request overrides: ``{item_type: {action: w}}`` or ``{action: w}`` for every item type."""
        if not overrides:
            return self
        m = self.matrix.copy()
        for key, val in overrides.items():
            if key in ITEM_TYPES and isinstance(val, Mapping):
                for a, w in val.items():
                    if a not in ACTIONS:
                        raise BlendConfigError(f"override: unknown action {a!r}")
                    m[ITEM_TYPES.index(key), ACTIONS.index(a)] = float(w)
            elif key in ACTIONS:
                m[:, ACTIONS.index(key)] = float(val)
            else:
                raise BlendConfigError(f"override: {key!r} is neither an item type {list(ITEM_TYPES)} nor an action")
        return BlendWeights(m, version=f"{self.version}+override")


DEFAULT_BLEND = BlendWeights.from_mapping({"weights": DEFAULT_WEIGHTS}, version="default")


def item_type_index(item_types: Sequence[str] | np.ndarray) -> np.ndarray:
    """Index into ``ITEM_TYPES`` per item from names, is-video flags or indices (unknown names count as organic)."""
    arr = np.asarray(item_types)
    if arr.dtype == bool or arr.dtype.kind in "iu":  # is-video flags or indices already
        return arr.astype(np.int64)
    return np.asarray([ITEM_TYPES.index(t) if t in ITEM_TYPES else 0 for t in arr], dtype=np.int64)


def blend(probs: np.ndarray, item_types: Sequence[str] | np.ndarray, weights: BlendWeights = DEFAULT_BLEND,
          row_weights: np.ndarray | None = None) -> np.ndarray:
    """Utility per item.

    Args:
        probs: ``[N, T]`` calibrated probabilities in ``ACTIONS`` order.
        item_types: ``N`` item type names (or bool is-video flags).
        weights: per item type weights (already including request overrides).
        row_weights: optional ``[N, T]`` per-item weights (the learned blender); replaces ``weights``.
    Returns:
        ``[N]`` utilities; rank by descending utility.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != T:
        raise ValueError(f"probs must be [N, {T}], got {probs.shape}")
    w = row_weights if row_weights is not None else weights.matrix[item_type_index(item_types)]
    return np.einsum("nt,nt->n", probs, w)


def rank(probs: np.ndarray, item_types: Sequence[str] | np.ndarray, weights: BlendWeights = DEFAULT_BLEND) -> np.ndarray:
    """Candidate indices by descending utility (stable for ties)."""
    return np.argsort(-blend(probs, item_types, weights), kind="stable")


def load_blend_file(path: str | os.PathLike[str]) -> BlendWeights:
    """Read weights from ``.json`` or ``.yaml``/``.yml``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml  # optional: only needed for YAML files
        except ImportError:
            raise BlendConfigError(f"{path}: YAML needs PyYAML installed; install it or use a .json file") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BlendConfigError(f"{path}: invalid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BlendConfigError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise BlendConfigError(f"{path}: expected a mapping with 'weights'")
    return BlendWeights.from_mapping(data, version=f"{path.name}@{int(path.stat().st_mtime)}")


class BlendConfigSource:
    """Weights from a file, reloaded when its mtime changes (checked at most every ``check_interval_s``).

    ``get()`` is cheap and thread-safe; a broken file keeps the last good
    weights, logs the error once and exposes it as ``last_error``.
    """

    def __init__(self, path: str | os.PathLike[str] | None, check_interval_s: float = 1.0) -> None:
        self.path = Path(path) if path else None
        self.check_interval_s = check_interval_s
        self._weights = DEFAULT_BLEND
        self._mtime: float | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.reloads = 0
        if self.path is not None:
            self._reload(force=True)
            if self.last_error:
                raise BlendConfigError(self.last_error)

    def _reload(self, force: bool = False) -> None:
        assert self.path is not None
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError as exc:
            self._fail(f"blend config {self.path} unreadable: {exc}; keeping weights {self._weights.version}")
            return
        if not force and mtime == self._mtime:
            return
        try:
            new = load_blend_file(self.path)
        except (BlendConfigError, OSError, UnicodeDecodeError) as exc:
            self._mtime = mtime  # do not re-parse the same broken file every check
            self._fail(f"{exc}; keeping weights {self._weights.version}")
            return
        self._weights, self._mtime, self.last_error = new, mtime, None
        self.reloads += 1
        log.info("blend weights loaded from %s (version %s)", self.path, new.version)

    def _fail(self, msg: str) -> None:
        if msg != self.last_error:
            log.error(msg)
        self.last_error = msg

    def get(self, overrides: Mapping[str, Any] | None = None) -> BlendWeights:
        """The current weights with per-request ``overrides`` applied."""
        if self.path is not None:
            now = time.monotonic()
            if now >= self._next_check and self._lock.acquire(blocking=False):
                try:
                    self._next_check = now + self.check_interval_s
                    self._reload()
                finally:
                    self._lock.release()
        return self._weights.with_overrides(overrides)


__all__ = [
    "DEFAULT_BLEND",
    "DEFAULT_WEIGHTS",
    "BlendConfigError",
    "Blender",
    "BlendConfigSource",
    "BlendWeights",
    "blend",
    "item_type_index",
    "load_blend_file",
    "rank",
]


class Blender:
    """What the scorer calls: ``utility(calibrated, item_types, override)`` with hot-reloaded
    weights and an optional learned blending model (used when the calibration features ``X`` are given)."""

    def __init__(self, source: BlendConfigSource | None = None, model: Any | None = None) -> None:
        self.source = source or BlendConfigSource(None)
        self.model = model  # scorer.blend_model.BlendingModel, swapped by assignment

    def utility(self, calibrated: np.ndarray, item_types: Sequence[str],
                override: Mapping[str, Any] | None = None, X: np.ndarray | None = None) -> np.ndarray:
        weights = self.source.get(override)
        model = self.model
        if model is not None and X is not None and not override:
            # the configured weights (hot-reloaded) times the model's context multipliers
            rows = weights.matrix[item_type_index(item_types)] * model.multipliers(X)
            return blend(calibrated, item_types, row_weights=rows)
        return blend(calibrated, item_types, weights)
