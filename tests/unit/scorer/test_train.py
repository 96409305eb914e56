"""Training on a small world: the model learns, MMoE vs shared bottom is reported, the CLI writes an artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from features.assembly import FeatureSpec
from features.world import DEFAULT_START_MS, World
from scorer.dataset import CLASS_ORDER, DEFAULT_RATES, WorldSplit, make_split
from scorer.evaluate import mean_auc, stability, task_metrics
from scorer.metrics import auc, spearman
from scorer.model import ModelConfig
from scorer.train import TrainConfig, predict_logits, train_model

#: trains models or fits calibrators on simulated traffic (seconds to a minute): not in the fast tier
pytestmark = pytest.mark.slow

SPEC = FeatureSpec(user_buckets=1009, item_buckets=2003, ctx_buckets=211, seq_len=16)
SMALL = dict(expert_dims=[32, 16], tower_hidden=16, summary_dim=32, item_dim=16, seq_ffn=32, n_experts=4)


@pytest.fixture(scope="module")
def split() -> WorldSplit:
    world = World(seed=11, n_users=300, n_items=600)
    return make_split(world, SPEC, train_hours=10, holdout_hours=4, requests_per_s=0.3, start_ms=DEFAULT_START_MS)


def test_downsampling_is_stratified_and_recorded(split: WorldSplit) -> None:
    s = split.train.summary["sampling"]
    assert s["rates"] == dict(DEFAULT_RATES)
    for c in CLASS_ORDER:
        before, after = s["rows_before"][c], s["rows_after"][c]
        if before > 200:
            assert abs(after / before - DEFAULT_RATES[c]) < 0.1, c
    # positives are over-represented, so the training click rate exceeds the true one
    click = 0
    assert split.train.labels[:, click].mean() > 2 * split.holdout.labels[:, click].mean()
    assert split.holdout.ts.min() >= split.train.ts.max()  # hold-out is later in time


def test_metric_helpers() -> None:
    y = np.array([0, 0, 1, 1])
    assert auc(np.array([0.1, 0.2, 0.3, 0.4]), y) == 1.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), y) == 0.5
    assert spearman(np.arange(10.0), np.arange(10.0) ** 3) == pytest.approx(1.0)


def test_small_training_learns_and_compares_mmoe_with_shared_bottom(split: WorldSplit) -> None:
    results = {}
    for arch in ("mmoe", "shared_bottom"):
        model, hist = train_model(split.train, SPEC, ModelConfig(arch=arch, **SMALL),
                                  TrainConfig(epochs=2, batch_size=256, progress=False))
        assert hist[-1]["loss"] < hist[0]["loss"] * 1.05
        results[arch] = task_metrics(predict_logits(model, split.holdout), split.holdout)
    m, s = mean_auc(results["mmoe"]), mean_auc(results["shared_bottom"])
    print(f"\nhold-out mean AUC: mmoe {m:.4f} vs shared-bottom {s:.4f} (delta {m - s:+.4f})")
    for task, r in results["mmoe"].items():
        print(f"  {task:15s} mmoe {r['auc']:.4f}  shared {results['shared_bottom'][task]['auc']:.4f}  "
              f"oracle {r['oracle_auc']:.4f}")
    assert results["mmoe"]["click"]["auc"] > 0.6
    assert m > 0.58
    # MMoE should not lose to the baseline by more than noise on this small world
    assert m > s - 0.02, f"MMoE trails shared-bottom by {s - m:.4f} mean AUC"


def test_score_regularization_pulls_toward_teacher(split: WorldSplit) -> None:
    cfg = ModelConfig(use_sequence=False, **SMALL)
    teacher, _ = train_model(split.train, SPEC, cfg, TrainConfig(epochs=2, seed=1, progress=False))
    t = predict_logits(teacher, split.holdout)
    free, _ = train_model(split.train, SPEC, cfg, TrainConfig(epochs=2, seed=2, progress=False))
    reg, _ = train_model(split.train, SPEC, cfg, TrainConfig(epochs=2, seed=2, distill_weight=1.0, progress=False),
                         teacher)
    pf, pr = predict_logits(free, split.holdout), predict_logits(reg, split.holdout)
    d_free, d_reg = np.abs(pf - t).mean(), np.abs(pr - t).mean()
    s_free, s_reg = stability(pf, t, split.holdout.mask), stability(pr, t, split.holdout.mask)
    print(f"\nvs teacher: mean |logit diff| free {d_free:.4f} regularized {d_reg:.4f}; "
          f"Spearman free {s_free:.4f} regularized {s_reg:.4f}")
    assert d_reg < 0.95 * d_free
    assert s_reg > s_free


def test_cli_train_writes_a_loadable_artifact(tmp_path: Path) -> None:
    from scorer.artifact import load_artifact
    from scorer.cli import main

    rc = main(["train", "--out", str(tmp_path), "--users", "80", "--items", "200", "--train-hours", "2",
               "--holdout-hours", "1", "--requests-per-s", "0.2", "--epochs", "1"])
    assert rc == 0
    art = load_artifact(tmp_path)
    card = json.loads((art.path / "card.json").read_text())
    assert card["data"]["train"]["sampling"]["rates"]["none"] == DEFAULT_RATES["none"]
    assert set(card["metrics"]["holdout"]) == set(card["tasks"])
    assert (tmp_path / "latest").read_text().strip() == art.version


def test_cli_train_size_picks_the_model_widths(tmp_path: Path) -> None:
    from scorer.artifact import load_artifact
    from scorer.cli import main
    from scorer.model import MODEL_SIZES

    rc = main(["train", "--out", str(tmp_path), "--users", "80", "--items", "200", "--train-hours", "2",
               "--holdout-hours", "1", "--requests-per-s", "0.2", "--epochs", "1", "--size", "small"])
    assert rc == 0
    card = json.loads((load_artifact(tmp_path).path / "card.json").read_text())
    assert card["model_config"]["expert_dims"] == MODEL_SIZES["small"]["expert_dims"]
    assert card["model_config"]["n_experts"] == MODEL_SIZES["small"]["n_experts"]
    assert main(["train", "--out", str(tmp_path / "x"), "--size", "huge"]) == 2
    assert not (tmp_path / "x").exists()
