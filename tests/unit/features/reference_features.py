"""The per-candidate feature code the vectorized path replaced, kept as the reference it must equal.

Only tests import this: the product has one assembly path (``features.assembly``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from features.assembly import CAND_DENSE_NAMES, ITEM_TYPE_CODE, FeatureSpec
from features.calibration_features import (
    _IDX, _POS_EDGES, ITEM_PRIOR_WEIGHT, N_CALIBRATION_FEATURES, POSITION_BUCKETS, SHARED_OFFSET, set_logits,
    shared_context_row)
from features.candidates import ITEM_ACTION_KEY_FMT, ITEM_IMPRESSIONS_KEY
from features.events import ACTIONS
from features.numeric import logit
from features.state import Candidate, FeedbackSnapshot, ScoreContext, UserState, stable_hash


def reference_candidate_inputs(user: UserState, ctx: ScoreContext, candidates: Sequence[Candidate],
                               spec: FeatureSpec) -> dict[str, np.ndarray]:
    """``cand_item``, ``cand_type``, ``cand_pos``, ``cand_dense`` one candidate at a time."""
    recent = user.actions[-spec.seq_len:][::-1]
    item_hits: dict[str, int] = {}
    type_hits = [0, 0, 0]
    for a in recent:
        type_hits[ITEM_TYPE_CODE.get(a.item_type, 0)] += 1
        item_hits[a.item_id] = item_hits.get(a.item_id, 0) + 1
    n = len(candidates)
    cand_item = np.zeros(n, dtype=np.int64)
    cand_type = np.zeros(n, dtype=np.int64)
    cand_pos = np.zeros(n, dtype=np.int64)
    cand_dense = np.zeros((n, len(CAND_DENSE_NAMES)), dtype=np.float32)
    for i, c in enumerate(candidates):
        cand_item[i] = stable_hash(c.item_id, spec.item_buckets - 1) + 1
        cand_type[i] = ITEM_TYPE_CODE.get(c.item_type, 0)
        cand_pos[i] = min(max(c.position, 0), spec.position_buckets - 1)
        p = c.features.get("item_ctr_prior")
        if p is not None:
            q = min(max(float(p), 1e-5), 1.0 - 1e-5)
            cand_dense[i, 0] = math.log(q / (1.0 - q))
            cand_dense[i, 1] = 1.0
        if item_hits:
            cand_dense[i, 2] = math.log1p(item_hits.get(c.item_id, 0))
        if recent:
            cand_dense[i, 3] = type_hits[cand_type[i]] / len(recent)
    return {"cand_item": cand_item, "cand_type": cand_type, "cand_pos": cand_pos, "cand_dense": cand_dense}


def reference_calibration_features(raw_logits: np.ndarray | None, user: UserState, feedback: FeedbackSnapshot,
                                   ctx: ScoreContext, candidates: Sequence[Candidate]) -> np.ndarray:
    """``calibration_feature_matrix`` one candidate at a time."""
    n = len(candidates)
    out = np.zeros((n, N_CALIBRATION_FEATURES), dtype=np.float32)
    if n == 0:
        return out
    shared, r_all = shared_context_row(user, feedback, ctx)
    base = SHARED_OFFSET
    for i, c in enumerate(candidates):
        out[i, SHARED_OFFSET:] = shared.astype(np.float32)
        video = c.item_type == "video"
        out[i, base + _IDX["item_type:organic"]] = not video
        out[i, base + _IDX["item_type:video"]] = video
        bucket = int(np.searchsorted(_POS_EDGES, c.position, side="right"))
        out[i, base + _IDX[f"pos_bucket:{POSITION_BUCKETS[0]}"] + bucket] = 1.0
        if c.features and ITEM_IMPRESSIONS_KEY in c.features:
            imps = float(c.features[ITEM_IMPRESSIONS_KEY])
            for a in ACTIONS:
                acts = float(c.features.get(ITEM_ACTION_KEY_FMT.format(action=a), 0.0))
                rate = (acts + r_all[a] * ITEM_PRIOR_WEIGHT) / (imps + ITEM_PRIOR_WEIGHT)
                out[i, base + _IDX[f"item_1d:{a}"]] = logit(rate) - logit(r_all[a])
    if raw_logits is not None:
        set_logits(out, raw_logits)
    return out
