"""``feedrank bench ingest``: table-engine throughput and freshness, beside raw aiokafka.

1. Pre-produce N events (impressions, engagements, prediction logs) to fresh
   topics, batched as feed servers send them (``--max-batches off``: one
   record per batch, the embedded broker's safe mode for end offsets, which
   this bench does not read: it counts records). The embedded broker lists
   every batch a partition holds on each fetch of it and reads each batch as
   an object of its own: one-record batches cost it ~0.5 of a core while the
   engine reads them, and the engine's rate falls with it (measured on
   2026-11-30 with 100,000 events: 25,640 events/s one record per batch
   against 33,719 to 39,837 batched).
2. Raw rate: a bare aiokafka consumer reads all N (no decoding): the ceiling.
3. Max rate: one table engine (every table on, checkpoints, changelog, outputs)
   consumes the same N from the beginning: events/s.
4. Freshness, twice: at half of the goal rate (``--goal-rate``, 20,000
   events/s: the goal is p99 under 100 ms at 10,000/s), then at ``--load``
   of the max rate just measured (default 0.5; its keys start with
   ``halfmax_``). Each run: fresh topics, a producer process paced at that
   rate for ``--seconds``; the engine consumes live. For a
   sample of engagements the producer passes (user, item, event time, wall
   time just before ``send``) to a probe task in the engine's process that
   polls ``streams.engine.views.get_user_state`` (the read-your-own-writes API the
   scorer uses) every 2 ms until the action is there: p50/p99 of that delay.
   The engine's own apply-time delay is printed beside it, and the delivery
   delay (produced -> returned by the engine's fetch): the producer's and the
   broker's share (the embedded broker holds a fetch for about its whole wait);
   of that, the producers' acknowledgement delay of the same sampled records
   (send -> acked: linger, the produce request and the broker's append).
5. Goals: ``goal_*`` lines say whether this run met them.

``--out DIR`` writes ``results.json`` (every figure, per broker) and
``freshness.svg``/``freshness.png``: the distribution of the probe's
produce -> visible delays of each freshness run, p50 and p99 marked.

Event time advances ``--event-ms-per-request`` per request (default 200 ms),
so attribution windows (600 s) close during the runs and the steady-state
work (closing windows, labeled examples to their topic, expiring logs) is
part of every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from streams.tools.loadgen import cpu_seconds, produce_waiting
from streams.tools.peers.local_jobs import consume_raw, run_engine

log = logging.getLogger(__name__)

#: the pre-produced events' start: a day ago, hour-aligned (within the event-time rule's bounds)
T0 = (int(time.time() * 1000) // 3_600_000 - 24) * 3_600_000
#: the worker's ``max_event_future_s`` here: a run's compressed event time (200 ms per request at up to
#: 20,000 events/s) gets days ahead of the producers' clock, which the default (120 s) dead-letters
BENCH_EVENT_FUTURE_S = 30 * 86_400.0

#: the bench producers' linger when they batch (``--linger-ms``)
LINGER_MS = 5


def _events(n: int, users: int, seed: int, start_ms: int, step_ms: int = 200,
            user_prefix: str = "u") -> list[tuple[str, bytes, bytes]]:
    """(kind, key, value) records: requests of 5 impressions, ~20% engaged, one prediction log each."""
    from features.events import Engagement, Impression, encode_event
    from features.predictions import ItemPrediction, PredictionLog, encode_prediction

    rng = random.Random(seed)
    out: list[tuple[str, bytes, bytes]] = []
    t = start_ms
    r = 0
    while len(out) < n:
        r += 1
        t += step_ms
        u = f"{user_prefix}{rng.randrange(users)}"
        req = f"r{seed}-{r}"
        items = [f"i{rng.randrange(100_000)}" for _ in range(5)]
        out.append(("prediction", u.encode(), encode_prediction(PredictionLog(
            request_id=req, user_id=u, ts=t, model_version="m", calibrator_version="c",
            items=[ItemPrediction(item_id=it, position=k, raw={"click": 0.1}) for k, it in enumerate(items)]))))
        for k, it in enumerate(items):
            out.append(("impression", u.encode(), encode_event(Impression(
                event_id=f"m{seed}-{r}-{k}", user_id=u, item_id=it, request_id=req, ts=t, surface="home",
                position=k, item_type="organic", country=rng.choice(["US", "DE", "BR", "IN"]),
                gender=rng.choice("fmu"), app_type="ios", device_type="phone"))))
            if rng.random() < 0.2:
                out.append(("engagement", u.encode(), encode_event(Engagement(
                    event_id=f"g{seed}-{r}-{k}", user_id=u, item_id=it, request_id=req, ts=t + 50,
                    action=rng.choice(["click", "repin", "long_click", "hide"])))))
    return out[:n]


def _topic_of(settings: Any, kind: str) -> str:
    return {"impression": settings.topic_impressions, "engagement": settings.topic_engagements,
            "prediction": settings.topic_predictions}[kind]


def _produce(bootstrap: str, settings: Any, records: list[tuple[str, bytes, bytes]], single: bool,
             rate: float | None = None, probe: Any = None, probe_every: int = 10,
             linger_ms: int = LINGER_MS) -> float:
    """Send ``records`` through librdkafka (as the load generator does: ~3 us of CPU per record, so the
    producer leaves the cores to the engine and the broker); seconds until all are acknowledged."""
    from confluent_kafka import Producer

    from streams.tools.loadgen import librdkafka_config

    conf = {**librdkafka_config(bootstrap, single, linger_ms=linger_ms, compression=settings.compression), "acks": 1}
    p = Producer(conf)
    p.list_topics(timeout=30)  # fail here, not at the flush, when the broker is unreachable
    acks: list[float] = []  # send -> acknowledged (ms) of the probed records: the producer's and broker's share
    failed: list[str] = []

    def on_ack(sent: float | None) -> Any:
        def done(err: Any, _msg: Any) -> None:
            if err is not None:
                failed.append(str(err))
            elif sent is not None:
                acks.append(time.time() * 1000.0 - sent)
        return done

    plain = on_ack(None)
    t0 = time.perf_counter()
    n_eng = 0
    for i, (kind, key, value) in enumerate(records):
        cb = plain
        if probe is not None and kind == "engagement":
            n_eng += 1
            if n_eng % probe_every == 0:
                ev = json.loads(value)
                sent = time.time() * 1000.0
                probe.put((ev["user_id"], ev["item_id"], ev["ts"], sent))
                cb = on_ack(sent)
        produce_waiting(p, _topic_of(settings, kind), value=value, key=key, on_delivery=cb)
        if i % 100 == 99:
            p.poll(0)
            if rate:
                ahead = (i + 1) / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    left = p.flush(120)
    if left or failed:
        raise RuntimeError(f"bench producer: {left} records unacknowledged, {len(failed)} failed "
                           f"({failed[:3]})")
    if probe is not None:
        probe.put(("acks", acks))
    return time.perf_counter() - t0


def _produce_proc(bootstrap: str, settings_json: str, n: int, users: int, rate: float, single: bool,
                  step_ms: int, probe: Any, k: int = 0, linger_ms: int = LINGER_MS) -> None:
    from streams.kafka.procutil import pdeathsig
    from streams.settings import Settings

    pdeathsig()  # ends with the bench, also when that is killed
    settings = Settings(**json.loads(settings_json))
    # each producer process owns its users (a user's events keep their order) and its share of the rate
    records = _events(n, users, seed=2 + k, start_ms=int(time.time() * 1000), step_ms=step_ms,
                      user_prefix=f"p{k}u")
    _produce(bootstrap, settings, records, single, rate, probe=probe, linger_ms=linger_ms)


def _engine_rate(settings: Any, bootstrap: str, n: int, broker_pid: int | None = None) -> tuple[float, dict[str, Any]]:
    """The engine's max rate on ``n`` pre-produced records (``run_engine``), with the broker's CPU over the span."""
    b0: list[float] = []
    out, stats = asyncio.run(run_engine(settings, bootstrap, n, lambda: b0.append(cpu_seconds(broker_pid))))
    dt = out["wall_s"]
    stats["broker_cpu_cores"] = (round((cpu_seconds(broker_pid) - b0[0]) / dt, 2)
                                 if broker_pid and b0 and dt > 0 else "n/a")
    return (n / dt if dt > 0 else float("nan")), stats


async def _probe(views: Any, queue: Any, delays: list[float], missing: list[int], stop: asyncio.Event,
                 acks: list[float] | None = None) -> None:
    """Poll ``get_user_state`` for sampled engagements; record produce -> visible delays (ms).

    The producers' acknowledgement delays of the same records arrive at their end (``("acks", [...])``).
    """
    import queue as _q

    pending: list[tuple[str, str, int, float]] = []
    while not stop.is_set() or pending:
        while True:
            try:
                msg = queue.get_nowait()
            except _q.Empty:
                break
            if msg[0] == "acks":
                if acks is not None:
                    acks.extend(msg[1])
            else:
                pending.append(msg)
        now = time.time() * 1000.0
        keep = []
        for user, item, ts, sent in pending:
            try:
                actions = views.get_user_state(user).actions
            except LookupError:
                actions = ()
            if any(a.ts == ts and a.item_id == item for a in actions):
                delays.append(now - sent)
            elif now - sent > 10_000:
                missing[0] += 1
            else:
                keep.append((user, item, ts, sent))
        pending = keep
        if stop.is_set() and not pending:
            break
        await asyncio.sleep(0.002)


async def _engine_live(settings: Any, bootstrap: str, n: int, users: int, rate: float, single: bool,
                       warmup_s: float, step_ms: int, producers: int = 1, linger_ms: int = LINGER_MS,
                       broker_pid: int | None = None) -> dict[str, Any]:
    from streams.engine.engine import TableEngine
    from streams.engine.freshness import percentiles
    from streams.engine.views import StreamViews
    from streams.serving.loopmon import tune_runtime

    tune_runtime()  # as in a worker

    engine = TableEngine(settings, bootstrap)
    await engine.start()
    while not engine.tables:
        await asyncio.sleep(0.05)
    views = StreamViews(engine, None)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_produce_proc, args=(bootstrap, settings.model_dump_json(), n // producers,
                                                     max(1, users // producers), rate / producers, single,
                                                     step_ms * producers, queue, k, linger_ms))
             for k in range(producers)]
    delays: list[float] = []
    missing = [0]
    stop = asyncio.Event()
    for proc in procs:
        proc.start()
    acks: list[float] = []
    probe = asyncio.ensure_future(_probe(views, queue, delays, missing, stop, acks))
    try:
        await asyncio.sleep(warmup_s)
        engine.freshness.clear()
        engine.delivery.clear()
        delays.clear()
        processed0, t0, b0 = engine.processed, time.perf_counter(), cpu_seconds(broker_pid)
        while any(proc.is_alive() for proc in procs):
            await asyncio.sleep(0.1)
        rate_seen = (engine.processed - processed0) / (time.perf_counter() - t0)
        broker_cores = (cpu_seconds(broker_pid) - b0) / (time.perf_counter() - t0)
        await asyncio.sleep(1.0)  # the producers' last messages (their acknowledgement delays) reach the probe
        stop.set()
        await asyncio.wait_for(probe, 15)
        f50, f99 = percentiles(delays, 0.5, 0.99)  # the engine's percentile rule for the probe's samples too
        k50, k99 = percentiles(acks, 0.5, 0.99)
        a50, a99 = engine.freshness.percentiles(0.5, 0.99)
        d50, d99 = engine.delivery.percentiles(0.5, 0.99)
        out = {"freshness_rate_seen_events_per_s": round(rate_seen),
               "freshness_p50_ms": round(f50, 1), "freshness_p99_ms": round(f99, 1),
               "freshness_max_ms": round(max(delays), 1) if delays else float("nan"),
               "freshness_samples": len(delays), "freshness_missing": missing[0],
               "engine_apply_delay_p50_ms": round(a50, 1), "engine_apply_delay_p99_ms": round(a99, 1),
               # of which the producer and the broker: produced -> in the engine's hands (fetch returned)
               "delivery_delay_p50_ms": round(d50, 1), "delivery_delay_p99_ms": round(d99, 1),
               # of which the producer and the broker's append: send -> acknowledged (all of the run, warm-up too)
               "produce_ack_p50_ms": round(k50, 1), "produce_ack_p99_ms": round(k99, 1),
               "freshness_broker_cpu_cores": round(broker_cores, 2) if broker_pid else "n/a",
               "live_labeled_examples": sum(
                   t.join.stats.counts["labeled_examples"] for t in engine.tables.values()),
               "_freshness_ms": [round(d, 2) for d in delays]}  # the samples, for the plot (not printed)
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        await engine.stop()
    return out


def _freshness_loads(args: argparse.Namespace, max_rate: float) -> list[tuple[str, float]]:
    """(prefix of its result keys, events/s) of each freshness run.

    By default two: half of the goal rate (``--goal-rate``, 20,000: the
    issue's "p99 under 100 ms at half of that rate") and ``--load`` of the
    rate just measured, which shows the tail nearer this box's own limit.
    ``--load-rate`` runs that one rate only.
    """
    if args.load_rate:
        return [("", float(args.load_rate))]
    loads = [("", args.goal_rate / 2)]
    if args.load > 0:
        loads.append(("halfmax_", max(100.0, max_rate * args.load)))
    return loads


def _goals(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, str]:
    """The benchmark's goals, met or not, from the figures of this run."""
    goals = {"goal_engine_events_per_s": f"{result['engine_events_per_s']:,} >= {args.goal_rate:,.0f}: "
                                         + ("met" if result["engine_events_per_s"] >= args.goal_rate else "NOT met")}
    p99, load = result.get("freshness_p99_ms"), result.get("freshness_load_events_per_s")
    if p99 is not None:
        where = f"{p99} ms at {load:,}/s; goal: < {args.goal_freshness_p99_ms:g} ms at {args.goal_rate / 2:,.0f}/s: "
        if load < args.goal_rate / 2:
            verdict = "not measured at that rate"
        else:
            verdict = "met" if p99 < args.goal_freshness_p99_ms else "NOT met"
        goals["goal_freshness_p99"] = where + verdict
    return goals


def run(args: argparse.Namespace, kind: str | None = None) -> dict[str, Any]:
    """One run of the bench on the broker ``kind`` (``kafka``, ``embedded``; None: ``resolve_broker``'s choice)."""
    from streams.kafka.broker import resolve_broker
    from streams.kafka.embedded import embedded_broker_pid
    from streams.kafka.producer import one_record_per_batch
    from streams.settings import Settings
    from streams.kafka.topics import ensure_topics, topic_specs

    data_dir = Path(tempfile.mkdtemp(prefix="feedrank-bench-"))
    broker = resolve_broker(log_dir=data_dir / "log", kind=kind)
    result: dict[str, Any] = {"broker": broker.kind, "cpus": os.cpu_count(), "events": args.events,
                              "partitions": args.partitions}
    try:
        def fresh(tag: str) -> Any:
            t = f"{tag}{uuid.uuid4().hex[:6]}"
            return Settings(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, app_id=f"bench-{t}", partitions=args.partitions,
                            data_dir=data_dir / t, topic_impressions=f"imp-{t}", topic_engagements=f"eng-{t}",
                            topic_predictions=f"pred-{t}", topic_labeled=f"lab-{t}",
                            topic_feedback_deltas=f"fb-{t}", topic_dlq=f"dlq-{t}",
                            checkpoint_interval_s=args.checkpoint_interval,
                            # event time runs --event-ms-per-request per request, hundreds of times the
                            # wall clock, so windows close within the run: lift the future bound to match
                            max_event_future_s=BENCH_EVENT_FUTURE_S)

        broker_pid = broker.pid or embedded_broker_pid(broker.bootstrap)
        single = one_record_per_batch(fresh("x"), broker.bootstrap)
        pre_single = single and args.max_batches == "off"
        live_single = single and args.live_batches == "off"
        result["pre_produced_one_record_per_batch"] = pre_single
        result["producer_linger_ms"] = args.linger_ms
        s = fresh("max")
        ensure_topics(broker.bootstrap, topic_specs(s))
        records = _events(args.events, args.users, seed=1, start_ms=T0, step_ms=args.event_ms_per_request)
        dt = _produce(broker.bootstrap, s, records, pre_single, linger_ms=args.linger_ms)
        result["produce_events_per_s"] = round(args.events / dt)
        topics = [s.topic_impressions, s.topic_engagements, s.topic_predictions]
        raw = asyncio.run(consume_raw(broker.bootstrap, topics, args.events))
        result["raw_aiokafka_consume_per_s"] = round(raw["events"] / raw["wall_s"])
        rate, stats = _engine_rate(s, broker.bootstrap, args.events, broker_pid)
        result["engine_events_per_s"] = round(rate)
        result["engine_run_broker_cpu_cores"] = stats["broker_cpu_cores"]
        result["engine_checkpoints"] = stats["checkpoints"]
        result["engine_labeled_examples"] = sum(j["labeled_examples"] for j in stats["join"].values())
        result["live_producer_one_record_per_batch"] = live_single
        result["freshness_producer_processes"] = args.producers
        for prefix, load in _freshness_loads(args, rate):
            s2 = fresh("live")
            if args.live_fetch_wait_ms is not None:
                s2 = s2.model_copy(update={"consume_fetch_max_wait_ms": args.live_fetch_wait_ms})
            result["live_fetch_max_wait_ms"] = s2.consume_fetch_max_wait_ms or "default"
            ensure_topics(broker.bootstrap, topic_specs(s2))
            live = {"freshness_load_events_per_s": round(load)}
            live.update(asyncio.run(_engine_live(s2, broker.bootstrap, int(load * args.seconds), args.users, load,
                                                 live_single, warmup_s=min(2.0, args.seconds / 4),
                                                 step_ms=args.event_ms_per_request, producers=args.producers,
                                                 linger_ms=args.linger_ms, broker_pid=broker_pid)))
            samples = live.pop("_freshness_ms", [])
            result.setdefault("_freshness_ms", {})[f"{load:,.0f} events/s"] = samples
            result.update({prefix + k: v for k, v in live.items()})
        result.update(_goals(args, result))
    finally:
        broker.stop()
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=300_000, help="events pre-produced for the max-rate run")
    p.add_argument("--users", type=int, default=20_000, help="distinct users")
    p.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    p.add_argument("--brokers", default="kafka,embedded",
                   help="brokers to run the bench on, one after the other, printed side by side: kafka (a local "
                        "Apache Kafka), embedded, or auto (KAFKA_BOOTSTRAP_SERVERS when set)")
    p.add_argument("--goal-rate", type=float, default=40_000,
                   help="the engine's goal in events/s; freshness is measured at half of it")
    p.add_argument("--goal-freshness-p99-ms", type=float, default=50.0, help="the freshness goal (p99, ms)")
    p.add_argument("--load", type=float, default=0.5,
                   help="a second freshness run at this fraction of the max rate just measured (0: none)")
    p.add_argument("--load-rate", type=float, default=None,
                   help="one freshness run at this rate in events/s (instead of the two above)")
    p.add_argument("--seconds", type=float, default=15.0, help="duration of the freshness run")
    p.add_argument("--checkpoint-interval", type=float, default=1.0, help="checkpoint interval (s)")
    p.add_argument("--producers", type=int, default=1,
                   help="producer processes of the freshness run, each with its own users and a share of the rate "
                        "(librdkafka: one process sends ~10k records/s with ~0.1 of a core)")
    p.add_argument("--max-batches", choices=("on", "off"), default="on",
                   help="on: the events of the max-rate run are pre-produced in batches (--linger-ms), as feed "
                        "servers send them; off: one record per batch (the embedded broker's safe mode for end "
                        "offsets, which this bench does not read: it counts records)")
    p.add_argument("--linger-ms", type=int, default=LINGER_MS,
                   help="the producers' linger when they batch. The embedded broker lists every batch a partition "
                        "holds on each fetch of it, so a run's fetches get slower as batches pile up: fewer, "
                        "larger batches keep them fast (the linger counts in the freshness measured)")
    p.add_argument("--live-batches", choices=("on", "off"), default="on",
                   help="on: the freshness run's producers batch (--linger-ms) as feed servers do against real "
                        "Kafka; off: one record per batch on the embedded broker (its safe mode for end offsets, "
                        "which freshness does not read; it costs the producers and the broker most of the 2 cores "
                        "at half the maximum rate)")
    p.add_argument("--live-fetch-wait-ms", type=int, default=None,
                   help="the freshness run's consumer fetch wait (FEEDRANK_CONSUME_FETCH_MAX_WAIT_MS for that run "
                        "only; default: the setting's)")
    p.add_argument("--event-ms-per-request", type=int, default=200,
                   help="event time between requests (windows of 600 s close during the run)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for results.json and freshness.svg/.png (the freshness distribution); "
                        "default: print only")


def print_side_by_side(results: list[dict[str, Any]]) -> None:
    """One row per figure, one column per broker (keys starting with ``_`` are raw samples: not printed)."""
    keys = list(dict.fromkeys(k for r in results for k in r if not k.startswith("_")))
    width = max(len(k) for k in keys)
    cols = [[str(r.get(k, "")) for k in keys] for r in results]
    colw = [max(len(c) for c in col) for col in cols]
    for i, k in enumerate(keys):
        print(f"{k:<{width}}  " + "  ".join(f"{col[i]:<{w}}" for col, w in zip(cols, colw)).rstrip())


def _cmd(args: argparse.Namespace) -> int:
    kinds = [k.strip() for k in args.brokers.split(",") if k.strip()]
    results = []
    for kind in kinds:
        print(f"bench ingest on {kind} ...", file=sys.stderr, flush=True)
        results.append(run(args, None if kind == "auto" else kind))
    print_side_by_side(results)
    if args.out is not None:
        for path in write_out(results, args.out):
            print(f"wrote {path}")
    return 0


def freshness_distributions(results: list[dict[str, Any]]) -> dict[str, list[float]]:
    """``{"<broker>, <rate> events/s": produce -> visible delays in ms}`` of every freshness run."""
    return {f"{r.get('broker', '?')}, {load}": list(v) for r in results
            for load, v in (r.get("_freshness_ms") or {}).items()}


def write_out(results: list[dict[str, Any]], out: Path) -> list[Path]:
    """``out/results.json`` (figures, without the raw samples) and the freshness distribution plot."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dists = freshness_distributions(results)
    figures = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    written: list[Path] = []
    from scorer.plots import PlotsUnavailable, histogram_figure, save_all

    try:
        fig = histogram_figure(dists, "feedrank bench ingest: freshness (produce -> visible in get_user_state)",
                               "freshness (ms, log scale)", log_x=True)
        written = save_all(fig, out / "freshness", (".svg", ".png"))
    except PlotsUnavailable as exc:
        print(f"freshness plot skipped: {exc}", file=sys.stderr)
    path = out / "results.json"
    path.write_text(json.dumps({"results": figures, "plots": [str(p) for p in written]}, indent=1, default=str))
    return [path, *written]


def register_bench(bench: Any) -> None:
    """Adds ``feedrank bench ingest``."""
    p = bench.add_parser("ingest", help="table engine events/s and freshness beside raw aiokafka")
    add_arguments(p)
    p.set_defaults(func=_cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="feedrank bench ingest", description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING)
    return _cmd(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
