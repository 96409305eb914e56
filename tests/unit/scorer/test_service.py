"""The score function behind /score, without a server: ranking, masking, logging, weight overrides."""

from __future__ import annotations

import json

import numpy as np
import pytest

from features.calibration_features import CALIBRATION_FEATURE_NAMES
from features.events import ACTIONS
from features.rpc import parse_score_request
from features.state import FeedbackSnapshot, UserState

#: trains a small model once for the module (~40 s): not in the fast tier
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    from scorer.artifact import load_artifact
    from scorer.blender import Blender
    from scorer.calibration.calset import CalibratorHolder
    from scorer.calibration.store import CalibratorStore
    from scorer.service import Scorer

    art = load_artifact(tiny_model_dir / "models")
    cal = CalibratorStore(tiny_model_dir / "calibrators").load(art.version)
    assert cal is not None
    return Scorer(art, CalibratorHolder(cal), Blender())


def _request(n: int = 40, **extra) -> bytes:
    body = {"user_id": "u5", "request_id": "r1",
            "context": {"surface": "home", "country": "US", "gender": "f", "app_type": "ios", "device_type": "phone",
                        "ts": 1_764_000_000_000},
            "candidates": [{"item_id": f"i{i}", "item_type": "video" if i % 3 == 0 else "organic",
                            "features": {"item_ctr_prior": 0.02 + 0.001 * i}} for i in range(n)], **extra}
    return json.dumps(body).encode()


def test_ranked_by_utility_with_probabilities_and_a_full_prediction_log(scorer) -> None:
    out = scorer.score(parse_score_request(_request(top_k=10)), UserState("u5"), FeedbackSnapshot())
    items = out.response.items
    assert len(items) == 10 and [it.rank for it in items] == list(range(10))
    utilities = [it.utility for it in items]
    assert utilities == sorted(utilities, reverse=True)
    for it in items:
        assert all(0.0 <= it.calibrated[a] <= 1.0 for a in ACTIONS)
        if it.item_type == "organic":  # a 10-second view of an organic item cannot happen
            assert it.calibrated["video_view_10s"] == 0.0 and it.raw["video_view_10s"] == 0.0
    log = out.prediction_log
    assert [p.item_id for p in log.items] == [it.item_id for it in items]
    assert [p.position for p in log.items] == list(range(10))
    assert set(log.items[0].features) == set(CALIBRATION_FEATURE_NAMES)
    # the logged features are those of the returned rank
    assert log.items[3].features["pos_bucket:3"] == 1.0 and log.items[0].features["pos_bucket:0"] == 1.0


def test_a_weight_override_changes_the_ranking(scorer) -> None:
    base = scorer.score(parse_score_request(_request()), UserState("u5"), FeedbackSnapshot()).response
    no_video_value = {a: 0.0 for a in ACTIONS if a != "hide"}
    override = scorer.score(parse_score_request(_request(weights={"video": no_video_value})),
                            UserState("u5"), FeedbackSnapshot()).response
    organic_top = lambda r: sum(it.item_type == "organic" for it in r.items[:10])  # noqa: E731
    assert organic_top(override) > organic_top(base)
    assert all(it.item_type == "organic" for it in override.items[:10])


def test_history_is_used(scorer) -> None:
    from features.state import SeqAction

    req = parse_score_request(_request())
    empty = scorer.score(req, UserState("u5"), FeedbackSnapshot()).response
    history = tuple(SeqAction(item_id=f"i{i}", action="repin", ts=1_763_999_000_000 + i, surface="home",
                              item_type="organic") for i in range(1, 30, 3))
    rich = scorer.score(req, UserState("u5", actions=history), FeedbackSnapshot()).response
    assert rich.history_len == len(history)
    a = np.array([it.raw["repin"] for it in sorted(empty.items, key=lambda i: i.item_id)])
    b = np.array([it.raw["repin"] for it in sorted(rich.items, key=lambda i: i.item_id)])
    assert not np.allclose(a, b), "the user's real-time sequence does not change the scores"
