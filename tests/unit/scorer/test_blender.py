"""Blender: utility ranking, hide penalty, reloadable config, overrides, tuning and the learned gate."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from features.calibration_features import CALIBRATION_FEATURE_NAMES, N_CALIBRATION_FEATURES
from features.events import ACTIONS
from scorer.blend_model import BlendingModel, fit_blending_model
from scorer.blend_tune import TuneObjective, evaluate, topk_mask, tune
from scorer.blender import DEFAULT_BLEND, BlendConfigError, BlendConfigSource, BlendWeights, blend, rank

T = len(ACTIONS)
H = ACTIONS.index("hide")


def _probs(**kw: float) -> np.ndarray:
    p = np.zeros(T)
    for a, v in kw.items():
        p[ACTIONS.index(a)] = v
    return p


def test_hide_pushes_an_item_down() -> None:
    engaging = _probs(click=0.1, repin=0.05, closeup=0.08)
    probs = np.stack([engaging + _probs(hide=0.05), engaging, engaging * 0.8])
    order = rank(probs, ["organic"] * 3)
    assert order.tolist() == [1, 2, 0]  # the same item with a hide risk drops below a weaker one
    u = blend(probs, ["organic"] * 3)
    assert u[0] == pytest.approx(u[1] + DEFAULT_BLEND.matrix[0, H] * 0.05)


def test_weights_per_item_type_and_hand_utility() -> None:
    p = np.stack([_probs(click=0.1, video_view_10s=0.5)] * 2)
    u = blend(p, ["organic", "video"])
    assert u[0] == pytest.approx(1.0 * 0.1)  # organic: click 1, video view 0
    assert u[1] == pytest.approx(0.5 * 0.1 + 2.0 * 0.5)  # video: click 0.5, video view 2


def test_overrides_per_request() -> None:
    w = DEFAULT_BLEND.with_overrides({"hide": -100.0, "video": {"repin": 9.0}})
    assert (w.matrix[:, H] == -100).all() and w.matrix[1, ACTIONS.index("repin")] == 9.0
    assert DEFAULT_BLEND.matrix[0, H] == -40  # the shared weights are untouched
    with pytest.raises(BlendConfigError, match="neither"):
        DEFAULT_BLEND.with_overrides({"bogus": 1.0})


def test_config_file_reloads_without_restart(tmp_path) -> None:
    path = tmp_path / "blend.json"
    cfg = DEFAULT_BLEND.to_mapping()
    path.write_text(json.dumps(cfg))
    src = BlendConfigSource(path, check_interval_s=0.0)
    assert src.get().matrix[0, H] == -40
    cfg["weights"]["organic"]["hide"] = -75.0
    path.write_text(json.dumps(cfg))
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9, path.stat().st_mtime_ns + 10**9))
    assert src.get().matrix[0, H] == -75 and src.reloads == 2
    # a broken edit keeps the last good weights and says why
    path.write_text("{not json")
    os.utime(path, ns=(path.stat().st_mtime_ns + 2 * 10**9,) * 2)
    assert src.get().matrix[0, H] == -75 and "invalid JSON" in (src.last_error or "")
    cfg["weights"]["video"]["hide"] = 5.0
    path.write_text(json.dumps(cfg))
    os.utime(path, ns=(path.stat().st_mtime_ns + 3 * 10**9,) * 2)
    assert src.get().matrix[1, H] == -40 and "negative" in (src.last_error or "")


def test_yaml_config(tmp_path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "blend.yaml"
    path.write_text("version: exp-3\nweights:\n  organic: {repin: 5, hide: -50}\n  video: {video_view_10s: 3, hide: -50}\n")
    w = BlendConfigSource(path).get()
    assert w.version == "exp-3" and w.matrix[0, ACTIONS.index("repin")] == 5 and w.matrix[0, 0] == 0


def test_bad_configs_are_typed_errors() -> None:
    with pytest.raises(BlendConfigError, match="no weights for item types"):
        BlendWeights.from_mapping({"weights": {"organic": {}}})
    with pytest.raises(BlendConfigError, match="unknown actions"):
        BlendWeights.from_mapping({"weights": {"organic": {"like": 1}, "video": {}}})


def test_topk_mask_per_group() -> None:
    m = topk_mask(np.array([1.0, 3.0, 2.0, 5.0, 4.0]), np.array([0, 0, 0, 1, 1]), 2)
    assert m.tolist() == [False, True, True, True, True]


def test_tune_finds_a_feasible_set_and_reports_the_trade_off() -> None:
    rng = np.random.default_rng(0)
    n_req, slate = 300, 20
    probs = rng.uniform(0, 0.1, (n_req * slate, T))
    probs[:, H] = rng.uniform(0, 0.01, n_req * slate)
    bad = rng.random(n_req * slate) < 0.2  # engaging but often hidden items
    probs[bad, ACTIONS.index("repin")] += 0.1
    probs[bad, H] += 0.1
    req = np.repeat(np.arange(n_req), slate)
    types = np.where(rng.random(n_req * slate) < 0.3, "video", "organic")
    obj = TuneObjective(top_k=5, cap_per_slot=0.03)
    weak = DEFAULT_BLEND.with_overrides({"hide": -1.0})
    assert not evaluate(weak, probs, types, req, obj).feasible
    rep = tune(probs, types, req, weak, obj, n_samples=60)
    assert rep.best is not None and rep.best.cap_per_slot <= 0.03
    gains = [e.gain_per_request for e in rep.frontier]
    caps = [e.cap_per_slot for e in rep.frontier]
    assert gains == sorted(gains) and caps == sorted(caps) and len(rep.frontier) >= 2
    print("\n" + rep.table())
    json.dumps(rep.to_dict())


@pytest.mark.slow
def test_learned_blender_discounts_an_overstated_task_in_one_context() -> None:
    rng = np.random.default_rng(0)
    n = 8_000
    X = np.zeros((n, N_CALIBRATION_FEATURES), dtype=np.float32)
    web = rng.random(n) < 0.5
    X[:, CALIBRATION_FEATURE_NAMES.index("app:web")] = web
    X[:, CALIBRATION_FEATURE_NAMES.index("app:ios")] = ~web
    probs = rng.uniform(0.01, 0.2, (n, T))
    true = probs.copy()
    true[web, ACTIONS.index("repin")] *= 0.4  # on web, predicted repins overstate what happens
    y = (rng.random((n, T)) < true).astype(float)
    types = np.full(n, "organic")
    model = fit_blending_model(X, probs, y, np.ones((n, T), bool), types, DEFAULT_BLEND)
    mult = model.multipliers(X)
    r = ACTIONS.index("repin")
    assert mult[web, r].mean() < 0.75 and mult[~web, r].mean() > 0.85
    back = BlendingModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_allclose(back.row_weights(X[:5], types[:5]), model.row_weights(X[:5], types[:5]))
    assert (model.row_weights(X, types)[:, H] < 0).all()  # the hide weight stays a penalty
