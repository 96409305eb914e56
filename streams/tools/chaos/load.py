"""``feedrank chaos --scenarios load``: events at 80% of the measured maximum rate plus ``/score`` traffic
lose nothing, and memory, disk and lag stay bounded.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

from streams.settings import Settings
from streams.tools.chaos.common import (ChaosError, Worker, _dir_mb, _Out, _rss_mb, _verdict, machine_load,
                                        make_settings, score_body, wait_until)
from streams.tools.loadgen import LoadProducer, cpu_seconds as _cpu_s
from streams.kafka.security import kafka_options


def _stored_ends(stats: dict[str, Any], topics: Iterable[str]) -> dict[str, dict[int, int]]:
    """Records the worker's stored offsets cover, per topic and partition (offset + 1; none listed: 0)."""
    topics = set(topics)
    out: dict[str, dict[int, int]] = {}
    for p, per in stats["offsets"].items():
        for t, o in per.items():
            if t in topics and o >= 0:
                out.setdefault(t, {})[int(p)] = o + 1
    return out


def _lag(stats: dict[str, Any], acked: dict[str, dict[int, int]]) -> int:
    stored = _stored_ends(stats, acked)
    return sum(max(0, n - stored.get(t, {}).get(p, 0)) for t, per in acked.items() for p, n in per.items())


def _applied(stats: dict[str, Any], topics: Iterable[str]) -> int:
    """Event records the worker's stored offsets cover (offset + 1 per partition)."""
    return sum(sum(per.values()) for per in _stored_ends(stats, topics).values())


def _end_offsets(bootstrap: str, topics: Iterable[str], partitions: int) -> dict[str, dict[int, int]]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, **kafka_options("kafka-python"))
    try:
        ends = c.end_offsets([TopicPartition(t, p) for t in topics for p in range(partitions)])
    finally:
        c.close()
    out: dict[str, dict[int, int]] = {}
    for tp, n in ends.items():
        if n:
            out.setdefault(tp.topic, {})[tp.partition] = n
    return out


class _ScoreLoad(threading.Thread):
    """``/score`` requests (``n`` candidates, random user) at ``rps`` until stopped; client-side latencies."""

    def __init__(self, url: str, rps: float, users: int, seed: int, n: int = 50, ts: int | None = None) -> None:
        """``ts``: the requests' event time (default: now); a scenario on a clock of its own passes its time."""
        super().__init__(daemon=True)
        self.url, self.rps, self.users, self.seed, self.n, self.ts = url, rps, users, seed, n, ts
        self.stop_flag = threading.Event()
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []  # the first few failures, for the report
        self.latency_ms: list[float] = []
        self.latency_at: list[float] = []  # time.monotonic() of each latency, for per-minute figures

    def run(self) -> None:
        from streams.serving.client import ScorerClient, ScorerError

        client = ScorerClient(self.url, timeout_s=10.0, retries=3, backoff_s=0.2)
        rng = random.Random(self.seed)
        t0 = time.monotonic()
        k = 0
        while not self.stop_flag.is_set():
            k += 1
            t = time.monotonic()
            try:
                client.score(score_body(f"u{rng.randrange(self.users)}", n=self.n, ts=self.ts))
                self.ok += 1
                self.latency_ms.append((time.monotonic() - t) * 1000)
                self.latency_at.append(t)
            except (ScorerError, OSError) as exc:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            delay = t0 + k / self.rps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        client.close()

    def latencies_since(self, t0: float) -> list[tuple[float, float]]:
        """``(seconds after t0, ms)`` per successful request."""
        return [(t - t0, ms) for t, ms in zip(self.latency_at, self.latency_ms)]

    def percentiles(self) -> tuple[float | None, float | None]:
        lat = sorted(self.latency_ms)
        if not lat:
            return None, None
        return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


#: one-record batches per partition above which the embedded broker's fetches collapse (memory storage
#: engine; measured on one partition, 240-byte records: 46k records/s read at 50k batches, 5k/s at 80k,
#: 0 at 110k; the same 160k batches over 8 partitions still read at 49k/s): long runs spread over partitions
EMBEDDED_PARTITION_BATCHES = 50_000
#: how far the load producer may run ahead of the worker's stored offsets while the maximum rate is
#: measured (``measure_max_rate``): ~2 to 3 s of traffic at the rates this box reaches
MAX_RATE_LAG_WINDOW = 40_000
#: how long the load scenario's producer lets a partition's batch fill: longer than ``LOAD_LINGER_MS`` (the
#: RPC bench, at 2,000 events/s) because the embedded broker lists every batch a partition holds on each
#: fetch. At 16,600 events/s over 2 x 16 partitions, 200 ms took the broker from 0.14 of a core at 2 minutes
#: to 0.45 at 10 and 0.5 to 0.78 from 35; 1 s (~500 records a batch) kept it at 0.07 at 5 minutes, 0.15 at
#: 12, 0.3 to 0.48 at 35 (docs/reliability.md). Records and bytes are the same; real Kafka indexes offsets
LOAD_SCENARIO_LINGER_MS = 1000
#: partitions of the load scenario: 10 minutes at ~1,000 events/s stay under half that per partition
LOAD_PARTITIONS = 16


def _load_settings(work: Path, bootstrap: str, model_dir: Path, calibrator_dir: Path,
                   partitions: int = LOAD_PARTITIONS) -> Settings:
    # caps reached early in the run, so that the RSS slope of its second half measures leaks, not state
    # still filling up to its bounds: windows short enough that pending impressions close after ~1 minute
    # (not the 11 minutes of the default 600 s + 60 s), and sequences of 64 actions (200 users at ~80
    # engagements/s fill 64 in under 3 minutes; the default 256 took the whole 10 minutes: measured with
    # tracemalloc, the retained growth of a run was sequences still filling and the trainer's id window)
    return make_settings(work, bootstrap, model_dir=Path(model_dir).resolve(),
                         calibrator_dir=Path(calibrator_dir).resolve(), partitions=partitions,
                         attribution_window_s=60.0, allowed_lateness_s=5.0, sequence_len=64)


def rocksdb_memory_mb(w: Worker) -> float | None:
    """RocksDB's native memory in the worker (memtables + table readers + block cache), from /metrics."""
    try:
        return w.metric("feedrank_rocksdb_memory_bytes") / (1 << 20)
    except (OSError, ValueError):
        return None


def measure_max_rate(bootstrap: str, work: Path, model_dir: Path, calibrator_dir: Path, *, seconds: float = 60.0,
                     warmup_s: float | None = None, score_rps: float = 10.0, users: int = 200, clients: int = 1,
                     partitions: int = LOAD_PARTITIONS, seed: int = 3, batches: bool = True,
                     linger_ms: int = LOAD_SCENARIO_LINGER_MS, lag_window: int = MAX_RATE_LAG_WINDOW,
                     echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The highest event rate this box sustains with producer, worker, broker and ``/score`` traffic together.

    A throwaway worker (own app, topics and state) with ``/score`` at ``score_rps``; the load producer
    sends as fast as it can for ``warmup_s`` + ``seconds``, but never more than ``lag_window`` records
    ahead of the worker's stored offsets; over the last ``seconds``: the rate the broker acknowledged
    and the rate the worker applied. The window keeps the measurement at a lag the load scenario
    passes with: with the load producer unbounded (librdkafka and a replayed pool send ~170,000
    records/s), the worker caught up on a backlog of 24 million records at 17,917/s, a rate its
    bigger fetches reach only when far behind. The maximum sustained rate is the smaller of
    the two (if the worker applies less than is delivered, lag grows without bound at that offered
    rate). ``warmup_s`` None: the attribution window + allowed lateness + 30 s, so the measured span
    has the join in its steady state (windows closing and labeled examples going out as fast as
    impressions come in). Measured with a 20 s warm-up, before any window had closed, the maximum
    was 13,281/s, and 80% of it (10,625/s) built a lag of 537k records in 10 minutes.
    """
    out = _Out(echo)
    settings = _load_settings(work, bootstrap, model_dir, calibrator_dir, partitions)
    if warmup_s is None:
        warmup_s = settings.attribution_window_s + settings.allowed_lateness_s + 30.0
    from streams.kafka.topics import ensure_topics, topic_specs

    ensure_topics(bootstrap, topic_specs(settings))
    events = (settings.topic_impressions, settings.topic_engagements)
    out(f"[load] measuring the maximum rate: producer ({clients} clients, unpaced, at most {lag_window:,} records "
        f"ahead of the worker) + worker + broker + /score "
        f"{score_rps:g}/s on this box for {warmup_s + seconds:g}s (the first {warmup_s:g}s, until the join's windows "
        f"close at the rate they open, not counted); load {machine_load()}")
    w = Worker(settings, work / "log" / f"{settings.app_id}-maxrate.log", "max-rate worker").start()
    producer = None
    scorer = _ScoreLoad(w.url, score_rps, users, seed)
    held = threading.Event()

    def hold_to_window() -> None:  # the producer's cap follows the worker's progress
        while not held.wait(0.2):
            try:
                producer.cap(_applied(w.stats(), events) + lag_window)  # type: ignore[union-attr]
            except (OSError, ValueError):
                pass

    try:
        wait_until(lambda: w.get("/ready", timeout=2) is not None, 120, "worker ready", detail=w.log_tail)
        producer = LoadProducer(bootstrap, settings, users=users, seed=seed + 100, world_rate=3000.0, rate=None,
                                clients=clients, batches=batches, linger_ms=linger_ms).start()
        producer.cap(lag_window)
        threading.Thread(target=hold_to_window, name="max-rate-window", daemon=True).start()
        scorer.start()
        producer.go()
        t0 = time.monotonic()
        time.sleep(warmup_s)
        wpid, ppid = w.proc.pid if w.proc else None, producer.proc.pid
        a0, p0, ta = producer.acked(), _applied(w.stats(), events), time.monotonic()
        cw0, cp0 = _cpu_s(wpid), _cpu_s(ppid)
        time.sleep(max(1.0, seconds))
        a1, p1, tb = producer.acked(), _applied(w.stats(), events), time.monotonic()
        cw, cp = (_cpu_s(wpid) - cw0) / (tb - ta), (_cpu_s(ppid) - cp0) / (tb - ta)
        lag = a1 - p1
        acked_rate, applied_rate = (a1 - a0) / (tb - ta), (p1 - p0) / (tb - ta)
        res = {"acked_rate": round(acked_rate), "applied_rate": round(applied_rate),
               "max_rate": round(min(acked_rate, applied_rate)), "lag_end": lag, "seconds": round(tb - t0),
               "rss_mb": round(w.rss_mb()), "load1": round(os.getloadavg()[0], 2), "score_ok": scorer.ok,
               "worker_cpu": round(cw, 2), "producer_cpu": round(cp, 2),
               # held at the window (lag near it) or falling behind: the worker sets the pace
               "bound_by": "worker" if applied_rate < 0.97 * acked_rate or lag >= lag_window // 2 else "producer/broker"}
        out(f"  delivered {acked_rate:,.0f}/s, applied by the worker {applied_rate:,.0f}/s (lag {lag:,} at the "
            f"end), /score {scorer.ok} ok; CPU: worker {cw:.2f} cores, producer {cp:.2f} cores (of "
            f"{os.cpu_count()}; the broker and anything else on the box take the rest); maximum sustained rate of "
            f"this setup = {res['max_rate']:,}/s, bound by the {res['bound_by']}; load {machine_load()}")
        return res
    finally:
        held.set()
        scorer.stop_flag.set()
        if producer is not None:
            producer.stop()
        w.kill()
        shutil.rmtree(settings.data_dir, ignore_errors=True)


def _imp_ahead_s(st: dict[str, Any]) -> float:
    """How far (event-time seconds) the impressions input of the most skewed partition is ahead of its engagements."""
    gaps = [(j.get("wm_impressions", 0) - j.get("wm_engagements", 0)) / 1000.0
            for j in (st.get("join") or {}).values() if j.get("wm_engagements")]
    return max(gaps, default=0.0)


def _slope_per_min(samples: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of ``key`` over ``t`` (per minute)."""
    xs = [s["t"] / 60.0 for s in samples]
    ys = [s[key] for s in samples]
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def run_load(bootstrap: str, work: Path, model_dir: Path, calibrator_dir: Path, *, minutes: float = 10.0,
             max_rate: float | None = None, load_factor: float = 0.8, calibrate_s: float = 60.0,
             score_rps: float = 10.0, users: int = 200, clients: int = 1, sample_s: float = 10.0,
             rss_slope_mb_per_min: float = 4.0, check_bounds: bool | None = None, min_rate_fraction: float = 0.9,
             partitions: int = LOAD_PARTITIONS, seed: int = 3, batches: bool = True,
             linger_ms: int = LOAD_SCENARIO_LINGER_MS, echo: Callable[[str], None] | None = None,
             broker_pid: int | None = None, broker_data: Path | None = None,
             event_retention_s: float | None = None) -> dict[str, Any]:
    """Events at ``load_factor`` of the maximum rate plus ``/score`` traffic for ``minutes``.

    ``event_retention_s``: the event and prediction topics keep that long (segments roll every quarter of
    it), so a long run's broker disk is bounded; ``broker_data`` (the broker's log dirs, when it runs on
    this box) is then sampled and checked, and ``broker_pid`` gives its CPU and RSS.

    ``max_rate`` None: measure it first (``measure_max_rate``). Prints sent/acked events, lag, worker
    RSS, RocksDB memory and size every ``sample_s``. ``batches``: the producer batches records as feed
    servers do against real Kafka (else one record per batch on the embedded broker). Checks: nothing
    lost (per partition: acked records = the true end offset, i.e. the highest acknowledged offset + 1,
    and the broker's own end offset too when records travel one per batch = the worker's stored
    offsets; valid + dead-lettered = events + prediction logs), the lag drains and
    stays below 30 s of traffic, the delivered rate reaches ``min_rate_fraction`` of the target, and
    (runs of 3 minutes or more, or ``check_bounds``) RSS and RocksDB are bounded: the RSS slope over
    the second half of the run is below ``rss_slope_mb_per_min`` and neither the RSS nor the RocksDB
    peak of the last third exceeds the middle third's by more than 10% + 32 MiB (RSS) or 50% + 32 MiB
    (RocksDB on disk, which saws with compactions).
    """
    from streams.kafka.topics import ensure_topics, topic_specs

    out = _Out(echo)
    measured: dict[str, Any] | None = None
    if max_rate is None:
        measured = measure_max_rate(bootstrap, work, model_dir, calibrator_dir, seconds=calibrate_s,
                                    score_rps=score_rps, users=users, clients=clients, partitions=partitions,
                                    seed=seed, batches=batches, linger_ms=linger_ms, echo=echo)
        max_rate = float(measured["max_rate"])
        basis = "measured just now on this box with producer + worker + broker + /score together"
    else:
        basis = "given (--max-rate)"
    rate = load_factor * max_rate
    settings = _load_settings(work, bootstrap, model_dir, calibrator_dir, partitions)
    specs = topic_specs(settings)
    if event_retention_s:
        kept = {settings.topic_impressions, settings.topic_engagements, settings.topic_predictions}
        ms = int(event_retention_s * 1000)
        specs = [replace(t, retention_ms=ms, segment_ms=max(10_000, ms // 4)) if t.name in kept else t for t in specs]
    ensure_topics(bootstrap, specs)
    events = (settings.topic_impressions, settings.topic_engagements)
    out(f"[load] {minutes:g} min: events at {rate:,.0f}/s ({load_factor:.0%} of the maximum {max_rate:,.0f}/s, "
        f"{basis}), /score (50 candidates) at {score_rps:g}/s, {users} users, {partitions} partitions, attribution "
        f"window 60 s; load {machine_load()}; app {settings.app_id}")
    per_partition = rate * minutes * 60 / partitions
    if per_partition > EMBEDDED_PARTITION_BATCHES and not batches:
        out(f"  note: ~{per_partition:,.0f} records per partition by the end; the embedded broker's fetches collapse "
            f"beyond ~{EMBEDDED_PARTITION_BATCHES:,} one-record batches in a partition (docs/reliability.md): on it, "
            f"give more --load-partitions")
    w = Worker(settings, work / "log" / f"{settings.app_id}-load.log", "worker").start()
    problems: list[str] = []
    samples: list[dict[str, Any]] = []
    producer: LoadProducer | None = None
    scorer = _ScoreLoad(w.url, score_rps, users, seed)
    n_acked = accounted = preds = valid = dead = 0
    p50 = p99 = None
    figures: dict[str, Any] = {}
    try:
        wait_until(lambda: w.get("/ready", timeout=2) is not None, 120, "worker ready", detail=w.log_tail)
        producer = LoadProducer(bootstrap, settings, users=users, seed=seed, world_rate=rate, rate=rate,
                                clients=clients, batches=batches, linger_ms=linger_ms).start()
        out(f"  producer: {'one record per batch' if producer.single else f'batches (linger {linger_ms} ms)'}")
        data_dir = Path(settings.data_dir) / "tables"
        rss0 = w.rss_mb()
        out(f"  worker RSS before traffic {rss0:.0f} MiB")
        from streams.kafka.embedded import embedded_broker_pid

        bpid = broker_pid or embedded_broker_pid(bootstrap)
        out(f"  {'t':>6} {'sent':>10} {'acked':>10} {'rate/s':>7} {'lag':>7} {'RSS MiB':>8} {'score':>6} {'RDB mem':>8} "
            f"{'RDB disk':>8} {'score ok':>8} {'cpu w/p/b':>14} {'broker MiB':>10} {'load':>5} {'held':>7} "
            f"{'deadlines':>9} {'imp-eng s':>9}")
        scorer.start()
        producer.go()
        t_start = time.monotonic()
        prev_acked, prev_applied, prev_t = 0, 0, t_start
        wpid, ppid = w.proc.pid if w.proc else None, producer.proc.pid
        cpu_start = prev_cpu = (_cpu_s(wpid), _cpu_s(ppid), _cpu_s(bpid))
        while time.monotonic() - t_start < minutes * 60:
            time.sleep(sample_s)
            try:
                st = w.stats()
            except OSError as exc:
                problems.append(f"worker web failed at {time.monotonic() - t_start:.0f}s: {exc}")
                continue
            acked = producer.snapshot()
            now = time.monotonic()
            n = sum(sum(v.values()) for v in acked.values())
            mem = rocksdb_memory_mb(w)
            cpu = (_cpu_s(wpid), _cpu_s(ppid), _cpu_s(bpid))
            applied = _applied(st, events)
            smp = {"t": round(now - t_start), "sent": producer.sent, "acked": n,
                   "rate": round((n - prev_acked) / (now - prev_t)), "lag": _lag(st, acked), "applied": applied,
                   "applied_rate": round((applied - prev_applied) / (now - prev_t)),
                   "rss_mb": round(w.rss_mb(), 1), "score_rss_mb": round(w.child_rss_mb(), 1),
                   "rocksdb_mem_mb": None if mem is None else round(mem, 1),
                   "rocksdb_mb": round(_dir_mb(data_dir), 1), "score_ok": scorer.ok,
                   "worker_cpu": round((cpu[0] - prev_cpu[0]) / (now - prev_t), 2),
                   "producer_cpu": round((cpu[1] - prev_cpu[1]) / (now - prev_t), 2),
                   "broker_cpu": round((cpu[2] - prev_cpu[2]) / (now - prev_t), 2) if bpid else None,
                   "broker_rss_mb": round(_rss_mb(bpid)) if bpid else None,
                   "broker_disk_mb": round(_dir_mb(broker_data), 1) if broker_data else None,
                   "load1": round(os.getloadavg()[0], 2), "held": int(st.get("held_engagements", 0)),
                   "deadlines": int(st.get("open_deadlines", 0)), "imp_ahead_s": _imp_ahead_s(st)}
            prev_acked, prev_applied, prev_t, prev_cpu = n, applied, now, cpu
            samples.append(smp)
            out(f"  {smp['t']:>5}s {smp['sent']:>10,} {smp['acked']:>10,} {smp['rate']:>7,} {smp['lag']:>7,} "
                f"{smp['rss_mb']:>8.1f} {smp['score_rss_mb']:>6.0f} {(mem or 0):>8.1f} {smp['rocksdb_mb']:>8.1f} {smp['score_ok']:>8,} "
                f"{smp['worker_cpu']:>4.2f}/{smp['producer_cpu']:.2f}/{smp['broker_cpu'] or 0:<4.2f} "
                f"{smp['broker_rss_mb'] or 0:>10,} {smp['load1']:>5.2f} {smp['held']:>7,} {smp['deadlines']:>9,} {smp['imp_ahead_s']:>9.1f}")
            if not w.alive:
                problems.append(f"worker died: {w.log_tail()}")
                break
        elapsed = time.monotonic() - t_start
        cpu_w, cpu_p = ((_cpu_s(wpid) - cpu_start[0]) / elapsed, (_cpu_s(ppid) - cpu_start[1]) / elapsed)
        cpu_b = (_cpu_s(bpid) - cpu_start[2]) / elapsed if bpid else None
        producer.stop()
        scorer.stop_flag.set()
        scorer.join(timeout=60)
        if producer.errors:
            problems.append(f"producer: {'; '.join(producer.errors[:3])}")
        acked = producer.snapshot()
        n_acked = sum(sum(v.values()) for v in acked.values())
        drained: float | None
        try:
            drained = wait_until(lambda: _lag(w.stats(), acked) == 0, 300, "the worker to drain its lag",
                                 detail=lambda: _lag(w.stats(), acked))
        except ChaosError as exc:  # reported; the figures below still come out
            drained = None
            problems.append(f"lag did not drain: {exc}")
        counts: dict[str, int] = {}

        def settled() -> bool:
            # the valid counter is bumped a moment after the offsets move (the engine awaits its sends in
            # between), and the last prediction logs of /score may still be on their way: read until both agree
            st = w.stats()
            counts.update(accounted=_applied(st, events), preds=_applied(st, (settings.topic_predictions,)),
                          valid=int(w.metric("feedrank_events_valid_total")),
                          dead=int(w.metric("feedrank_events_dead_lettered_total")))
            return counts["valid"] + counts["dead"] == counts["accounted"] + counts["preds"]

        try:
            wait_until(settled, 30, "the worker's counters to settle", detail=lambda: counts)
        except ChaosError:
            pass  # reported as a mismatch below
        accounted, preds, valid, dead = counts["accounted"], counts["preds"], counts["valid"], counts["dead"]
        ends = _end_offsets(bootstrap, events, settings.partitions)
        true_ends = producer.ends()
        stored = _stored_ends(w.stats(), events)
        achieved = n_acked / elapsed
        figures.update(achieved_rate=round(achieved), worker_cpu=round(cpu_w, 2), producer_cpu=round(cpu_p, 2),
                       broker_cpu=None if cpu_b is None else round(cpu_b, 2),
                       lag_drained_s=None if drained is None else round(drained, 1),
                       end_offsets=sum(sum(v.values()) for v in ends.values()),
                       true_end_offsets=sum(sum(v.values()) for v in true_ends.values()),
                       producer_batches=not producer.single)
        if achieved < min_rate_fraction * rate:
            problems.append(f"offered rate not reached: {achieved:,.0f}/s delivered, target {rate:,.0f}/s "
                            f"(the producer or this box could not keep up)")
        drain = "not drained" if drained is None else f"drained {drained:.1f}s after the producer stopped"
        out(f"  done: {producer.sent:,} events sent, {n_acked:,} acked ({achieved:,.0f}/s delivered over "
            f"{elapsed:.0f}s = {achieved / max_rate:.0%} of the maximum; CPU worker {cpu_w:.2f}, producer "
            f"{cpu_p:.2f}{'' if cpu_b is None else f', broker {cpu_b:.2f}'} cores), {producer.failed} failed; true end "
            f"offsets (highest acked + 1) sum to {figures['true_end_offsets']:,}, the broker's to {figures['end_offsets']:,}"
            f"{'' if producer.single else ' (batched records: not exact on the embedded broker)'}; "
            f"lag {drain}; the worker's stored offsets account for {accounted:,} events and {preds:,} prediction "
            f"logs (from /score); it counted {valid:,} valid records (events + logs) and {dead} dead-lettered")
        if accounted != n_acked or valid + dead != n_acked + preds or producer.failed or producer.sent != n_acked:
            st = w.stats()
            by_kind = {k: int(w.metric("feedrank_events_valid_total", kind=k))
                       for k in ("impression", "engagement", "prediction")}
            by_topic = {t: _applied(st, (t,)) for t in (*events, settings.topic_predictions)}
            problems.append(f"events lost or double-counted: sent {producer.sent}, acked {n_acked}, offsets "
                            f"{accounted} + {preds} logs, valid {valid}, dead {dead}, producer failures "
                            f"{producer.failed}; valid by kind {by_kind}, stored offsets by topic {by_topic}, "
                            f"join stats {st.get('join')}")
        if true_ends != acked:
            problems.append(f"acknowledged offsets have gaps or repeats: true ends {true_ends}, records acked {acked}")
        if stored != true_ends:
            problems.append(f"the worker's stored offsets {stored} differ from the topics' true ends {true_ends}")
        if producer.single and ends != acked:
            problems.append(f"topic end offsets {ends} differ from the acknowledged records {acked} "
                            "(multi-record batches on the embedded broker?)")
        p50, p99 = scorer.percentiles()
        out(f"  /score during load: {scorer.ok:,} ok, {scorer.failed} failed; latency p50 {p50 or 0:.0f} ms, "
            f"p99 {p99 or 0:.0f} ms (client side, retries included)")
        if scorer.failed:
            problems.append(f"{scorer.failed} /score requests failed")
        if len(samples) >= 2:
            lag_bound = rate * 30  # 30 s of traffic
            lag_max = max(s["lag"] for s in samples)
            broker_peak = max((s["broker_cpu"] or 0.0) for s in samples)
            if lag_max > lag_bound:
                why = ""
                if broker_peak >= 0.9:  # tansu's storage work runs on about one core
                    why = (f" (the embedded broker peaked at {broker_peak:.2f} cores: it saturates as it holds more "
                           f"records; the worker used {max(s['worker_cpu'] for s in samples):.2f})")
                problems.append(f"lag exceeded 30 s of traffic: {lag_max:,} > {lag_bound:,.0f}{why}")
            out(f"  max lag {lag_max:,} records ({lag_max / rate:.1f} s of traffic; bound 30 s); broker CPU "
                f"peak {broker_peak:.2f} cores")
            figures["lag_max"] = lag_max
            figures["broker_cpu_peak"] = broker_peak
        if check_bounds is None:
            check_bounds = minutes >= 3
        if len(samples) >= 6:
            third, half = len(samples) // 3, len(samples) // 2
            mid, last = samples[third:2 * third], samples[2 * third:]
            rss_mid, rss_last = max(s["rss_mb"] for s in mid), max(s["rss_mb"] for s in last)
            db_mid, db_last = max(s["rocksdb_mb"] for s in mid), max(s["rocksdb_mb"] for s in last)
            slope = _slope_per_min(samples[half:], "rss_mb")
            db_slope = _slope_per_min(samples[half:], "rocksdb_mb")
            figures.update(rss_slope_mb_per_min=round(slope, 1), rss_peak_mid_mb=rss_mid, rss_peak_last_mb=rss_last,
                           rocksdb_peak_mid_mb=db_mid, rocksdb_peak_last_mb=db_last,
                           rocksdb_peak_mb=max(s["rocksdb_mb"] for s in samples))
            out(f"  bounded? RSS slope over the second half {slope:+.1f} MiB/min (limit {rss_slope_mb_per_min:g}); "
                f"RSS peak middle third {rss_mid:.0f} MiB, last third {rss_last:.0f} MiB; RocksDB on disk peak "
                f"{db_mid:.1f} -> {db_last:.1f} MiB (slope {db_slope:+.1f} MiB/min)"
                + ("" if check_bounds else " [not checked: run too short]"))
            if check_bounds:
                if slope > rss_slope_mb_per_min:
                    problems.append(f"RSS keeps growing: {slope:+.1f} MiB/min over the second half "
                                    f"(limit {rss_slope_mb_per_min:g})")
                if rss_last > rss_mid * 1.1 + 32:
                    problems.append(f"RSS peak of the last third {rss_last:.0f} MiB > middle third {rss_mid:.0f} "
                                    f"MiB + 10% + 32 MiB")
                if db_last > db_mid * 1.5 + 32:
                    problems.append(f"RocksDB keeps growing: peak {db_mid:.1f} -> {db_last:.1f} MiB")
            if broker_data is not None and event_retention_s:
                bd_mid = max(s["broker_disk_mb"] for s in mid)
                bd_last = max(s["broker_disk_mb"] for s in last)
                figures.update(broker_disk_peak_mid_mb=bd_mid, broker_disk_peak_last_mb=bd_last)
                out(f"  broker disk peak {bd_mid:.0f} -> {bd_last:.0f} MiB (events kept {event_retention_s:g} s)")
                if check_bounds and minutes * 60 >= 3 * event_retention_s and bd_last > bd_mid * 1.25 + 64:
                    problems.append(f"broker disk keeps growing: peak {bd_mid:.0f} -> {bd_last:.0f} MiB with "
                                    f"{event_retention_s:g} s retention")
    finally:
        scorer.stop_flag.set()
        if producer is not None and producer.proc.is_alive():
            producer.stop()
        w.stop()
    peak = max((s["rss_mb"] for s in samples), default=0.0)
    minutes_rows, pictures = _pictures(out, work, samples, scorer, t_start if samples else None, rate)
    _verdict(out, "load", problems)
    return {"scenario": "load", "minutes": minutes, "rate": rate, "max_rate": max_rate, "max_rate_basis": basis,
            "max_rate_measurement": measured, "events_sent": producer.sent if producer else 0,
            "prediction_logs": preds, "events_acked": n_acked, "valid": valid, "dead_lettered": dead,
            "accounted": accounted, "score_ok": scorer.ok, "score_failed": scorer.failed, "score_p50_ms": p50,
            "score_p99_ms": p99, "peak_rss_mb": peak, **figures, "samples": samples, "by_minute": minutes_rows,
            "plots": pictures, "problems": problems}


def _pictures(out: _Out, work: Path, samples: list[dict[str, Any]], scorer: _ScoreLoad, t_start: float | None,
              rate: float) -> tuple[list[dict[str, Any]], list[str]]:
    """The run by minute, and ``load.svg``/``load.png`` beside ``results.json`` (skipped without matplotlib)."""
    from scorer.plots import PlotsUnavailable
    from streams.tools.chaos.load_plot import by_minute, write_load_plot

    rows = by_minute(samples, scorer.latencies_since(t_start) if t_start is not None else ())
    if not rows:
        return rows, []
    try:
        paths = write_load_plot(rows, work, f"feedrank chaos --scenarios load: {rate:,.0f} events/s offered, by minute")
    except PlotsUnavailable as exc:
        out(f"  plots skipped: {exc}")
        return rows, []
    except Exception as exc:  # a picture must never fail the scenario: its figures are in results.json
        out(f"  plots failed: {type(exc).__name__}: {exc}")
        return rows, []
    out(f"  plots: {', '.join(str(p) for p in paths)}")
    return rows, [str(p) for p in paths]
