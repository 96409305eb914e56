"""``labeled-impressions`` records -> ``LabeledBatch`` rows for online updates, drift and replay.

A record (see ``features.labels``) is ``{"example_id", "impression": {...},
"labels": {action: 0|1}, "prediction": {"features": {name: value}, "raw": {...},
"calibrated": {...}, "position", "model_version", "calibrator_version", ...} | null}``.
Rows without a logged prediction, or logged with another feature layout, are
skipped and counted: calibrators can only learn from what the scorer saw.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from features.calibration_features import CALIBRATION_FEATURE_NAMES, N_CALIBRATION_FEATURES
from features.events import ACTIONS

from .data import LabeledBatch

log = logging.getLogger(__name__)

VIDEO_TASK = ACTIONS.index("video_view_10s")


@dataclass
class RecordStats:
    rows: int = 0
    no_prediction: int = 0
    bad_features: int = 0
    model_versions: dict[str, int] = field(default_factory=dict)


def batch_from_records(records: Iterable[Mapping[str, Any]], model_version: str | None = None) -> tuple[LabeledBatch, RecordStats]:
    """Rows with calibration features, labels, mask (video views only on videos), label time,
    ``extras["served"]`` = the calibrated probabilities serving returned (NaN where not logged)
    and ``extras["request"]`` = a request key (crc32 of user/request id) for per-request metrics.

    With ``model_version`` set, rows predicted by another model are skipped (their
    logit columns belong to that model)."""
    stats = RecordStats()
    X, Y, M, TS, S, R = [], [], [], [], [], []
    for rec in records:
        pred = rec.get("prediction")
        if not pred:
            stats.no_prediction += 1
            continue
        mv = str(pred.get("model_version", ""))
        stats.model_versions[mv] = stats.model_versions.get(mv, 0) + 1
        if model_version is not None and mv != model_version:
            continue
        feats = pred.get("features") or {}
        try:
            row = np.asarray([feats[n] for n in CALIBRATION_FEATURE_NAMES], dtype=np.float32)
        except KeyError:
            stats.bad_features += 1
            continue
        imp = rec.get("impression", {})
        labels = rec.get("labels", {})
        X.append(row)
        Y.append([int(labels.get(a, 0)) for a in ACTIONS])
        mask = [True] * len(ACTIONS)
        mask[VIDEO_TASK] = imp.get("item_type") == "video"
        M.append(mask)
        TS.append(int(imp.get("ts", pred.get("request_ts", 0))))
        cal = pred.get("calibrated") or {}
        S.append([float(cal.get(a, np.nan)) for a in ACTIONS])
        R.append(zlib.crc32(f"{imp.get('user_id', '')}/{imp.get('request_id', '')}".encode()))
        stats.rows += 1
    if stats.no_prediction or stats.bad_features:
        log.info("labeled records: %d rows, %d without prediction, %d with another feature layout",
                 stats.rows, stats.no_prediction, stats.bad_features)
    n = len(X)
    batch = LabeledBatch(
        np.asarray(X, dtype=np.float32).reshape(n, N_CALIBRATION_FEATURES),
        np.asarray(Y, dtype=np.int8).reshape(n, len(ACTIONS)),
        np.asarray(M, dtype=bool).reshape(n, len(ACTIONS)),
        np.asarray(TS, dtype=np.int64).reshape(n),
        {"served": np.asarray(S, dtype=np.float64).reshape(n, len(ACTIONS)),
         "request": np.asarray(R, dtype=np.int64).reshape(n)},
    )
    return batch, stats


def read_jsonl(path: str | os.PathLike[str]) -> Iterable[dict[str, Any]]:
    """Records from a JSON-lines file (one labeled example per line; blank lines skipped)."""
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    log.warning("%s:%d: skipping a line that is not JSON: %s", path, i, exc)


def load_labeled(path: str | os.PathLike[str], model_version: str | None = None) -> LabeledBatch:
    """A ``.npz`` saved by ``LabeledBatch.save`` or a ``.jsonl`` of labeled-impressions records."""
    if str(path).endswith(".npz"):
        return LabeledBatch.load(path)
    return batch_from_records(read_jsonl(path), model_version)[0]
