"""Offline evaluation: ranking gain and its interval, Platt recalibration, the ceilings, a tiny full run."""

from __future__ import annotations

import numpy as np
import pytest

from features.assembly import FeatureSpec
from features.world import DEFAULT_START_MS, World
from scorer.dataset import make_split
from scorer.evaluate import EvalConfig, format_report, platt, ranking_gain, run_eval, world_probs


def test_ranking_gain_is_zero_for_random_and_one_for_the_truth() -> None:
    rng = np.random.default_rng(0)
    req = np.repeat(np.arange(400), 50)
    truth = rng.gamma(1.0, 1.0, len(req))
    noisy = truth + rng.normal(0, 1.0, len(req))
    got = ranking_gain({"truth": truth, "reversed": -truth, "noise": rng.random(len(req)), "noisy": noisy},
                       truth, req, k=10, boot=200)
    assert got["truth"]["gain"] == pytest.approx(1.0)
    assert got["reversed"]["gain"] < -0.5
    assert abs(got["noise"]["gain"]) < 0.05
    assert 0.2 < got["noisy"]["gain"] < 0.95
    r = got["noisy"]
    assert r["lo"] < r["gain"] < r["hi"] and r["hi"] - r["lo"] < 0.1 and r["requests"] == 400


def test_platt_recovers_a_logistic_map() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, 50_000)
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-(0.5 * x - 2.0)))).astype(np.float32)
    a, b = platt(x, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-2.0, abs=0.1)


@pytest.mark.slow
def test_tiny_eval_reports_ceilings_ablations_and_ranking() -> None:
    spec = FeatureSpec(user_buckets=1009, item_buckets=2003, ctx_buckets=211, seq_len=16)
    cfg = EvalConfig(n_users=80, n_items=200, requests_per_s=0.3, train_hours=2, holdout_hours=1, epochs=1, seeds=2,
                     variants=("mmoe", "no_content"), small=True, stability=False, rank_every=3)
    report = run_eval(cfg, spec, progress=False)
    truth, batch = report["ceilings"]["truth"], report["ceilings"]["batch"]
    for a, m in report["models"]["mmoe"].items():
        assert m["oracle_auc"] == truth[a]["oracle_auc"] and m["batch_auc"] == batch[a]["auc"]
    rk = report["ranking"]
    assert rk["truth"]["gain"] == pytest.approx(1.0)
    assert {"mmoe/s0", "mmoe/s1", "no_content/s0", "batch_ceiling", "popularity"} <= set(rk)
    assert rk["batch_ceiling"]["gain"] > rk["popularity"]["gain"]
    assert rk["mmoe/s0"]["requests"] > 50
    abl = report["ablations"]
    assert abl["mmoe"]["delta_mean_auc"]["mean"] == 0.0 and abl["no_content"]["seeds"] == 2
    text = format_report(report)
    assert "batch ceiling" in text and "bootstrap" in text and "no_content (2)" in text


@pytest.mark.slow
def test_ranking_requests_do_not_change_the_traffic() -> None:
    spec = FeatureSpec(user_buckets=1009, item_buckets=2003, ctx_buckets=211, seq_len=8)
    kw = dict(train_hours=2, holdout_hours=1, requests_per_s=0.3, start_ms=DEFAULT_START_MS)
    plain = make_split(World(seed=9, n_users=80, n_items=200), spec, **kw)
    ranked = make_split(World(seed=9, n_users=80, n_items=200), spec, rank_every=3, **kw)
    assert plain.holdout.ranking is None and ranked.holdout.ranking is not None
    assert np.array_equal(plain.holdout.labels, ranked.holdout.labels)
    assert np.array_equal(plain.holdout.cand["cand_item"], ranked.holdout.cand["cand_item"])
    r = ranked.holdout.ranking
    assert r.ts.min() >= ranked.holdout.ts.min() and (r.cand["cand_pos"] == 0).all()
    assert np.bincount(r.req_index).max() <= 100
    w = World(seed=9, n_users=80, n_items=200)
    assert np.allclose(world_probs(w, r), r.true_probs)  # the truth at position 0 for each ranked candidate
    assert np.allclose(world_probs(w, ranked.holdout), ranked.holdout.true_probs)
