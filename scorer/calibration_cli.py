"""Command line: ``feedrank replay``, ``feedrank calibration {fit,log,twin,report,bench}``, ``feedrank tune-blend``.

``register(subparsers)`` adds them to the project CLI; ``python -m
scorer.calibration_cli ...`` works on its own. Every flag defaults from a
``FEEDRANK_*`` environment variable, named in ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


def _env(name: str, default: Any, kind: Callable[[str], Any]) -> Any:
    raw = os.environ.get(f"FEEDRANK_{name}")
    return default if raw is None or raw == "" else kind(raw)


def _flag(p: argparse.ArgumentParser, flag: str, env: str, default: Any, kind: Callable[[str], Any], text: str) -> None:
    p.add_argument(flag, type=kind, default=_env(env, default, kind),
                   help=f"{text} (env FEEDRANK_{env}, default {default!s})")


def register(subparsers: Any) -> None:
    """Add ``replay``, ``calibration`` (``fit``, ``log``, ``twin``, ``report``, ``bench``) and ``tune-blend``."""
    r = subparsers.add_parser("replay", help="re-score logged calibration data with a new model and fit its calibrators")
    _flag(r, "--model", "REPLAY_MODEL", Path("var/models"), Path, "NEW model artifact dir or root (root: its latest)")
    _flag(r, "--log", "REPLAY_LOG", Path("var/calibration/replay-log.npz"), Path, "replay log (.npz with model inputs)")
    _flag(r, "--out", "CALIBRATOR_DIR", Path("var/calibrators"), Path, "calibrator store root; writes <root>/<model>/calibrators.json")
    _flag(r, "--holdout-frac", "REPLAY_HOLDOUT_FRAC", 0.25, float, "later fraction of the log held out for the check")
    _flag(r, "--l2", "CALIBRATION_L2", 1e-3, float, "L2 on standardized calibrator weights")
    _flag(r, "--threads", "THREADS", 1, int, "torch threads (one request at a time: 1 is fastest on a busy machine)")
    r.set_defaults(func=cmd_replay)

    c = subparsers.add_parser("calibration", help="offline calibration: fit calibrators, draw reliability diagrams")
    cs = c.add_subparsers(dest="calibration_cmd", required=True)
    f = cs.add_parser("fit", help="fit calibrators offline on labeled examples (.npz or labeled-impressions .jsonl)")
    _flag(f, "--input", "CALIBRATION_INPUT", Path("var/calibration/labeled.jsonl"), Path, "labeled examples")
    _flag(f, "--model-version", "MODEL_VERSION", "", str, "model version the raw logits belong to (required)")
    _flag(f, "--out", "CALIBRATOR_DIR", Path("var/calibrators"), Path, "calibrator store root")
    _flag(f, "--l2", "CALIBRATION_L2", 1e-3, float, "L2 on standardized calibrator weights")
    _flag(f, "--min-positives", "CALIBRATION_MIN_POSITIVES", 20, int, "fewer positives keep the identity calibrator")
    f.set_defaults(func=cmd_fit)
    lg = cs.add_parser("log", help="write a replay log from the synthetic world served by a model (demo stand-in for serving logs)")
    _served_world_flags(lg, requests_per_s=1.0)
    _flag(lg, "--out", "REPLAY_LOG", Path("var/calibration/replay-log.npz"), Path, "replay log to write (.npz)")
    _flag(lg, "--hours", "REPLAY_LOG_HOURS", 1.0, float, "hours of simulated traffic (of each episode)")
    _flag(lg, "--episodes", "REPLAY_LOG_EPISODES", 1, int,
          "episodes, each from empty tables, their starts spread over a day; more than 1 needs --calibrators")
    _flag(lg, "--explore-frac", "REPLAY_LOG_EXPLORE_FRAC", 0.1, float,
          "share of requests shown a random candidate subset instead of the policy's pick")
    _flag(lg, "--refit-every-s", "REPLAY_LOG_REFIT_S", 300.0, float,
          "without --calibrators: explore this long, then serve with calibrators refit on the log so far, every as long")
    lg.set_defaults(func=cmd_log)
    tw = cs.add_parser("twin", help="the offline twin of a live loop's first minutes: cold starts served by calibrators, "
                                    "predicted / observed per task (what `bench calibration` reads at 3 minutes)")
    _served_world_flags(tw, requests_per_s=10.0)
    _flag(tw, "--episodes", "TWIN_EPISODES", 4, int, "cold starts, spread over a day")
    _flag(tw, "--start-hours", "TWIN_START_HOURS", 74.0, float,
          "first start, hours after the world's epoch (the set-up's episodes start at 0, 6, 12, 18 h)")
    _flag(tw, "--minutes", "TWIN_MINUTES", 4.0, float, "simulated minutes of each cold start")
    _flag(tw, "--window-s", "TWIN_WINDOW_S", 200.0, float,
          "judge the requests served this long after each start (the 3-minute reading's labels are of the first ~200 s)")
    tw.set_defaults(func=cmd_twin)
    p = cs.add_parser("report", help="reliability diagrams per task to .png, .svg or .html (inline SVG); needs feedrank[plots]")
    _flag(p, "--input", "CALIBRATION_INPUT", Path("var/calibration/labeled.jsonl"), Path,
          "drift record(s) (.json / .jsonl of calibration-drift records) or labeled examples (.npz / .jsonl)")
    _flag(p, "--out", "CALIBRATION_REPORT", Path("var/calibration/report.html"), Path, "output .png, .svg or .html")
    _flag(p, "--window", "CALIBRATION_REPORT_WINDOW", "", str, "drift record window to draw (default: all its windows, side by side)")
    _flag(p, "--calibrators", "CALIBRATORS_FILE", "", str, "calibrators.json to score labeled examples with (default: served probabilities)")
    _flag(p, "--consistency", "CONSISTENCY_REPORT", "", str, "an online/offline consistency report (`feedrank consistency "
          "--out`, or `/calibration`'s JSON) to print and add to an .html report")
    p.set_defaults(func=cmd_report)
    bn = cs.add_parser("bench", help="live calibration benchmark on synthetic traffic: online calibrators and the drift "
                                     "alert through a shift; results.json and calibration.svg/.png (error by minute)")
    _flag(bn, "--out", "CALIBRATION_BENCH_OUT", Path("var/calibration/bench"), Path, "directory for results.json and the plot")
    _flag(bn, "--minutes", "CALIBRATION_BENCH_MINUTES", 100, int, "minutes of event time served online")
    _flag(bn, "--shift-minute", "CALIBRATION_BENCH_SHIFT_MINUTE", 20, int, "minute the country's click and repin rates double")
    _flag(bn, "--seed", "SEED", 7, int, "simulator seed")
    bn.set_defaults(func=cmd_bench)

    t = subparsers.add_parser("tune-blend", help="search blend weights on logged data: max repins+closeups s.t. a hide cap")
    _flag(t, "--input", "CALIBRATION_INPUT", Path("var/calibration/labeled.jsonl"), Path, "labeled examples (.npz / .jsonl)")
    _flag(t, "--blend-config", "BLEND_CONFIG", "", str, "starting weights (.json/.yaml; default: built-in)")
    _flag(t, "--calibrators", "CALIBRATORS_FILE", "", str, "calibrators.json to compute probabilities (default: served ones)")
    _flag(t, "--top-k", "TUNE_TOP_K", 10, int, "slots per request that count")
    _flag(t, "--hide-cap", "TUNE_HIDE_CAP", 0.03, float, "max expected hides per shown slot")
    _flag(t, "--samples", "TUNE_SAMPLES", 200, int, "weight sets to try")
    _flag(t, "--out", "TUNE_OUT", Path("var/calibration/tune-blend.json"), Path, "report (.json); the best weights go to <out>.weights.json")
    _flag(t, "--learn", "TUNE_LEARN", "", str, "also fit the learned blending model and write it to this .json")
    t.set_defaults(func=cmd_tune)


def _served_world_flags(p: argparse.ArgumentParser, requests_per_s: float) -> None:
    """The flags of a synthetic world served by a model (``calibration log``, ``calibration twin``)."""
    _flag(p, "--model", "MODEL_DIR", Path("var/models"), Path, "serving model artifact dir or root")
    _flag(p, "--calibrators", "CALIBRATORS_FILE", "", str,
          "calibrators.json of the serving model, or a calibrator directory holding the model's (default: identity)")
    _flag(p, "--requests-per-s", "REQUESTS_PER_S", requests_per_s, float, "simulated feed requests per event-time second")
    _flag(p, "--seed", "SEED", 0, int, "world seed")
    _flag(p, "--users", "WORLD_USERS", 1000, int, "users in the synthetic world")
    _flag(p, "--items", "WORLD_ITEMS", 2000, int, "items in the synthetic world")
    _flag(p, "--candidates", "CANDIDATES", 100, int, "candidates per request, ranked by the serving path (as `feedrank simulate`)")
    _flag(p, "--feed-size", "FEED_SIZE", 10, int, "items shown per request (the top_k of /score)")
    _flag(p, "--background-rate", "REPLAY_LOG_BACKGROUND_RATE", 0.0, float,
          "other users' events per second fed into the state twin, as `feedrank produce` sends them (0 = none)")
    _flag(p, "--background-users", "REPLAY_LOG_BACKGROUND_USERS", 20000, int, "users of the background traffic")
    _flag(p, "--background-seed", "REPLAY_LOG_BACKGROUND_SEED", 1, int, "world seed of the background traffic")
    _flag(p, "--blend-config", "BLEND_CONFIG", "", str, "serving utility weights (.json/.yaml; default: built-in)")
    _flag(p, "--threads", "THREADS", 1, int, "torch threads (one request at a time: 1 is fastest on a busy machine)")


def _served_world(args: argparse.Namespace) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(artifact, world, its serving calibrators or None, the ``world_replay_log`` knobs the flags set)."""
    from features.world import World

    from .artifact import load_artifact

    _threads(args.threads)
    artifact = load_artifact(args.model)
    world = World(seed=args.seed, n_users=args.users, n_items=args.items)
    background = None
    if args.background_rate > 0:
        # the very event stream `feedrank produce` (the demo's background traffic) sends to the live tables
        from features.synthetic import synthetic_events

        def background_from(start_ms: int) -> Any:
            return synthetic_events(args.background_users, args.background_seed, args.background_rate, start_ms)

        background = background_from
    blender = None
    if args.blend_config:
        from .blender import BlendConfigSource, Blender

        blender = Blender(BlendConfigSource(args.blend_config))
    knobs = dict(requests_per_s=args.requests_per_s, feed_size=args.feed_size, n_candidates=args.candidates,
                 blender=blender, seed=args.seed, progress=True, background=background)
    return artifact, world, _serving_set(args.calibrators, artifact.version), knobs


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _load_set(path: str) -> Any:
    from .calibration import CalibratorSet

    return CalibratorSet.from_bytes(Path(path).read_bytes()) if path else None


def _serving_set(path: str, model_version: str) -> Any:
    """The calibrators of ``path``: a calibrators.json, or a calibrator directory (``CalibratorStore``) holding
    ``model_version``'s; None (identity) when ``path`` is empty."""
    from .calibration import CalibratorStore
    from .calibration.errors import CalibratorStateError

    if path and Path(path).is_dir():
        cs = CalibratorStore(path).load(model_version)
        if cs is None:
            raise CalibratorStateError(f"{path} holds no calibrators of model {model_version}; "
                                       f"fit them first (`feedrank replay --model ... --out {path}`)")
        return cs
    return _load_set(path)


def cmd_replay(args: argparse.Namespace) -> int:
    from .artifact import load_artifact
    from .calibration import CalibratorStore
    from .replay import ReplayLog, artifact_score_fn, format_replay_report, replay

    _threads(args.threads)
    artifact = load_artifact(args.model)
    rlog = ReplayLog.load(args.log)
    cs = replay(artifact_score_fn(artifact, rlog, progress=True), rlog.batch, model_version=artifact.version,
                holdout_frac=args.holdout_frac, l2=args.l2)
    path = CalibratorStore(args.out).save(cs)
    print(format_replay_report(cs))
    print(f"calibrators for model {cs.model_version} v{cs.version} written to {path}")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    from features.world import DEFAULT_START_MS

    from .replay_world import world_replay_episodes

    artifact, world, calibrators, knobs = _served_world(args)
    knobs.update(hours=args.hours, explore_frac=args.explore_frac, refit_every_s=args.refit_every_s,
                 start_ms=DEFAULT_START_MS)
    if args.episodes < 1:
        print(f"calibration log: --episodes must be at least 1, not {args.episodes}", file=sys.stderr)
        return 2
    if args.episodes > 1 and calibrators is None:
        print("calibration log: --episodes needs --calibrators (each episode is served by them; a model that "
              "never served bootstraps its calibrators in a one-episode log first)", file=sys.stderr)
        return 2
    rlog = world_replay_episodes(world, artifact, calibrators, args.episodes, **knobs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rlog.save(args.out)
    print(f"replay log of model {artifact.version}: {len(rlog.batch)} shown items written to {args.out}")
    return 0


def cmd_twin(args: argparse.Namespace) -> int:
    from features.world import DEFAULT_START_MS, HOUR_MS

    from .replay_world import episode_starts, first_window_calibration, format_first_window, world_replay_episodes

    artifact, world, calibrators, knobs = _served_world(args)
    if args.episodes < 1:
        print(f"calibration twin: --episodes must be at least 1, not {args.episodes}", file=sys.stderr)
        return 2
    if calibrators is None:
        print("calibration twin: --calibrators is required (the calibrators a live loop would start with)",
              file=sys.stderr)
        return 2
    start_ms = DEFAULT_START_MS + int(args.start_hours * HOUR_MS)
    rlog = world_replay_episodes(world, artifact, calibrators, args.episodes, start_ms=start_ms,
                                 hours=args.minutes / 60, explore_frac=0.0, **knobs)
    starts = episode_starts(start_ms, args.episodes)
    predicted, observed = first_window_calibration(rlog.batch, starts, args.window_s)
    print(f"calibrators v{calibrators.version} ({calibrators.source}) of model {artifact.version}: {args.episodes} cold "
          f"starts at {args.requests_per_s:g} requests/s, predicted / observed over each one's first {args.window_s:g} s")
    print(format_first_window(predicted, observed, starts))
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from .calibration import CalibratorStore, fit_calibrator_set
    from .calibration.records import load_labeled
    from .replay import evaluate_set

    if not args.model_version:
        print("calibration fit: --model-version (or FEEDRANK_MODEL_VERSION) is required: "
              "calibrators belong to the model that produced the raw logits", file=sys.stderr)
        return 2
    batch = load_labeled(args.input, args.model_version if str(args.input).endswith(".jsonl") else None)
    cs = fit_calibrator_set(batch, args.model_version, l2=args.l2, min_positives=args.min_positives)
    path = CalibratorStore(args.out).save(cs)
    print(json.dumps({"rows": len(batch), "in_sample": evaluate_set(cs, batch), "path": str(path),
                      "fallback_tasks": cs.meta.get("fallback_tasks", [])}, indent=2))
    return 0


def _read_drift(path: Path) -> dict[str, Any] | None:
    text = path.read_text(encoding="utf-8").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    try:
        rec = json.loads(lines[-1]) if path.suffix == ".jsonl" else json.loads(text)
    except (json.JSONDecodeError, IndexError):
        return None
    return rec if isinstance(rec, dict) and str(rec.get("schema", "")).startswith("feedrank.calibration-drift") else None


def cmd_report(args: argparse.Namespace) -> int:
    from .calibration.records import load_labeled
    from .plots import PlotsUnavailable
    from .report import report_for_batch, report_for_record

    src: Path = args.input
    rec = _read_drift(src) if src.suffix in (".json", ".jsonl") else None
    try:
        if rec is not None:
            out = report_for_record(args.out, rec, args.window or None)
        else:
            out = report_for_batch(args.out, load_labeled(src), _load_set(args.calibrators))
    except PlotsUnavailable as exc:
        print(f"calibration report: {exc}", file=sys.stderr)
        return 2
    if args.consistency:
        from html import escape

        from .consistency import format_report

        data = json.loads(Path(args.consistency).read_text(encoding="utf-8"))
        data = data.get("consistency") or data  # `/calibration`'s JSON carries it under "consistency"
        text = format_report(data)
        print(text)
        if Path(out).suffix == ".html":
            page = Path(out).read_text(encoding="utf-8")
            Path(out).write_text(page.replace("</body>", f"<h2>Online/offline consistency</h2><pre>{escape(text)}"
                                              "</pre></body>"), encoding="utf-8")
    print(f"wrote {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .calibration_bench import LiveCalibrationConfig, format_result, run_and_write

    cfg = LiveCalibrationConfig(seed=args.seed, minutes=args.minutes, shift_minute=args.shift_minute)
    result, paths = run_and_write(cfg, args.out)
    print(format_result(result))
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .blend_model import fit_blending_model
    from .blend_tune import TuneObjective, tune
    from .blender import DEFAULT_BLEND, load_blend_file
    from .calibration.records import load_labeled

    batch = load_labeled(args.input)
    cs = _load_set(args.calibrators)
    if cs is not None:
        probs = cs.calibrate(batch.X)
    elif "served" in batch.extras:
        probs = np.nan_to_num(batch.extras["served"])
    else:
        print("tune-blend: the examples carry no served probabilities; pass --calibrators", file=sys.stderr)
        return 2
    probs = probs * batch.mask
    video_task = len(batch.mask[0]) - 1  # video_view_10s applies to video items only
    is_video = batch.extras["is_video"].astype(bool) if "is_video" in batch.extras else batch.mask[:, video_task]
    requests = batch.extras.get("request", batch.ts)
    base = load_blend_file(args.blend_config) if args.blend_config else DEFAULT_BLEND
    rep = tune(probs, is_video, requests, base, TuneObjective(top_k=args.top_k, cap_per_slot=args.hide_cap),
               n_samples=args.samples)
    print(rep.table())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rep.to_dict(), indent=2))
    if rep.best is not None:
        Path(f"{args.out}.weights.json").write_text(json.dumps(rep.best.weights, indent=2))
    if args.learn:
        model = fit_blending_model(batch.X, probs, batch.y, batch.mask, is_video, base)
        Path(args.learn).write_text(json.dumps(model.to_dict()))
        print(f"learned blending model written to {args.learn}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="feedrank")
    register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("FEEDRANK_LOG_LEVEL", "INFO"))
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
