"""Scoring benchmark: candidates/s and p50/p99 latency of the serving module, against the hardware.

For N candidates per request it times the frozen TorchScript module (the user and
sequence part once, N candidates) with a fixed thread count, measures the same
machine's dense float32 matmul GFLOP/s in the same run, and reports the model's
achieved GFLOP/s as a fraction of it. Feature assembly is timed separately.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from features.assembly import FeatureSpec, assemble
from features.state import Candidate, FeedbackSnapshot, SeqAction, UserState
from features.world import DEFAULT_START_MS, World

from .model import TASKS, ModelConfig

log = logging.getLogger(__name__)


def matmul_gflops(threads: int, n: int = 1024, seconds: float = 1.0) -> float:
    """Dense float32 ``n x n`` matmul throughput in GFLOP/s (best of several timed runs)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def model_flops(spec: FeatureSpec, cfg: ModelConfig, n: int) -> tuple[float, float]:
    """(user-side FLOPs once per request, FLOPs per candidate) of the serving forward (2 x MACs)."""
    t, k, d = len(TASKS), cfg.n_experts, cfg.item_dim
    user_in = 16 + spec.n_ctx * 8 + spec.n_user_dense
    s = spec.seq_len + 1
    seq = s * d * 3 * d + 2 * s * s * d + s * d * d + 2 * s * d * cfg.seq_ffn + user_in * d if cfg.use_sequence else 0
    user = seq + (user_in + (2 * d if cfg.use_sequence else 0)) * cfg.summary_dim
    cand_in = d + 8 + spec.n_cand_dense + cfg.n_interactions
    dims = list(cfg.expert_dims)
    width = k if cfg.arch == "mmoe" else 1
    per = cfg.n_interactions * d + cand_in * width * dims[0]
    per += sum(width * a * b for a, b in zip(dims[:-1], dims[1:]))
    if cfg.arch == "mmoe":
        per += cand_in * t * k + t * k * dims[-1]
    per += t * (dims[-1] * cfg.tower_hidden + cfg.tower_hidden)
    return 2.0 * user, 2.0 * per


def _request(spec: FeatureSpec, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    world = World(seed, n_users=100, n_items=max(2000, 2 * n))
    req = world.new_request(user=1, ts=DEFAULT_START_MS + 3_600_000, n_candidates=10)
    rng = np.random.default_rng(seed)
    items = rng.choice(world.n_items, n, replace=False)
    cands = [Candidate(f"i{i}", "video" if world.item_video[i] else "organic", 0,
                       {"item_ctr_prior": float(world.item_ctr_prior[i])}) for i in items]
    acts = tuple(SeqAction(f"i{int(i)}", "click", req.ts - 5_000 * j, "home", "organic")
                 for j, i in enumerate(rng.choice(world.n_items, spec.seq_len * 2)))
    user = UserState(req.user_id, acts)
    t = time.perf_counter()
    inputs = assemble(user, FeedbackSnapshot(), req.context, cands, spec)
    assemble_ms = (time.perf_counter() - t) * 1e3
    out = {k: torch.from_numpy(v) for k, v in inputs.arrays().items()}
    out["_assemble_ms"] = torch.tensor(assemble_ms)
    return out


@dataclass(frozen=True)
class BenchResult:
    n: int
    p50_ms: float
    p99_ms: float
    candidates_per_s: float  # N / mean latency
    gflops: float  # model FLOPs / p50 latency
    assemble_ms: float
    mflop_per_candidate: float


def bench_module(module: torch.jit.ScriptModule, spec: FeatureSpec, cfg: ModelConfig, ns: Sequence[int],
                 threads: int = 2, seconds: float = 2.0) -> tuple[list[BenchResult], float]:
    """Time ``module`` for each N; returns results and the matmul GFLOP/s measured in the same run
    (best of windows before and between the N runs, so a busy moment does not lower the peak)."""
    torch.set_num_threads(threads)
    peak = matmul_gflops(threads)
    results = []
    for n in ns:
        x = _request(spec, n)
        assemble_ms = float(x.pop("_assemble_ms"))
        lat: list[float] = []
        with torch.inference_mode():
            for _ in range(10):
                module(x)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end or len(lat) < 50:
                t = time.perf_counter()
                module(x)
                lat.append(time.perf_counter() - t)
        arr = np.asarray(lat) * 1e3
        user_f, per_f = model_flops(spec, cfg, n)
        peak = max(peak, matmul_gflops(threads))  # interleaved: the best window is the least disturbed
        p50 = float(np.percentile(arr, 50))
        results.append(BenchResult(n, p50, float(np.percentile(arr, 99)), n / (arr.mean() / 1e3),
                                   (user_f + n * per_f) / (p50 / 1e3) / 1e9, assemble_ms, per_f / 1e6))
    return results, peak


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def format_bench(results: list[BenchResult], peak: float, threads: int, source: str) -> str:
    m = machine()
    lines = [f"machine: {m['cpu']} ({m['logical_cpus']} logical CPUs), torch {m['torch']}, threads={threads}",
             f"model: {source}",
             f"dense matmul (1024^3 fp32): {peak:.1f} GFLOP/s",
             "| N | p50 ms | p99 ms | candidates/s (mean) | candidates/s (p50) | model GFLOP/s (p50) "
             "| % of matmul | MFLOP/candidate | assembly ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.n} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.candidates_per_s:,.0f} | "
                     f"{r.n / (r.p50_ms / 1e3):,.0f} | {r.gflops:.1f} | {100 * r.gflops / peak:.0f}% | "
                     f"{r.mflop_per_candidate:.2f} | {r.assemble_ms:.2f} |")
    return "\n".join(lines)


__all__ = ["BenchResult", "bench_module", "format_bench", "machine", "matmul_gflops", "model_flops"]
