"""The score function behind ``POST /score``: request + state in, ranked list out.

A plain function of its inputs (no server, no Kafka), so it is tested and
benchmarked directly. Pipeline per request:

    assemble (features/) -> TorchScript MMoE (user part once) -> raw logits [N, T]
    -> calibration features [N, F] -> calibrators -> calibrated p [N, T]
    -> blender utility [N] -> top k -> recalibrate the returned items at their rank
    -> the items' JSON and the prediction log, encoded here

Every step from assembly to ranking is an array operation over all N
candidates (``features.candidates.CandidateColumns``); Python objects are made
only for the returned items' JSON and the logged items.

The returned items' probabilities are for the position they are returned at
(position is a calibration feature), and those are what the prediction log
records for the label join.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Mapping, Protocol, Sequence

import numpy as np
import orjson

from features.numeric import sigmoid

from features.assembly import assemble
from features.candidates import TYPE_NAME
from features.calibration_features import (CALIBRATION_FEATURE_NAMES, calibration_feature_matrix, set_positions,
                                           shared_context_row)
from features.events import ACTIONS
from features.predictions import PredictionLog, decode_prediction
from features.rpc import ResponseBody, ScoreRequest, ScoreRequestColumns, ScoreResponse, encode_items
from features.state import FeedbackSnapshot, UserState, segment_keys, stable_hash

log = logging.getLogger(__name__)


class Blending(Protocol):
    """What the scorer needs of a blender."""

    def utility(self, calibrated: np.ndarray, item_types: Sequence[str] | np.ndarray,
                override: Mapping[str, Mapping[str, float]] | None = None,
                X: np.ndarray | None = None) -> np.ndarray: ...


_VIDEO_TASK = ACTIONS.index("video_view_10s")


def _mask_impossible(p: np.ndarray, is_video: np.ndarray) -> np.ndarray:
    """Zero the probability of actions that cannot happen (a 10-second view of an organic item)."""
    p[~is_video, _VIDEO_TASK] = 0.0
    return p


@dataclass(frozen=True)
class ScoredRequest:
    """One request's response (encoded but for ``served_by`` and ``latency_ms``) and its prediction log
    (encoded: the ``predictions`` record). ``response`` and ``prediction_log`` parse them, for callers that
    want the models (tests, replay)."""

    body: ResponseBody
    log_json: bytes

    @cached_property
    def response(self) -> ScoreResponse:
        return self.body.to_response()

    @cached_property
    def prediction_log(self) -> PredictionLog:
        return decode_prediction(self.log_json)


class Scorer:
    """Model + calibrators + blender, swappable at run time without a restart."""

    def __init__(self, model, calibrators, blender: Blending, max_log_items: int = 50,
                 feature_log_sample: float = 0.0) -> None:
        self._model = model
        self.feature_log_sample = feature_log_sample
        self._calibrators = calibrators  # CalibratorHolder (has .current) or a CalibratorSet
        self.blender = blender
        self.max_log_items = max_log_items
        self._lock = threading.Lock()

    # -- hot swap -------------------------------------------------------------------
    @property
    def model(self):
        return self._model

    @property
    def calibrators(self):
        return self._calibrators

    def swap_model(self, model, calibrators) -> None:
        """Install a new model together with its calibrators (one reference each)."""
        with self._lock:
            self._model, self._calibrators = model, calibrators

    def _current_calibrators(self):
        cal = self._calibrators
        return getattr(cal, "current", cal)

    # -- scoring --------------------------------------------------------------------
    def score(self, req: ScoreRequest | ScoreRequestColumns, user: UserState, feedback: FeedbackSnapshot,
              now_ms: int | None = None) -> ScoredRequest:
        """Rank ``req``'s candidates: arrays over all N from assembly to ranking, Python objects only for the
        returned items' JSON and the prediction log."""
        t0 = time.perf_counter()
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        model, cal_set = self._model, self._current_calibrators()  # one consistent pair per request
        ctx = req.to_context(now_ms)
        cands = req.columns()
        inputs = assemble(user, feedback, ctx, cands, model.spec)
        logits = model.score(inputs)  # [N, T]
        shared = shared_context_row(user, feedback, ctx)
        X = calibration_feature_matrix(logits, user, feedback, ctx, cands, shared)  # [N, F]
        is_video = cands.is_video
        calibrated = _mask_impossible(cal_set.calibrate(X), is_video)  # [N, T]
        override = {k: dict(v) for k, v in req.weights.items()} if req.weights else None
        utility = self.blender.utility(calibrated, is_video, override, X=X)
        k = min(req.top_k or len(cands), len(cands))
        order = top_k_order(utility, k)

        # the returned items' probabilities at the rank they are returned at
        X_top = set_positions(X[order], np.arange(k))
        top_video = is_video[order]
        cal_top = _mask_impossible(cal_set.calibrate(X_top), top_video)
        raw_top = _mask_impossible(sigmoid(logits[order]), top_video)

        request_id = req.request_id or uuid.uuid4().hex[:16]
        ids = [cands.item_ids[i] for i in order.tolist()]
        types = ["video" if v else "organic" for v in top_video.tolist()]
        calibrator_version = f"{cal_set.model_version}#{cal_set.version}"
        body = ResponseBody(request_id=request_id, user_id=req.user_id, model_version=model.version,
                            calibrator_version=calibrator_version, history_len=user.n_actions,
                            items_json=encode_items(ids, types, utility[order], cal_top, raw_top),
                            latency_ms=(time.perf_counter() - t0) * 1000.0)
        n_log = min(k, self.max_log_items)
        record = {
            "kind": "prediction", "request_id": request_id, "user_id": req.user_id, "ts": ctx.ts,
            "model_version": model.version, "calibrator_version": calibrator_version,
            "items": [{"item_id": ids[r], "position": r, "raw": dict(zip(ACTIONS, logit_row)),
                       "calibrated": dict(zip(ACTIONS, cal_row)), "features": feats}
                      for r, (logit_row, cal_row, feats) in enumerate(zip(
                          logits[order[:n_log]].tolist(), cal_top[:n_log].tolist(), _named_rows(X_top[:n_log])))],
        }
        if self.feature_log_sample and sampled(request_id, self.feature_log_sample):
            record["inputs"] = served_inputs(model.spec, ctx, inputs, cands, order[:n_log], feedback, user.behind_ms)
        return ScoredRequest(body, orjson.dumps(record))


def sampled(request_id: str, share: float) -> bool:
    """Whether a request's log carries its inputs: a stable hash of its id, so a re-sent request decides alike."""
    return stable_hash(request_id, 1_000_000) < share * 1_000_000


def served_inputs(spec, ctx, inputs, cands, rows: np.ndarray, feedback: FeedbackSnapshot, behind_ms: int = 0) -> dict:
    """The prediction log's ``inputs`` (``features.predictions.ServedInputs``) of the logged items ``rows``;
    ``behind_ms``: how far the tables read were behind their input (``UserState.behind_ms``)."""
    present = inputs.seq_mask
    return {
        "behind_ms": int(behind_ms),
        "feedback": {k: [c.impressions, *(c.actions.get(a, 0) for a in ACTIONS)]
                     for k in segment_keys(ctx.country, ctx.gender) for c in (feedback.get(k),)},
        "spec": asdict(spec),
        "context": {"surface": ctx.surface, "country": ctx.country, "gender": ctx.gender, "app_type": ctx.app_type,
                    "device_type": ctx.device_type, "ts": ctx.ts},
        "user_dense": inputs.user_dense.tolist(),
        "seq_item": inputs.seq_item[present].tolist(), "seq_action": inputs.seq_action[present].tolist(),
        "seq_type": inputs.seq_type[present].tolist(), "seq_age": inputs.seq_age[present].tolist(),
        "hide_item": inputs.hide_item[inputs.hide_item > 0].tolist(),
        "items": [{"item_type": TYPE_NAME.get(int(cands.type_code[i]), "unknown"), "position": int(cands.position[i]),
                   "features": cands.features_at(i), "cand_dense": inputs.cand_dense[i].tolist()}
                  for i in rows.tolist()],
    }


def top_k_order(utility: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best by descending utility, ties by index: ``argsort(-u, stable)[:k]`` without
    sorting all N (argpartition, then a stable sort of the ``k`` and their ties)."""
    neg = -np.asarray(utility, dtype=np.float64)
    n = len(neg)
    if k >= n:
        return np.argsort(neg, kind="stable")
    threshold = neg[np.argpartition(neg, k - 1)[:k]].max()
    if not np.isfinite(threshold):
        return np.argsort(neg, kind="stable")[:k]
    chosen = np.flatnonzero(neg <= threshold)  # the k best and every tie of the k-th, in index order
    return chosen[np.argsort(neg[chosen], kind="stable")[:k]]


def _named_rows(X: np.ndarray) -> list[dict[str, float]]:
    """Calibration-feature rows as name -> value dicts (every name: replay and training need them all).

    Values are rounded to 6 significant digits (float32 features carry no
    more, and the log is held in state until the attribution window closes),
    in one vectorized pass: per-value string formatting cost ~1.4 ms a request.
    """
    X = np.asarray(X, dtype=np.float64)
    mag = np.where(X == 0.0, 0.0, np.floor(np.log10(np.abs(X), where=X != 0.0, out=np.zeros_like(X))))
    scale = 10.0 ** (5.0 - mag)
    rounded = np.round(X * scale) / scale
    names = CALIBRATION_FEATURE_NAMES
    return [dict(zip(names, row)) for row in rounded.tolist()]


__all__ = ["Blending", "ScoredRequest", "Scorer", "sampled", "served_inputs", "top_k_order"]
