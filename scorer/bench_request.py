"""``feedrank bench score --request``: what the score process spends on one ``/score``, and where.

Times the score process's whole work for one request body (parse into columns,
decode the user's sequence, assemble, model, calibration features, calibrators,
blend, top k, encode the response and the prediction log) against the model
alone on the same inputs, for top 25 and for every candidate returned, and a
cProfile breakdown by stage. ``--busy-core`` runs everything again beside a
process that spins one core (``spin_one_core``).
"""

from __future__ import annotations

import cProfile
import json
import logging
import multiprocessing
import pstats
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.events import ACTIONS
from features.seqcodec import ActionSequence, EncodedUserState
from features.state import Counts, FeedbackSnapshot
from features.world import DEFAULT_START_MS, World

log = logging.getLogger(__name__)

#: cProfile functions reported as stages (name in the table -> (file suffix, function))
STAGES: dict[str, tuple[str, str]] = {
    "parse (columns)": ("features/rpc.py", "parse_score_columns"),
    "user decode": ("features/seqcodec.py", "decode"),
    "assembly": ("features/assembly.py", "assemble"),
    "model": ("scorer/artifact.py", "score"),
    "calibration features": ("features/calibration_features.py", "calibration_feature_matrix"),
    "calibrators": ("scorer/calibration/calset.py", "calibrate"),
    "blending": ("scorer/blender.py", "utility"),
    "top k": ("scorer/service.py", "top_k_order"),
    "response encoding": ("features/rpc.py", "encode_items"),
    "log features": ("scorer/service.py", "_named_rows"),
}


def request_inputs(n: int, top_k: int | None, seed: int = 0) -> tuple[bytes, EncodedUserState, FeedbackSnapshot]:
    """A ``bench rpc``-like body of ``n`` candidates, a user with a full 256-action history, and feedback counts."""
    world = World(seed, n_users=100, n_items=max(4000, 2 * n))
    ts = DEFAULT_START_MS + 3_600_000
    req = world.new_request(user=1, ts=ts, n_candidates=10)
    c = req.context
    rng = np.random.default_rng(seed)
    items = rng.choice(world.n_items, n, replace=False)  # exactly n (the world's own pick may return fewer)
    body: dict[str, Any] = {
        "user_id": req.user_id, "request_id": "bench-1",
        "context": {"surface": c.surface, "country": c.country, "gender": c.gender, "app_type": c.app_type,
                    "device_type": c.device_type, "ts": ts},
        "candidates": [{"item_id": f"i{i}", "item_type": "video" if world.item_video[i] else "organic",
                        "features": {"item_ctr_prior": float(world.item_ctr_prior[i])}} for i in items.tolist()]}
    if top_k:
        body["top_k"] = top_k
    seq = ActionSequence()
    for j, i in enumerate(rng.choice(world.n_items, 256)):
        seq.add(event_id=f"e{j}", item_id=f"i{int(i)}", action=ACTIONS[j % len(ACTIONS)], ts=ts - 5_000 * (300 - j),
                surface="home", item_type="organic")
    user = EncodedUserState(req.user_id, seq.encode(), Counts(40, {"click": 3}), Counts(300, {"click": 12, "hide": 1}))
    fb = FeedbackSnapshot({"all": Counts(10_000, {a: 200 for a in ACTIONS}), f"c:{c.country}": Counts(2_000, {"click": 90}),
                           f"gc:{c.gender}:{c.country}": Counts(700, {"click": 30})})
    return json.dumps(body).encode(), user, fb


def score_once(scorer, body: bytes, user: EncodedUserState, fb: FeedbackSnapshot) -> bytes:
    """What the score process does for one call (``score_process._child``'s ``score``), but the pickling."""
    from features.rpc import parse_score_columns

    scored = scorer.score(parse_score_columns(body), user.decode(scorer.model.spec.seq_len), fb)
    return scored.body.to_json("bench", 0.0) + scored.log_json


@dataclass(frozen=True)
class RequestTiming:
    n: int
    top_k: int | None
    p50_ms: float
    p99_ms: float
    model_p50_ms: float
    model_p99_ms: float


def _percentiles(lat: list[float]) -> tuple[float, float]:
    a = np.asarray(lat) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def time_request(scorer, n: int, top_k: int | None, seconds: float = 2.0) -> RequestTiming:
    """p50/p99 of the score process's work for one request, and of the model alone on its inputs."""
    from features.assembly import assemble
    from features.rpc import parse_score_columns

    body, user, fb = request_inputs(n, top_k)
    req = parse_score_columns(body)
    inputs = assemble(user.decode(), fb, req.to_context(0), req.columns(), scorer.model.spec)
    runs: dict[str, list[float]] = {"request": [], "model": []}
    jobs = {"request": lambda: score_once(scorer, body, user, fb), "model": lambda: scorer.model.score(inputs)}
    for f in jobs.values():
        for _ in range(10):
            f()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(runs["model"]) < 50:
        for name, f in jobs.items():  # interleaved, so both see the same moments of the box
            t = time.perf_counter()
            f()
            runs[name].append(time.perf_counter() - t)
    return RequestTiming(n, top_k, *_percentiles(runs["request"]), *_percentiles(runs["model"]))


def profile_request(scorer, n: int, top_k: int | None, calls: int = 100) -> tuple[float, dict[str, float]]:
    """(ms per request under cProfile, ms per request of each stage in ``STAGES``)."""
    body, user, fb = request_inputs(n, top_k)
    for _ in range(10):
        score_once(scorer, body, user, fb)
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    for _ in range(calls):
        score_once(scorer, body, user, fb)
    prof.disable()
    total = (time.perf_counter() - t) / calls * 1e3
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    for stage, (path, func) in STAGES.items():
        out[stage] = sum(v[3] for (file, _, name), v in stats.items()
                         if name == func and file.endswith(path)) / calls * 1e3
    return total, out


def format_profile(total: float, stages: dict[str, float], n: int, top_k: int | None) -> str:
    lines = [f"profile, {n} candidates, {'top ' + str(top_k) if top_k else 'all returned'} "
             f"(cProfile inflates Python calls; shares are what to read): {total:.2f} ms a request",
             "| stage | ms | share |", "|---|---|---|"]
    for stage, ms in stages.items():
        lines.append(f"| {stage} | {ms:.2f} | {100 * ms / total:.0f}% |")
    rest = total - sum(stages.values())
    lines.append(f"| rest (scorer glue, log and response JSON) | {rest:.2f} | {100 * rest / total:.0f}% |")
    return "\n".join(lines)


def format_timings(rows: list[tuple[str, RequestTiming]]) -> str:
    lines = ["| box | N | returned | score process p50 ms | p99 ms | model p50 ms | p99 ms | Python p50 ms "
             "(request - model) |", "|---|---|---|---|---|---|---|---|"]
    for label, r in rows:
        lines.append(f"| {label} | {r.n} | {r.top_k or 'all'} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                     f"{r.model_p50_ms:.2f} | {r.model_p99_ms:.2f} | {r.p50_ms - r.model_p50_ms:.2f} |")
    return "\n".join(lines)


def _spin() -> None:  # pragma: no cover - the busy process
    while True:
        pass


def spin_one_core() -> multiprocessing.process.BaseProcess:
    """Start a process that keeps one core busy (terminate it when done)."""
    p = multiprocessing.get_context("spawn").Process(target=_spin, name="feedrank-bench-spin", daemon=True)
    p.start()
    time.sleep(0.5)  # started and spinning
    return p


def load_scorer(model_dir) -> Any:
    """A ``Scorer`` over the artifact at ``model_dir`` with identity calibrators and the default blender
    (calibrator weights do not change the work)."""
    from scorer.artifact import load_artifact
    from scorer.blender import Blender
    from scorer.calibration.calset import CalibratorHolder, CalibratorSet
    from scorer.service import Scorer

    art = load_artifact(model_dir)
    return Scorer(art, CalibratorHolder(CalibratorSet.identity(art.version)), Blender())


__all__ = ["RequestTiming", "format_profile", "format_timings", "load_scorer", "profile_request", "request_inputs",
           "score_once", "spin_one_core", "time_request"]
