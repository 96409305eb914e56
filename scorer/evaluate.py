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
from typing import Any, Callable, Mapping

import numpy as np

from features.assembly import FeatureSpec
from features.events import ACTIONS
from features.world import DEFAULT_START_MS, World, preset_params

from .blender import DEFAULT_BLEND
from .dataset import WORLD_KEYS, RowSet, make_split
from .metrics import auc, log_loss, spearman
from .model import MODEL_SIZES, REALTIME_COUNTERS, ModelConfig
from .train import TrainConfig, predict_logits, train_model

log = logging.getLogger(__name__)


def task_metrics(logits: np.ndarray, rows: RowSet, batch_probs: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Per task (rows where the task can happen): AUC, raw log loss, oracle (the world's truth) AUC/log loss,
    the batch-knowledge ceiling's AUC when ``batch_probs`` ``[R, T]`` is given, positives."""
    out: dict[str, dict[str, Any]] = {}
    for i, a in enumerate(ACTIONS):
        k = rows.mask[:, i] > 0
        y, s, t = rows.labels[k, i], logits[k, i], rows.true_probs[k, i]
        out[a] = {"auc": auc(s, y), "log_loss_raw": log_loss(1 / (1 + np.exp(-s)), y), "oracle_auc": auc(t, y),
                  "oracle_log_loss": log_loss(t, y), "positives": int(y.sum()), "rows": int(k.sum())}
        if batch_probs is not None:
            out[a]["batch_auc"] = auc(batch_probs[k, i], y)
    return out


def world_probs(world: World, rows: RowSet, batch: bool = False, seed: int = 0) -> np.ndarray:
    """``[R, T]`` the world's true marginals for ``rows`` (``batch``: the batch-knowledge ceiling,
    ``World.batch_prob_matrix``); the rows must carry their world keys."""
    if rows.keys is None:
        raise ValueError("rows without world keys (simulate records them)")
    args = [rows.keys[k] for k in WORLD_KEYS]
    return world.batch_prob_matrix(*args, seed=seed) if batch else world.true_prob_matrix(*args)


def platt(logits: np.ndarray, labels: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """Logistic recalibration ``sigmoid(a * logit + b)`` fitted by Newton's method (raw scores of a model
    trained on down-sampled rows are not probabilities; the blend needs them)."""
    a, b = 1.0, 0.0
    x, y = logits.astype(np.float64), labels.astype(np.float64)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        w = np.maximum(p * (1.0 - p), 1e-9)
        g = np.array([((p - y) * x).sum(), (p - y).sum()])
        h = np.array([[(w * x * x).sum(), (w * x).sum()], [(w * x).sum(), w.sum()]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)


def calibrate(logits: np.ndarray, fit_logits: np.ndarray, fit_rows: RowSet) -> np.ndarray:
    """``[R, T]`` probabilities: each task's ``platt`` fit on ``fit_rows`` (labelled) applied to ``logits``."""
    out = np.zeros(logits.shape)
    for i in range(logits.shape[1]):
        k = fit_rows.mask[:, i] > 0
        a, b = platt(fit_logits[k, i], fit_rows.labels[k, i])
        out[:, i] = 1.0 / (1.0 + np.exp(-(a * logits[:, i] + b)))
    return out


def ranking_gain(utilities: Mapping[str, np.ndarray], truth: np.ndarray, req: np.ndarray, k: int = 10,
                 boot: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Share of the achievable gain over a random pick that each ranking captures, top ``k`` per request.

    ``utilities``: per ranking method, the utility it ranks by ``[R]``; ``truth`` ``[R]`` the true
    expected utility; ``req`` ``[R]`` the request of each row. Gain = sum over requests of (true utility
    of the method's top k - k x the mean) / the same for the true top k (0 = random, 1 = the world's best).
    ``lo``/``hi``: the 2.5/97.5 % bootstrap interval over requests (``boot`` resamples).
    """
    order = np.argsort(req, kind="stable")
    bounds = np.flatnonzero(np.diff(req[order])) + 1
    groups = np.split(order, bounds)
    best, base = np.zeros(len(groups)), np.zeros(len(groups))
    for g, rows in enumerate(groups):
        t = truth[rows]
        kk = min(k, len(rows))
        best[g] = np.sort(t)[::-1][:kk].sum()
        base[g] = t.mean() * kk
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(groups), (boot, len(groups)))
    out: dict[str, dict[str, float]] = {}
    for name, u in utilities.items():
        got = np.zeros(len(groups))
        for g, rows in enumerate(groups):
            kk = min(k, len(rows))
            got[g] = truth[rows[np.argsort(-u[rows], kind="stable")[:kk]]].sum()
        num, den = got - base, best - base
        bs = num[draws].sum(1) / den[draws].sum(1)
        out[name] = {"gain": float(num.sum() / den.sum()), "lo": float(np.percentile(bs, 2.5)),
                     "hi": float(np.percentile(bs, 97.5)), "requests": len(groups)}
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


#: the ablations: each a change of the full model's config (``ModelConfig`` fields)
VARIANTS: Mapping[str, Mapping[str, Any]] = {
    "mmoe": {},
    "no_content": {"use_content": False},
    "no_sequence": {"use_sequence": False},
    "no_realtime": {"use_sequence": False, "drop_features": list(REALTIME_COUNTERS)},
    "shared_bottom": {"arch": "shared_bottom"},
}
#: ``--small``: a narrower model for the multi-seed ablations on a small box
SMALL_MODEL: Mapping[str, Any] = MODEL_SIZES["small"]


@dataclass(frozen=True)
class EvalConfig:
    """Sizes of the evaluation world and training; defaults take a few minutes per model on 2 cores."""

    seed: int = 0
    n_users: int = 1000
    n_items: int = 1000
    requests_per_s: float = 0.3
    train_hours: float = 24.0
    holdout_hours: float = 24.0
    #: hours of traffic replayed before the training day (state only, no rows): users arrive with a history
    history_hours: float = 0.0
    epochs: int = 3
    distill_weight: float = 1.0
    #: training seeds per variant (the world and its data stay those of ``seed``)
    seeds: int = 3
    variants: tuple[str, ...] = tuple(VARIANTS)
    #: every that many hold-out requests, a ranking request of ``rank_candidates`` (top ``feed_size`` kept)
    rank_every: int = 10
    rank_candidates: int = 100
    feed_size: int = 10
    small: bool = False
    stability: bool = True
    preset: str = "default"
    #: torch threads per training (more threads than free cores make OpenMP spin: on a busy box use 1)
    threads: int = 2


def model_config(name: str, small: bool = False) -> ModelConfig:
    """The ``ModelConfig`` of variant ``name`` (``VARIANTS``), narrower when ``small``."""
    return ModelConfig(**{**(SMALL_MODEL if small else {}), **VARIANTS[name]})


def run_eval(cfg: EvalConfig, spec: FeatureSpec = FeatureSpec(), progress: bool = True,
             checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train the variants on day 1 (``cfg.seeds`` seeds each), evaluate on the later day; a JSON-able report.

    Per variant and seed: per-task AUC on the hold-out impressions beside the world's truth (oracle) and
    the batch-knowledge ceiling on the same rows; the ranking gain captured on the hold-out ranking
    requests (Platt-recalibrated scores, default blend) with a bootstrap interval, beside popularity,
    the batch ceiling and the truth; each ablation's delta to the full model per seed (mean and sd).
    ``checkpoint`` gets the report so far after each variant (a long run on a busy box keeps what it did).
    """
    t0 = time.perf_counter()
    world = World(cfg.seed, cfg.n_users, cfg.n_items, params=preset_params(cfg.preset))
    split = make_split(world, spec, cfg.train_hours, cfg.holdout_hours, cfg.requests_per_s, DEFAULT_START_MS,
                       seed=cfg.seed, progress=progress, rank_every=cfg.rank_every,
                       rank_candidates=cfg.rank_candidates, history_hours=cfg.history_hours)
    train, hold = split.train, split.holdout
    ranking = hold.ranking
    base = TrainConfig(epochs=cfg.epochs, seed=cfg.seed, progress=progress, threads=cfg.threads)
    batch_hold = world_probs(world, hold, batch=True, seed=cfg.seed)
    weights = DEFAULT_BLEND.matrix

    def utility(probs: np.ndarray, rows: RowSet) -> np.ndarray:
        return np.einsum("nt,nt->n", probs, weights[(rows.cand["cand_type"] == 2).astype(np.int64)])

    def fit(mc: ModelConfig, seed: int, teacher: Any = None, w: float = 0.0) -> tuple[Any, np.ndarray]:
        tc = TrainConfig(**{**base.to_dict(), "seed": seed, "distill_weight": w})
        m, _ = train_model(train, spec, mc, tc, teacher)
        return m, predict_logits(m, hold)

    report: dict[str, Any] = {"config": {**cfg.__dict__, "variants": list(cfg.variants)}, "train": train.summary,
                              "holdout": hold.summary, "models": {}, "seeds": {}, "ranking": {}}
    report["ceilings"] = {"truth": task_metrics(world_probs(world, hold), hold),
                          "batch": task_metrics(batch_hold, hold)}
    models: dict[str, Any] = {}
    rank_util: dict[str, np.ndarray] = {}
    baselines: dict[str, np.ndarray] = {}
    if ranking is not None and ranking.keys is not None:
        truth_u = utility(ranking.true_probs, ranking)
        baselines = {"truth": truth_u,
                     "batch_ceiling": utility(world_probs(world, ranking, batch=True, seed=cfg.seed), ranking),
                     "popularity": world.item_ctr_prior[ranking.keys["item"]]}
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    for name in cfg.variants:
        mc = model_config(name, cfg.small)
        per_seed = []
        for sd in seeds:
            m, lg = fit(mc, sd)
            per_seed.append(task_metrics(lg, hold, batch_hold))
            if ranking is not None:
                probs = calibrate(predict_logits(m, ranking), lg, hold)
                rank_util[f"{name}/s{sd}"] = utility(probs, ranking)
            if sd == cfg.seed:
                models[name] = m
            log.info("%s seed %d mean AUC %.4f", name, sd, mean_auc(per_seed[-1]))
        report["models"][name] = per_seed[0]
        report["seeds"][name] = per_seed
        report["ablations"] = ablation_deltas(report["seeds"])
        if ranking is not None and baselines:
            report["ranking"] = ranking_gain({**rank_util, **baselines}, truth_u, ranking.req_index, k=cfg.feed_size,
                                             seed=cfg.seed)
        if checkpoint is not None:
            checkpoint(report)
    if cfg.stability and "mmoe" in models:
        mc = model_config("mmoe", cfg.small)
        teacher = models["mmoe"]
        _, a = fit(mc, cfg.seed + 1)
        _, b = fit(mc, cfg.seed + 2)
        _, ra = fit(mc, cfg.seed + 1, teacher, cfg.distill_weight)
        _, rb = fit(mc, cfg.seed + 2, teacher, cfg.distill_weight)
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


def ablation_deltas(seeds: Mapping[str, list[dict[str, dict[str, Any]]]], base: str = "mmoe") -> dict[str, Any]:
    """Per variant: mean AUC (mean and sd over seeds) and its delta to ``base`` seed by seed, also for hide."""
    out: dict[str, Any] = {}
    if base not in seeds:
        return out
    ref = [mean_auc(m) for m in seeds[base]]
    ref_h = [m["hide"]["auc"] for m in seeds[base]]
    for name, runs in seeds.items():
        mean = [mean_auc(m) for m in runs]
        hide = [m["hide"]["auc"] for m in runs]
        d = [x - y for x, y in zip(mean, ref)]
        dh = [x - y for x, y in zip(hide, ref_h)]
        out[name] = {"mean_auc": _ms(mean), "hide_auc": _ms(hide), "delta_mean_auc": _ms(d), "delta_hide_auc": _ms(dh),
                     "seeds": len(runs)}
    return out


def _ms(v: list[float]) -> dict[str, float]:
    a = np.asarray(v, dtype=np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max())}


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _avg(metrics: dict[str, dict[str, Any]], key: str) -> float:
    vals = [m[key] for m in metrics.values() if m.get(key) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def format_report(report: dict[str, Any]) -> str:
    """Markdown tables: per-task AUC per variant (first seed) with both ceilings, the ablations over
    seeds, the ranking gain with its interval, and stability."""
    names = list(report["models"])
    first = report["models"][names[0]]
    lines = ["| task | " + " | ".join(f"{n} AUC" for n in names) + " | batch ceiling | truth ceiling | "
             f"{names[0]} raw log loss | truth log loss |", "|---" * (len(names) + 5) + "|"]
    for a in ACTIONS:
        ms = [report["models"][n][a] for n in names]
        lines.append(f"| {a} | " + " | ".join(_f(m['auc']) for m in ms)
                     + f" | {_f(ms[0].get('batch_auc'))} | {_f(ms[0]['oracle_auc'])} | {_f(ms[0]['log_loss_raw'])}"
                     f" | {_f(ms[0]['oracle_log_loss'])} |")
    lines.append("| **mean** | " + " | ".join(f"**{mean_auc(report['models'][n]):.4f}**" for n in names)
                 + f" | **{_avg(first, 'batch_auc'):.4f}** | **{_avg(first, 'oracle_auc'):.4f}** | | |")
    abl = report.get("ablations") or {}
    if abl:
        lines += ["", "| variant (seeds) | mean AUC (sd) | delta to mmoe (sd) | hide AUC (sd) | hide delta (sd) |",
                  "|---|---|---|---|---|"]
        for n, r in abl.items():
            lines.append(f"| {n} ({r['seeds']}) | {r['mean_auc']['mean']:.4f} ({r['mean_auc']['sd']:.4f}) | "
                         f"{r['delta_mean_auc']['mean']:+.4f} ({r['delta_mean_auc']['sd']:.4f}) | "
                         f"{r['hide_auc']['mean']:.4f} ({r['hide_auc']['sd']:.4f}) | "
                         f"{r['delta_hide_auc']['mean']:+.4f} ({r['delta_hide_auc']['sd']:.4f}) |")
    rk = report.get("ranking") or {}
    if rk:
        n_req = next(iter(rk.values()))["requests"]
        cfg = report.get("config", {})
        lines += ["", f"| ranking gain captured, top {cfg.get('feed_size', 10)} of {cfg.get('rank_candidates', 100)}"
                  f" ({n_req} hold-out requests, default blend) | gain | 95 % bootstrap interval |", "|---|---|---|"]
        for n, r in rk.items():
            lines.append(f"| {n} | {r['gain']:.3f} | {r['lo']:.3f} to {r['hi']:.3f} |")
    s = report.get("stability")
    if s:
        lines += ["", "| score stability (Spearman, 2 seeds) | without score reg. | with score reg. (w="
                  f"{s['distill_weight']}) |", "|---|---|---|",
                  f"| mean over tasks | {s['without_score_regularization']:.4f} | {s['with_score_regularization']:.4f} |",
                  f"| mean abs logit difference | {s['score_mean_abs_diff_without']:.4f} | "
                  f"{s['score_mean_abs_diff_with']:.4f} |",
                  f"| mean AUC | {s['mean_auc_without']:.4f} | {s['mean_auc_with']:.4f} |"]
    return "\n".join(lines)


__all__ = ["EvalConfig", "SMALL_MODEL", "VARIANTS", "ablation_deltas", "calibrate", "format_report", "mean_auc",
           "model_config", "platt", "ranking_gain", "run_eval", "stability", "task_metrics", "world_probs"]
