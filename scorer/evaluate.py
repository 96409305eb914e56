"""Offline evaluation: per-task AUC and log loss on a held-out later period, and the ablations.

``run_eval`` trains on day 1 of a world and evaluates on day 2: MMoE vs shared
bottom, with vs without the real-time sequence (mixer and sequence-derived
features), without any real-time user state (also no 3 h / 1 d user counters and
no 30-minute feedback rates: what a batch-only system would have), and score stability = Spearman
rank correlation between the scores of two models retrained with different
seeds, without and with score regularization (distillation toward a teacher).
The world's true probabilities give the ceiling (oracle AUC). Log loss is of the
RAW scores: the training data is down-sampled, so it is expected to be poor
until the calibrators map scores to probabilities.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.assembly import FeatureSpec
from features.events import ACTIONS
from features.world import DEFAULT_START_MS, World

from .dataset import RowSet, make_split
from .metrics import auc, log_loss, spearman
from .model import REALTIME_COUNTERS, ModelConfig
from .train import TrainConfig, predict_logits, train_model

log = logging.getLogger(__name__)


def task_metrics(logits: np.ndarray, rows: RowSet) -> dict[str, dict[str, Any]]:
    """Per task (rows where the task can happen): AUC, raw log loss, oracle AUC/log loss, positives."""
    out: dict[str, dict[str, float]] = {}
    for i, a in enumerate(ACTIONS):
        k = rows.mask[:, i] > 0
        y, s, t = rows.labels[k, i], logits[k, i], rows.true_probs[k, i]
        out[a] = {"auc": auc(s, y), "log_loss_raw": log_loss(1 / (1 + np.exp(-s)), y), "oracle_auc": auc(t, y),
                  "oracle_log_loss": log_loss(t, y), "positives": int(y.sum()), "rows": int(k.sum())}
    return out


def mean_auc(metrics: dict[str, dict[str, Any]]) -> float:
    """Mean AUC over the tasks where it is defined (NaN when none is)."""
    vals = [m["auc"] for m in metrics.values() if m["auc"] is not None]
    return float(np.mean(vals)) if vals else float("nan")


def stability(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean over tasks of the Spearman correlation between two models' scores ``[R, T]`` (valid rows)."""
    ok = np.ones(a.shape, dtype=bool) if mask is None else mask > 0
    vals = [spearman(a[ok[:, i], i], b[ok[:, i], i]) for i in range(a.shape[1])]
    return float(np.mean([v for v in vals if v is not None])) if any(v is not None for v in vals) else float("nan")


@dataclass(frozen=True)
class EvalConfig:
    """Sizes of the evaluation world and training; defaults take a few minutes on 2 cores."""

    seed: int = 0
    n_users: int = 1000
    n_items: int = 1000
    requests_per_s: float = 0.3
    train_hours: float = 24.0
    holdout_hours: float = 24.0
    epochs: int = 3
    distill_weight: float = 1.0


def run_eval(cfg: EvalConfig, spec: FeatureSpec = FeatureSpec(), progress: bool = True) -> dict[str, Any]:
    """Train the variants on day 1, evaluate on the later day; returns a JSON-able report."""
    t0 = time.perf_counter()
    world = World(cfg.seed, cfg.n_users, cfg.n_items)
    split = make_split(world, spec, cfg.train_hours, cfg.holdout_hours, cfg.requests_per_s, DEFAULT_START_MS,
                       seed=cfg.seed, progress=progress)
    train, hold = split.train, split.holdout
    base = TrainConfig(epochs=cfg.epochs, seed=cfg.seed, progress=progress)

    def fit(mc: ModelConfig, seed: int, teacher: Any = None, w: float = 0.0) -> tuple[Any, np.ndarray]:
        tc = TrainConfig(**{**base.to_dict(), "seed": seed, "distill_weight": w})
        m, _ = train_model(train, spec, mc, tc, teacher)
        return m, predict_logits(m, hold)

    variants = {"mmoe": ModelConfig(), "shared_bottom": ModelConfig(arch="shared_bottom"),
                "mmoe_no_sequence": ModelConfig(use_sequence=False),
                "mmoe_no_realtime": ModelConfig(use_sequence=False, drop_features=list(REALTIME_COUNTERS))}
    report: dict[str, Any] = {"config": cfg.__dict__, "train": train.summary, "holdout": hold.summary, "models": {}}
    logits: dict[str, np.ndarray] = {}
    models: dict[str, Any] = {}
    for name, mc in variants.items():
        models[name], logits[name] = fit(mc, cfg.seed)
        report["models"][name] = task_metrics(logits[name], hold)
        log.info("%s mean AUC %.4f", name, mean_auc(report["models"][name]))
    teacher = models["mmoe"]
    _, a = fit(ModelConfig(), cfg.seed + 1)
    _, b = fit(ModelConfig(), cfg.seed + 2)
    _, ra = fit(ModelConfig(), cfg.seed + 1, teacher, cfg.distill_weight)
    _, rb = fit(ModelConfig(), cfg.seed + 2, teacher, cfg.distill_weight)
    report["stability"] = {
        "without_score_regularization": stability(a, b, hold.mask),
        "with_score_regularization": stability(ra, rb, hold.mask),
        "distill_weight": cfg.distill_weight,
        "mean_auc_without": mean_auc(task_metrics((a + b) / 2, hold)),
        "mean_auc_with": mean_auc(task_metrics((ra + rb) / 2, hold)),
        "score_mean_abs_diff_without": float(np.abs(a - b).mean()),
        "score_mean_abs_diff_with": float(np.abs(ra - rb).mean()),
    }
    report["seconds"] = time.perf_counter() - t0
    return report


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_report(report: dict[str, Any]) -> str:
    """Markdown tables: per-task AUC/log loss per variant, and stability."""
    names = list(report["models"])
    lines = ["| task | " + " | ".join(f"{n} AUC" for n in names) + " | oracle AUC | mmoe raw log loss | oracle log loss |",
             "|---" * (len(names) + 4) + "|"]
    for a in ACTIONS:
        ms = [report["models"][n][a] for n in names]
        lines.append(f"| {a} | " + " | ".join(_f(m['auc']) for m in ms)
                     + f" | {_f(ms[0]['oracle_auc'])} | {_f(ms[0]['log_loss_raw'])} | {_f(ms[0]['oracle_log_loss'])} |")
    lines.append("| **mean** | " + " | ".join(f"**{mean_auc(report['models'][n]):.4f}**" for n in names) + " | | | |")
    s = report["stability"]
    lines += ["", "| score stability (Spearman, 2 seeds) | without score reg. | with score reg. (w="
              f"{s['distill_weight']}) |", "|---|---|---|",
              f"| mean over tasks | {s['without_score_regularization']:.4f} | {s['with_score_regularization']:.4f} |",
              f"| mean abs logit difference | {s['score_mean_abs_diff_without']:.4f} | "
              f"{s['score_mean_abs_diff_with']:.4f} |",
              f"| mean AUC | {s['mean_auc_without']:.4f} | {s['mean_auc_with']:.4f} |"]
    return "\n".join(lines)


__all__ = ["EvalConfig", "format_report", "mean_auc", "run_eval", "stability", "task_metrics"]
