"""``feedrank bench rpc``: /score latency and throughput for N candidates while events stream in.

Starts a broker per ``--brokers`` entry (a local Apache Kafka, the embedded one;
KAFKA_BOOTSTRAP_SERVERS when set), one worker
with the model under ``FEEDRANK_MODEL_DIR`` and the shared load generator
(``streams.tools.loadgen``: synthetic events at ``--event-rate``, a process of its
own), then measures ``POST /score`` from client threads: a paced run at a
fixed request rate (the goal: p99 under 25 ms at 50 requests/s with 5,000
events/s streaming in) and closed-loop runs at a few concurrency levels. After each run it
prints the events acknowledged per second and each process's CPU. ``--out DIR``
writes ``results.json`` (every run's figures) and ``latency.svg``/``.png``: the
client-side ``/score`` latency distribution of each run, p50 and p99 marked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from streams.kafka.broker import resolve_broker

from streams.kafka.embedded import embedded_broker_pid

from streams.kafka.procutil import free_port, pdeathsig
from streams.tools.loadgen import LOAD_LINGER_MS, LoadProducer, child_pids, cpu_seconds
from streams.metrics import Scrape, scrape
from streams.settings import Settings
from streams.kafka.topics import ensure_topics, topic_specs


def _request(world, rng_user: int, ts: int, n: int, top_k: int = 25) -> dict:
    """A request of exactly ``n`` candidates (the world's retrieval drops repeats; other items fill in),
    ``top_k`` returned (0: all)."""
    req = world.new_request(user=rng_user, ts=ts, n_candidates=n)
    c = req.context
    chosen = list(req.candidates)
    have = {x.item_id for x in chosen}
    for i in range(world.n_items):
        if len(chosen) >= n:
            break
        if f"i{i}" not in have:
            chosen.append(world.candidate(i))
    cands = [{"item_id": x.item_id, "item_type": x.item_type, "features": dict(x.features)} for x in chosen]
    body = {"user_id": req.user_id,
            "context": {"surface": c.surface, "country": c.country, "gender": c.gender, "app_type": c.app_type,
                        "device_type": c.device_type},
            "candidates": cands}
    if top_k:
        body["top_k"] = top_k
    return body


def _run(url: str, bodies: list[dict], threads: int, seconds: float, rate: float | None) -> dict[str, float]:
    from streams.serving.client import ScorerClient, ScorerError

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    interval = threads / rate if rate else 0.0

    def worker(k: int) -> None:
        client = ScorerClient(url, timeout_s=5.0, retries=0)
        i = k
        next_t = time.perf_counter() + (k * interval / threads if rate else 0.0)
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                break
            if rate:
                if next_t > now:
                    time.sleep(next_t - now)
                next_t += interval
            t0 = time.perf_counter()
            try:
                client.score(bodies[i % len(bodies)])
                with lock:
                    lat.append((time.perf_counter() - t0) * 1000)
            except ScorerError:
                with lock:
                    errors[0] += 1
            i += threads
        client.close()

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    a = np.array(lat) if lat else np.array([np.nan])
    return {"requests": len(lat), "errors": errors[0], "rps": len(lat) / wall,
            "p50": float(np.nanpercentile(a, 50)), "p99": float(np.nanpercentile(a, 99)), "_latency_ms": lat}


def _clients(spec: object) -> list[int]:
    """``--clients``: comma-separated closed-loop client counts; empty = the paced run only."""
    try:
        counts = [int(x) for x in str(spec).split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--clients {spec!r}: expected comma-separated client counts, e.g. 1,2,4") from None
    if any(c < 1 for c in counts):
        raise SystemExit(f"--clients {spec!r}: client counts must be at least 1")
    return counts


def _worker_side(before: Scrape, after: Scrape) -> dict[str, str]:
    """What the worker's own histograms say about one run (bucket upper bounds, ms)."""
    def q(name: str) -> str:
        v = after.quantile(name, 0.99, since=before)
        return "-" if v is None else f"<={v * 1000:g}"

    def delta(histogram: str, **labels: str) -> tuple[float, float]:
        """(count, sum) of one labeled histogram over the run."""
        return (after.delta(before, f"{histogram}_count", **labels), after.delta(before, f"{histogram}_sum", **labels))

    n, total = delta("feedrank_gc_pause_seconds", generation="2")

    def stages(quantile: float) -> str:
        out = []
        for stage in ("parse", "state", "wait", "score", "log"):
            v = after.quantile("feedrank_score_stage_seconds", quantile, since=before, stage=stage)
            out.append("-" if v is None else f"{v * 1000:g}")
        return "/".join(out)

    def thread_split() -> str:
        out = []
        for part in ("cpu", "runnable", "blocked"):
            count, total_s = delta("feedrank_score_thread_seconds", part=part)
            out.append("-" if count <= 0 else f"{total_s / count * 1000:.1f}")
        p99 = (after.quantile("feedrank_score_thread_seconds", 0.99, since=before, part=part)
               for part in ("cpu", "runnable", "blocked"))
        return "/".join(out) + "  " + "/".join("-" if v is None else f"{v * 1000:g}" for v in p99)

    return {"score_p99": q("feedrank_score_latency_seconds"), "loop_p99": q("feedrank_event_loop_lag_seconds"),
            "full_gc": f"{n:.0f}/{total * 1000:.0f}ms", "stages": f"{stages(0.5)}  {stages(0.99)}",
            "thread": thread_split()}


def main(args: argparse.Namespace) -> int:
    """The bench on each broker of ``--brokers``, one after the other (rows labelled by broker)."""
    settings = Settings()
    if not (Path(settings.model_dir) / "latest").exists():
        print(f"no model under {settings.model_dir}: run `feedrank train` (or `make demo` once) first")
        return 2
    rc = 0
    runs: list[dict] = []
    for kind in [k.strip() for k in str(args.brokers).split(",") if k.strip()]:
        rc = max(rc, _bench(args, settings, None if kind == "auto" else kind, runs))
    if getattr(args, "out", None):
        for path in write_out(runs, Path(args.out)):
            print(f"wrote {path}")
    return rc


def write_out(runs: list[dict], out: Path) -> list[Path]:
    """``out/results.json`` (each run's figures, without raw latencies) and the latency distribution plot."""
    from scorer.plots import PlotsUnavailable, histogram_figure, save_all

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        fig = histogram_figure({r["label"]: r.get("_latency_ms", []) for r in runs},
                               "feedrank bench rpc: POST /score latency per run (client side)",
                               "/score latency (ms, log scale)", log_x=True)
        written = save_all(fig, out / "latency", (".svg", ".png"))
    except PlotsUnavailable as exc:
        print(f"latency plot skipped: {exc}", file=sys.stderr)
    path = out / "results.json"
    path.write_text(json.dumps({"runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
                                "plots": [str(p) for p in written]}, indent=1))
    return [path, *written]


def _bench(args: argparse.Namespace, settings: Settings, kind: str | None, runs: list[dict] | None = None) -> int:
    from features.world import World

    broker = resolve_broker(log_dir=settings.log_dir, kind=kind)
    procs: list[subprocess.Popen[bytes]] = []
    load: LoadProducer | None = None
    run_dir = Path("var/bench-rpc")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        port = free_port()
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "FEEDRANK_WEB_PORT": str(port),
               "FEEDRANK_DATA_DIR": str(run_dir / f"data-{port}"), "FEEDRANK_APP_ID": f"bench{port}"}
        bench_settings = Settings(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, app_id=f"bench{port}")
        ensure_topics(broker.bootstrap, topic_specs(bench_settings))
        url = f"http://127.0.0.1:{port}"
        infra_nice = int(args.infra_nice)
        broker_pid = broker.pid or embedded_broker_pid(broker.bootstrap)
        if infra_nice and broker_pid is not None:  # the broker stands in for machines of its own
            os.setpriority(os.PRIO_PROCESS, broker_pid, infra_nice)

        batching = str(args.producer_batches)
        if batching == "auto":  # batch as feed servers do against real Kafka; one record per batch on tansu
            batching = "off" if broker.kind == "embedded" else "on"
        logf = open(run_dir / "worker.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=logf,
                                      stderr=subprocess.STDOUT, preexec_fn=pdeathsig))
        # the shared load generator (librdkafka, a process of its own): events paced at --event-rate
        rate = float(args.event_rate)
        load = LoadProducer(broker.bootstrap, bench_settings, users=20_000, seed=0, world_rate=rate, rate=rate,
                            batches=batching == "on", linger_ms=int(args.linger_ms)).start()
        if infra_nice:
            os.setpriority(os.PRIO_PROCESS, load.proc.pid, infra_nice)
        load.go()
        from streams.serving.client import ScorerClient

        deadline = time.monotonic() + 120
        while True:
            try:
                with ScorerClient(url, timeout_s=1.0, retries=0) as c:
                    c.request("GET", "/ready")
                    if c.request("GET", "/ready")[0] == 200:
                        break
            except Exception:
                pass
            if time.monotonic() > deadline:
                print("worker never became ready; see var/bench-rpc/worker.log")
                return 1
            time.sleep(0.5)
        world = World(seed=0, n_users=1000, n_items=1000)
        now = int(time.time() * 1000)
        n = int(args.candidates)
        top_k = int(args.top_k)
        bodies = [_request(world, u, now, n, top_k) for u in range(200)]
        _run(url, bodies, 1, 3.0, None)  # warm-up
        served = next((",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                       for s in scrape(url).select("feedrank_model_info") if s.value == 1), "unknown")
        print(f"/score bench: {n} candidates per request, {f'top {top_k}' if top_k else 'all'} returned, events streaming at "
              f"{args.event_rate}/s into the same worker; machine: {os.cpu_count()} cores, load "
              f"{os.getloadavg()[0]:.2f}; event producer and broker ({broker.kind}) at nice {infra_nice} "
              f"({'standing in for machines of their own' if infra_nice else 'competing with the worker as equals'}); "
              f"producer batches: {f'on, linger {args.linger_ms} ms (as against real Kafka)' if batching == 'on' else 'off (one record per batch)'}; "
              f"model: {served}")
        print("worker side (upper bucket bounds, ms): in-worker /score p99, event-loop lag p99 (10 ms ticks), full "
              "GC pauses (count/total), p50 and p99 per stage parse/state/wait/score/log, and the score stage's "
              "mean and p99 on the score thread: running / runnable but waiting for a core / blocked (mostly the GIL)")
        print(f"{'broker: mode':<24} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
              f"{'in-wkr p99':>10} {'loop p99':>9} {'full GCs':>9}  stages p50  p99  score thread cpu/runnable/blocked mean  p99")
        plan = [(f"{broker.kind}: paced {float(args.rate):g} req/s", 2, float(args.rate))] + [
            (f"{broker.kind}: closed loop, {c} client(s)", c, None) for c in _clients(args.clients)]
        scorer = next(iter(child_pids(procs[0].pid, b"spawn_main")), None)  # the worker's score process
        pids = {"worker": procs[0].pid, "scorer": scorer, "producer": load.proc.pid, "broker": broker_pid,
                "client": os.getpid()}
        for label, threads, rate in plan:
            before = scrape(url)
            cpu0, acked0, t0 = {k: cpu_seconds(v) for k, v in pids.items()}, load.acked(), time.monotonic()
            r = _run(url, bodies, threads, float(args.seconds), rate)
            w = _worker_side(before, scrape(url))
            span = time.monotonic() - t0
            if runs is not None:
                runs.append({"label": label, "clients": threads, "paced_rps": rate, **r, "worker": w,
                             "events_acked_per_s": round((load.acked() - acked0) / span)})
            cpu = ", ".join(f"{k} {(cpu_seconds(v) - cpu0[k]) / span:.2f}" for k, v in pids.items() if v)
            print(f"{label:<24} {r['requests']:>9} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
                  f"{r['errors']:>7} {w['score_p99']:>10} {w['loop_p99']:>9} {w['full_gc']:>9}  {w['stages']}  {w['thread']}",
                  flush=True)
            print(f"{'':<24} events acked {(load.acked() - acked0) / span:,.0f}/s; CPU (cores of {os.cpu_count()}): "
                  f"{cpu}; load {os.getloadavg()[0]:.2f}", flush=True)
        return 0
    finally:
        if load is not None:
            load.stop(timeout_s=30)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()


def register_bench(bench) -> None:
    from streams.cli import env_flag

    p = bench.add_parser("rpc", help="/score p50/p99 and requests/s while events stream in")
    env_flag(p, "--brokers", envvar="FEEDRANK_BENCH_BROKERS", default="kafka,embedded",
             help="brokers to run on, one after the other: kafka (a local Apache Kafka), embedded, auto")
    env_flag(p, "--candidates", envvar="FEEDRANK_BENCH_CANDIDATES", default=500, help="candidates per request")
    env_flag(p, "--top-k", envvar="FEEDRANK_BENCH_TOP_K", default=25, help="items returned per request (0: all)")
    env_flag(p, "--rate", envvar="FEEDRANK_BENCH_RPS", default=50, help="paced request rate (the goal: p99 < 25 ms at 50)")
    env_flag(p, "--seconds", envvar="FEEDRANK_BENCH_SECONDS", default=20, help="seconds per run")
    env_flag(p, "--clients", envvar="FEEDRANK_BENCH_CLIENTS", default="1,2,4",
             help="closed-loop client counts run after the paced run (comma-separated; empty = paced only)")
    env_flag(p, "--event-rate", envvar="FEEDRANK_BENCH_EVENT_RATE", default=5000, help="background events/s")
    env_flag(p, "--infra-nice", envvar="FEEDRANK_BENCH_INFRA_NICE", default=0,
             help="nice value of the event producer and the embedded broker (e.g. 10: they stand in for machines "
                  "of their own and yield the cores to the worker; 0: they compete with it as equals)")
    env_flag(p, "--producer-batches", envvar="FEEDRANK_BENCH_PRODUCER_BATCHES", default="auto",
             choices=["auto", "on", "off"],
             help="auto: on for real Kafka, off for the embedded broker. on: the event producer batches its records as it would against real Kafka (the worker still "
                  "ingests every event; the embedded broker's end offsets, which nothing here reads, become "
                  "approximate); off: one record per batch, the embedded broker's safe mode, which costs that "
                  "broker ~150 us of CPU per record")
    env_flag(p, "--linger-ms", envvar="FEEDRANK_BENCH_LINGER_MS", default=LOAD_LINGER_MS,
             help="the event producer's linger with --producer-batches on (the embedded broker lists every batch "
                  "a partition holds on each fetch of it: fewer, larger batches keep its fetches cheap)")
    env_flag(p, "--out", envvar="FEEDRANK_BENCH_OUT", default="",
             help="directory for results.json and latency.svg/.png (the /score latency distribution per run); "
                  "empty: print only")
    p.set_defaults(func=main)
