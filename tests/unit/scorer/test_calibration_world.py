"""The calibrators on the shared synthetic world (``features.world``), through the stream-state twin."""

from __future__ import annotations

import pytest

import time

import numpy as np

from features.calibration_features import calibration_feature_matrix
from features.events import ACTIONS
from features.state import Candidate
from features.world import World
from scorer import metrics as m
from scorer.calibration import LabeledBatch, fit_calibrator_set
from scorer.replay_state import ReplayState

#: trains models or fits calibrators on simulated traffic (seconds to a minute): not in the fast tier
pytestmark = pytest.mark.slow

START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
KEEP = np.array([0.2, 0.2, 0.2, 0.1, 0.05, 0.3])  # negatives a down-sampled model kept, per task


def _log(world: World, hours: float, rps: float, seed: int = 0) -> tuple[LabeledBatch, np.ndarray]:
    """Logged rows: calibration features built from replayed state, with a model's raw logits =
    true logit + log(1/keep) + noise (a model trained on down-sampled negatives)."""
    rng = np.random.default_rng(seed)
    state = ReplayState()
    end = START_MS + int(hours * 3_600_000)
    xs, ys, ms, ts, raws = [], [], [], [], []
    for req in world.requests(START_MS, rps, n_candidates=20):
        if req.ts >= end:
            break
        state.advance(req.ts)
        shown = [Candidate(c.item_id, c.item_type, i, c.features) for i, c in enumerate(req.candidates[:10])]
        ctx = req.context
        result = world.show(req, [c.item_id for c in shown])
        p = np.clip(result.true_probs, 1e-6, 1 - 1e-6)
        raw = np.log(p / (1 - p)) - np.log(KEEP) + rng.normal(0, 0.3, p.shape)
        xs.append(calibration_feature_matrix(raw, state.user_state(req.user_id, req.ts),
                                             state.feedback(req.ts, ctx.country, ctx.gender), ctx, shown))
        for imp, engs in zip(result.impressions, result.engagements):
            state.add_impression(imp)
            state.add_engagements(engs)
        mask = np.ones(p.shape, dtype=bool)
        mask[:, ACTIONS.index("video_view_10s")] = [c.item_type == "video" for c in shown]
        ys.append(result.labels.astype(np.int8))
        ms.append(mask)
        ts.append(np.full(len(shown), req.ts, dtype=np.int64))
        raws.append(raw)
    batch = LabeledBatch(np.concatenate(xs), np.concatenate(ys), np.concatenate(ms), np.concatenate(ts))
    return batch, np.concatenate(raws)


def test_calibrators_on_the_shared_world() -> None:
    t0 = time.perf_counter()
    world = World(seed=3, n_users=400, n_items=2000)
    batch, raw = _log(world, hours=1.0, rps=1.5)
    train, held = batch.split_by_time(0.6)
    cs = fit_calibrator_set(train, "world-model")
    P = cs.calibrate(held.X)
    raw_held = raw[np.argsort(batch.ts, kind="stable")][len(train):]
    print(f"\nworld: {len(batch)} rows in {time.perf_counter() - t0:.1f}s")
    checked = 0
    for t, a in enumerate(ACTIONS):
        rows = held.mask[:, t]
        y = held.y[rows, t].astype(float)
        raw_ce = m.calibration_error(1 / (1 + np.exp(-raw_held[rows, t])), y)
        ce, ece = m.calibration_error(P[rows, t], y), m.expected_calibration_error(P[rows, t], y)
        print(f"{a:15s} positives={int(y.sum()):5d} raw CE={raw_ce:5.2f} calibrated CE={ce:.3f} ECE={ece:.4f}")
        if y.sum() >= 800:  # +-10 % needs ~800 positives (sampling noise of train and held-out rows)
            checked += 1
            assert raw_ce > 1.5, a
            assert 0.9 <= ce <= 1.1, a
            assert ece <= 0.02, a
    assert checked >= 3
