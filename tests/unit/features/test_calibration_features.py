"""Calibration feature layout and values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from features.calibration_features import (
    CALIBRATION_FEATURE_NAMES,
    N_CALIBRATION_FEATURES,
    calibration_feature_matrix,
    set_logits,
    task_columns,
    task_feature_names,
)
from features.events import ACTIONS
from features.state import Candidate, Counts, FeedbackSnapshot, ScoreContext, UserState

CTX = ScoreContext("home", "US", "f", "ios", "phone", 1_700_000_000_000)
USER = UserState("u1", counts_3h=Counts(10, {"click": 2}), counts_1d=Counts(50, {"click": 5}))


def _fb(us_click: int) -> FeedbackSnapshot:
    return FeedbackSnapshot({
        "all": Counts(100_000, {a: 5000 for a in ACTIONS}),
        "c:US": Counts(50_000, {"click": us_click}),
        "gc:f:US": Counts(20_000, {"click": us_click * 2 // 5}),
    })


def _col(name: str) -> int:
    return CALIBRATION_FEATURE_NAMES.index(name)


def test_layout_is_about_80_features_and_per_task_blocks() -> None:
    assert 70 <= N_CALIBRATION_FEATURES <= 90
    assert len(set(CALIBRATION_FEATURE_NAMES)) == N_CALIBRATION_FEATURES
    for t, a in enumerate(ACTIONS):
        names = task_feature_names(a)
        assert names[0] == f"logit:{a}" and names[1] == f"logit_x_video:{a}"
        assert not any(n.startswith("logit") for n in names[2:])
        assert list(task_columns(t)) == list(task_columns(a))


def test_values_one_hots_positions_and_logits() -> None:
    cands = [Candidate("a", "organic", 0), Candidate("b", "video", 6), Candidate("c", "organic", 400)]
    logits = np.array([[0.5] * 6, [-1.0] * 6, [30.0] * 6])
    X = calibration_feature_matrix(logits, USER, _fb(2500), CTX, cands)
    assert X.shape == (3, N_CALIBRATION_FEATURES) and X.dtype == np.float32
    assert X[0, _col("app:ios")] == 1 and X[0, _col("device:phone")] == 1 and X[0, _col("gender:f")] == 1
    assert X[1, _col("item_type:video")] == 1 and X[0, _col("item_type:organic")] == 1
    assert X[0, _col("pos_bucket:0")] == 1 and X[1, _col("pos_bucket:5")] == 1 and X[2, _col("pos_bucket:50")] == 1
    assert X[:, [i for i, n in enumerate(CALIBRATION_FEATURE_NAMES) if n.startswith("pos_bucket")]].sum(1).tolist() == [1, 1, 1]
    assert X[0, _col("logit:click")] == pytest.approx(0.5) and X[0, _col("logit_x_video:click")] == 0
    assert X[1, _col("logit_x_video:repin")] == pytest.approx(-1.0)
    assert X[2, _col("logit:hide")] == pytest.approx(20.0)  # clipped
    # unknown vocabulary falls into "other"
    X2 = calibration_feature_matrix(None, USER, _fb(2500), ScoreContext("x", "US", "f", "tv", "fridge", CTX.ts), cands[:1])
    assert X2[0, _col("app:other")] == 1 and X2[0, _col("device:other")] == 1 and X2[0, _col("surface:other")] == 1
    assert X2[0, _col("logit:click")] == 0


def test_feedback_rate_doubling_moves_feature_by_about_log2() -> None:
    x1 = calibration_feature_matrix(None, USER, _fb(2500), CTX, [Candidate("a", "organic", 0)])
    x2 = calibration_feature_matrix(None, USER, _fb(5000), CTX, [Candidate("a", "organic", 0)])
    d = x2[0, _col("fb30m_country:click")] - x1[0, _col("fb30m_country:click")]
    assert d == pytest.approx(math.log(2) + math.log(0.95 / 0.9), abs=0.02)  # odds ratio of 5% -> 10%


def test_item_rates_are_lifts_over_overall() -> None:
    c = Candidate("a", "organic", 0, {"item_impressions_1d": 10_000, "item_actions_1d:click": 1000})
    X = calibration_feature_matrix(None, USER, _fb(2500), CTX, [c, Candidate("b", "organic", 0)])
    assert X[0, _col("item_1d:click")] > 0.6  # 10% vs 5% overall
    assert X[1, _col("item_1d:click")] == 0


def test_set_logits_validates() -> None:
    X = calibration_feature_matrix(None, USER, _fb(2500), CTX, [Candidate("a", "video", 0)])
    set_logits(X, np.full((1, 6), 2.0))
    assert X[0, _col("logit_x_video:click")] == 2.0
    with pytest.raises(ValueError, match="shape"):
        set_logits(X, np.zeros((2, 6)))
    with pytest.raises(ValueError, match="NaN"):
        set_logits(X, np.full((1, 6), np.nan))
