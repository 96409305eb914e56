"""Command line: ``feedrank train``, ``feedrank eval``, ``feedrank bench score``.

``register(subparsers)`` adds the subcommands to the project CLI; ``python -m
scorer.cli ...`` works on its own. Every flag defaults from a ``FEEDRANK_*``
environment variable (named in ``--help``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


def _env(name: str, default: Any, kind: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get(f"FEEDRANK_{name}")
    return default if raw is None else kind(raw)


def _flag(p: argparse.ArgumentParser, flag: str, env: str, default: Any, kind: Callable[[str], Any], text: str) -> None:
    p.add_argument(flag, type=kind, default=_env(env, default, kind),
                   help=f"{text} (env FEEDRANK_{env}, default {default})")


def _bool(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _world_flags(p: argparse.ArgumentParser, users: int, items: int, rps: float) -> None:
    _flag(p, "--seed", "SEED", 0, int, "world and training seed")
    _flag(p, "--users", "WORLD_USERS", users, int, "users in the synthetic world")
    _flag(p, "--items", "WORLD_ITEMS", items, int, "items in the synthetic world")
    _flag(p, "--requests-per-s", "REQUESTS_PER_S", rps, float, "simulated feed requests per event-time second")
    _flag(p, "--threads", "THREADS", 2, int, "torch threads")


def register(subparsers: Any) -> None:
    """Add ``train`` and ``eval`` to an argparse subparsers object."""
    t = subparsers.add_parser("train", help="train the ranking model on the synthetic world, write an artifact")
    _world_flags(t, 1000, 1000, 0.3)
    _flag(t, "--out", "MODEL_DIR", Path("var/models"), Path, "artifact root; writes <root>/<version>/ and <root>/latest")
    _flag(t, "--train-hours", "TRAIN_HOURS", 24.0, float, "hours of simulated traffic to train on")
    _flag(t, "--holdout-hours", "HOLDOUT_HOURS", 3.0, float, "later hours held out for the card's metrics")
    _flag(t, "--epochs", "EPOCHS", 3, int, "training epochs")
    _flag(t, "--arch", "ARCH", "mmoe", str, "mmoe or shared_bottom")
    _flag(t, "--size", "MODEL_SIZE", "default", str, "model size: default or small (scorer.model.MODEL_SIZES)")
    _flag(t, "--sequence", "USE_SEQUENCE", True, _bool, "use the real-time action sequence (true/false)")
    _flag(t, "--distill-weight", "DISTILL_WEIGHT", 0.0, float, "score-regularization weight toward --teacher")
    _flag(t, "--teacher", "TEACHER", "", str, "teacher artifact dir or root (empty = none)")
    t.set_defaults(func=cmd_train)

    e = subparsers.add_parser("eval", help="offline evaluation: AUC/log loss on a later day, ablations, stability")
    _world_flags(e, 1000, 1000, 0.3)
    _flag(e, "--train-hours", "TRAIN_HOURS", 24.0, float, "hours of training traffic (day 1)")
    _flag(e, "--holdout-hours", "EVAL_HOLDOUT_HOURS", 24.0, float, "held-out later hours (day 2)")
    _flag(e, "--history-hours", "EVAL_HISTORY_HOURS", 0.0, float, "hours replayed before day 1 (state only): users "
          "arrive with a history, as in a system that has run a while")
    _flag(e, "--epochs", "EPOCHS", 3, int, "training epochs per model")
    _flag(e, "--distill-weight", "DISTILL_WEIGHT_EVAL", 1.0, float, "score-regularization weight in the stability run")
    _flag(e, "--report", "EVAL_REPORT", Path("var/eval/report.json"), Path, "where to write the JSON report")
    _flag(e, "--seeds", "EVAL_SEEDS", 3, int, "training seeds per variant (ablation spread)")
    _flag(e, "--variants", "EVAL_VARIANTS", "mmoe,no_content,no_sequence,no_realtime,shared_bottom", str,
          "comma-separated variants (scorer.evaluate.VARIANTS)")
    _flag(e, "--small", "EVAL_SMALL", False, _bool, "a narrower model (scorer.evaluate.SMALL_MODEL) to fit the seeds")
    _flag(e, "--stability", "EVAL_STABILITY", True, _bool, "also the score-stability run (4 more models)")
    _flag(e, "--rank-every", "EVAL_RANK_EVERY", 10, int, "a 100-candidate ranking request every N hold-out requests")
    _flag(e, "--preset", "WORLD_PRESET", "default", str, "world preset: default or conflict (features.world.PRESETS)")
    _flag(e, "--buckets", "EVAL_BUCKETS", 20_011, int, "hash buckets of user and item ids (fewer: faster training, "
          "more collisions)")
    e.set_defaults(func=cmd_eval)



def register_bench(bench: Any) -> None:
    """Add ``feedrank bench score``."""
    b = bench.add_parser("score", help="candidates/s and p50/p99 latency of the serving module")
    _flag(b, "--model", "MODEL_DIR", Path("var/models"), Path, "artifact dir or root (untrained default model if none)")
    _flag(b, "--n", "BENCH_N", "100,500,1000", str, "comma-separated candidate counts")
    _flag(b, "--threads", "BENCH_THREADS", 0, int, "torch threads; 0 = picked from the usable cores, as serving does")
    _flag(b, "--seconds", "BENCH_SECONDS", 2.0, float, "timing seconds per N")
    _flag(b, "--request", "BENCH_REQUEST", False, _bool, "also time the score process's whole work for one request "
          "(top 25 and all returned) against the model alone, with a cProfile breakdown by stage")
    _flag(b, "--busy-core", "BENCH_BUSY_CORE", False, _bool, "run it all again beside a process spinning one core "
          "and print idle against busy (and the same for threads = every usable core)")
    _flag(b, "--precision", "SCORE_PRECISION", "auto", str, "expert GEMMs: auto, float32 or bfloat16 (as a worker serves)")
    b.set_defaults(func=cmd_bench)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from features.assembly import FeatureSpec
    from features.world import DEFAULT_START_MS, World

    from .artifact import load_eager, save_artifact
    from .dataset import make_split
    from .evaluate import mean_auc, task_metrics
    from .model import MODEL_SIZES, ModelConfig
    from .train import TrainConfig, predict_logits, train_model

    torch.set_num_threads(args.threads)
    spec = FeatureSpec()
    if args.size not in MODEL_SIZES:
        print(f"--size {args.size!r}: use one of {', '.join(MODEL_SIZES)}", file=sys.stderr)
        return 2
    mc = ModelConfig(arch=args.arch, use_sequence=args.sequence, **MODEL_SIZES[args.size])  # type: ignore[arg-type]
    tc = TrainConfig(epochs=args.epochs, seed=args.seed, threads=args.threads, distill_weight=args.distill_weight)
    world = World(args.seed, args.users, args.items)
    split = make_split(world, spec, args.train_hours, args.holdout_hours, args.requests_per_s, DEFAULT_START_MS,
                       seed=args.seed, progress=True)
    teacher = load_eager(Path(args.teacher)) if args.teacher else None
    model, history = train_model(split.train, spec, mc, tc, teacher)
    metrics = task_metrics(predict_logits(model, split.holdout), split.holdout)
    card_metrics = {"holdout": metrics, "holdout_mean_auc": mean_auc(metrics), "history": history}
    if teacher is not None:
        card_metrics["teacher"] = str(args.teacher)
    out = save_artifact(args.out, model, spec, mc, tc.to_dict(),
                        {"train": split.train.summary, "holdout": split.holdout.summary}, card_metrics)
    print(f"wrote {out} (hold-out mean AUC {mean_auc(metrics):.4f}); {args.out}/latest -> {out.name}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalConfig, format_report, run_eval

    import torch

    torch.set_num_threads(args.threads)
    cfg = EvalConfig(seed=args.seed, n_users=args.users, n_items=args.items, requests_per_s=args.requests_per_s,
                     train_hours=args.train_hours, holdout_hours=args.holdout_hours,
                     history_hours=args.history_hours, epochs=args.epochs, distill_weight=args.distill_weight,
                     seeds=args.seeds,
                     variants=tuple(v for v in args.variants.split(",") if v), small=args.small,
                     stability=args.stability, rank_every=args.rank_every, preset=args.preset, threads=args.threads)
    from features.assembly import FeatureSpec

    args.report.parent.mkdir(parents=True, exist_ok=True)

    def write(report: dict[str, Any]) -> None:
        args.report.write_text(json.dumps(report, indent=2, default=str))

    report = run_eval(cfg, FeatureSpec(user_buckets=args.buckets, item_buckets=args.buckets), checkpoint=write)
    write(report)
    print(format_report(report))
    print(f"\nreport: {args.report} ({report['seconds']:.0f}s)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from features.assembly import FeatureSpec

    from .artifact import ArtifactError, load_artifact
    from .bench import bench_module, format_bench
    from .export import PRECISIONS, export_serving, load_serving, set_precision
    from .heap import keep_heap_pages
    from .model import ModelConfig, build_model
    from .threads import pick_score_threads, usable_cores

    keep_heap_pages()  # as in a worker (streams.serving.loopmon.tune_runtime)
    ns = [int(x) for x in str(args.n).split(",") if x.strip()]
    try:
        art = load_artifact(args.model)
        module, spec, cfg, source = art.module, art.spec, ModelConfig.from_dict(art.card["model_config"]), art.version
    except ArtifactError:
        spec, cfg = FeatureSpec(), ModelConfig()
        with tempfile.TemporaryDirectory() as d:
            module, _ = load_serving(export_serving(build_model(spec, cfg), Path(d) / "m.pt"))
        source = "untrained default model (no artifact found)"
    if args.precision not in PRECISIONS:
        print(f"--precision {args.precision!r}: expected one of {', '.join(PRECISIONS)}", file=sys.stderr)
        return 2
    precision = set_precision(module, args.precision)
    threads = pick_score_threads(args.threads)
    print(f"load before: {_load()}; usable cores {usable_cores()}, threads {threads} "
          f"({'--threads' if args.threads > 0 else 'picked as serving picks them'})")
    what = (f"{source}: {cfg.arch}, {cfg.n_experts} experts {cfg.expert_dims}, sequence={cfg.use_sequence} "
            f"(L={spec.seq_len}), expert GEMMs in {precision}")
    results, peak = bench_module(module, spec, cfg, ns, threads, args.seconds)
    print(format_bench(results, peak, threads, what))
    scorer = None
    if args.request:
        from .bench_request import format_profile, format_timings, load_scorer, profile_request, time_request

        scorer = load_scorer(args.model)
        set_precision(scorer.model.module, args.precision)
        torch.set_num_threads(threads)
        idle = [("idle", time_request(scorer, n, k, args.seconds)) for n in ns for k in (25, None)]
        print(format_timings(idle))
        for k in (25, None):
            print(format_profile(*profile_request(scorer, ns[-1], k), ns[-1], k))
    if args.busy_core:
        _busy_core(args, module, spec, cfg, ns, threads, scorer, what, results)
    print(f"load after: {_load()}")
    return 0


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _busy_core(args, module, spec, cfg, ns, threads, scorer, what, idle_results) -> None:
    """The module (and the request path) beside a process spinning one core: idle against busy p50/p99,
    for the picked thread count and for one thread per usable core."""
    import torch

    from .bench import bench_module
    from .bench_request import format_timings, spin_one_core, time_request
    from .threads import usable_cores

    every = usable_cores()
    counts = [threads] + ([every] if every != threads else [])
    idle = {threads: idle_results}
    for t in counts[1:]:
        idle[t] = bench_module(module, spec, cfg, ns, t, args.seconds)[0]
    torch.set_num_threads(threads)  # bench_module left the last count set
    req_idle = ([time_request(scorer, n, k, args.seconds) for n in ns for k in (25, None)]
                if scorer is not None else [])
    print(f"busy core: spinning one core ({_load()})")
    spin = spin_one_core()
    try:
        busy = {t: bench_module(module, spec, cfg, ns, t, args.seconds)[0] for t in counts}
        torch.set_num_threads(threads)
        req_busy = ([time_request(scorer, n, k, args.seconds) for n in ns for k in (25, None)]
                    if scorer is not None else [])
        print(f"busy core: done ({_load()})")
    finally:
        spin.terminate()
        spin.join(5)
    print("| threads | N | idle p50 ms | idle p99 ms | busy p50 ms | busy p99 ms | busy p50 / idle p50 |")
    print("|---|---|---|---|---|---|---|")
    for t in counts:
        for a, b in zip(idle[t], busy[t]):
            print(f"| {t}{' (picked)' if t == threads else ''} | {a.n} | {a.p50_ms:.2f} | {a.p99_ms:.2f} | "
                  f"{b.p50_ms:.2f} | {b.p99_ms:.2f} | {b.p50_ms / a.p50_ms:.2f}x |")
    if scorer is not None:
        print(format_timings([("idle", r) for r in req_idle] + [("busy core", r) for r in req_busy]))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("FEEDRANK_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="feedrank", description="feedrank scorer commands")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    register_bench(sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
