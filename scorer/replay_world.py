"""Write a replay log from the synthetic world: what a serving model showed, with labels and model inputs.

Stands in for the production logs in demos and tests: requests from
``features.world`` go through ``ReplayState`` (the offline twin of the stream
tables), are assembled exactly as serving does, scored by the serving artifact,
calibrated, and the top ``feed_size`` by raw click score are shown and labeled.
``feedrank replay --model NEW`` then re-scores this log with a new model.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from features.assembly import CAND_KEYS, USER_KEYS, assemble
from features.calibration_features import calibration_feature_matrix
from features.events import ACTIONS
from features.state import Candidate
from features.world import DEFAULT_START_MS, HOUR_MS, World

from .calibration import CalibratorSet, LabeledBatch
from .replay import ReplayLog
from .replay_state import ReplayState

log = logging.getLogger(__name__)

VIDEO_TASK = ACTIONS.index("video_view_10s")


def world_replay_log(world: World, artifact: Any, calibrators: CalibratorSet | None = None, hours: float = 1.0,
                     requests_per_s: float = 1.0, feed_size: int = 10, n_candidates: int = 30,
                     start_ms: int = DEFAULT_START_MS) -> ReplayLog:
    """``hours`` of world traffic served by ``artifact`` (``scorer.artifact.Artifact``)."""
    cal = calibrators or CalibratorSet.identity(artifact.version)
    state = ReplayState(seq_len=artifact.spec.seq_len)
    end = start_ms + int(hours * HOUR_MS)
    user: dict[str, list[np.ndarray]] = {k: [] for k in USER_KEYS}
    cand: dict[str, list[np.ndarray]] = {k: [] for k in CAND_KEYS}
    xs, ys, ms, ts, served, req_index = [], [], [], [], [], []
    q = 0
    for req in world.requests(start_ms, requests_per_s, n_candidates):
        if req.ts >= end:
            break
        state.advance(req.ts)
        ctx = req.context
        us, fb = state.user_state(req.user_id, req.ts), state.feedback(req.ts, ctx.country, ctx.gender)
        all_inputs = assemble(us, fb, ctx, req.candidates, artifact.spec).arrays()
        logits = artifact.score(assemble(us, fb, ctx, req.candidates, artifact.spec))
        order = np.argsort(-logits[:, 0], kind="stable")[:feed_size]
        shown = [Candidate(req.candidates[i].item_id, req.candidates[i].item_type, r, req.candidates[i].features)
                 for r, i in enumerate(order)]
        # as serving does: the shown items keep the logits they were ranked with (the logged model
        # inputs reproduce them) and are calibrated at the rank they are shown at
        inputs = {k: (v[order] if k in CAND_KEYS else v) for k, v in all_inputs.items()}
        X = calibration_feature_matrix(logits[order], us, fb, ctx, shown)
        result = world.show(req, [c.item_id for c in shown])
        for imp, engs in zip(result.impressions, result.engagements):
            state.add_impression(imp)
            state.add_engagements(engs)
        mask = np.ones((len(shown), len(ACTIONS)), dtype=bool)
        mask[:, VIDEO_TASK] = [c.item_type == "video" for c in shown]
        for k in USER_KEYS:
            user[k].append(inputs[k])
        for k in CAND_KEYS:
            cand[k].append(inputs[k])
        xs.append(X)
        ys.append(result.labels.astype(np.int8))
        ms.append(mask)
        ts.append(np.full(len(shown), req.ts, dtype=np.int64))
        served.append(cal.calibrate(X))
        req_index.append(np.full(len(shown), q))
        q += 1
    if q == 0:
        raise ValueError("no requests in the window; raise --hours or --requests-per-s")
    batch = LabeledBatch(np.concatenate(xs), np.concatenate(ys), np.concatenate(ms), np.concatenate(ts),
                         {"served": np.concatenate(served)})
    log.info("replay log: %d requests, %d shown items", q, len(batch))
    return ReplayLog(batch, {k: np.stack(v) for k, v in user.items()}, {k: np.concatenate(v) for k, v in cand.items()},
                     np.concatenate(req_index))
