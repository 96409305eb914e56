"""``feedrank chaos --scenarios broker-restart,broker-failover``: real Apache Kafka going away under a worker.

- ``broker-restart``: a single-node Kafka is SIGKILLed mid-stream and started
  again on the same data (real Kafka keeps it); the worker retries meanwhile
  and resumes by itself.
- ``broker-failover``: a 3-node cluster, topics with replication factor 3 and
  ``min.insync.replicas=2``, producers ``acks=all``: one node is SIGKILLed
  under load and started again; with a model, ``/score`` is called throughout
  and its p99 through the failover is reported.

Both end like the crash scenario: every table equal to the from-scratch
recomputation, every input record accounted for once by the stored offsets,
each impression labeled exactly once. They start their own Kafka (the jars of
``deploy/kafka/pom.xml``), so they need Java 17+.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any, Callable

from streams.tools.chaos.common import (ChaosError, PacedProducer, Worker, _caught_up, _input_ends, _Out,
                                        _read_all_inputs, _verdict, check_against_recomputation, make_settings,
                                        wait_until)


def run_broker_restart(work: Path, *, brokers: int = 1, restarts: int = 2, down_s: float = 5.0,
                       users: int = 200, requests: int = 3000, seed: int = 0, model_dir: Path | None = None,
                       calibrator_dir: Path | None = None, score_rps: float = 20.0,
                       echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Kill a Kafka node ``restarts`` times while events stream (and ``/score`` is called); check exactness."""
    from streams.kafka.apache_kafka import LocalKafka
    from streams.tools.chaos.load import _ScoreLoad
    from streams.tools.recompute import T0, scenario

    name = "broker-restart" if brokers == 1 else "broker-failover"
    out = _Out(echo)
    rng = random.Random(seed)
    kafka = LocalKafka(brokers=brokers, data_dir=work / f"kafka-{name}").start(progress=out)
    t_started = time.monotonic()
    try:
        bootstrap = kafka.bootstrap
        serving = model_dir is not None and (Path(model_dir) / "latest").exists()
        extra: dict[str, Any] = {}
        if serving:
            extra = {"model_dir": Path(model_dir).resolve(), "calibrator_dir": Path(calibrator_dir or model_dir).resolve()}
        settings = make_settings(work, bootstrap, sequence_len=16, checkpoint_interval_s=0.2,
                                 attribution_window_s=60.0, allowed_lateness_s=5.0,
                                 replication_factor=min(3, brokers),
                                 min_insync_replicas=2 if brokers >= 3 else None, **extra)
        events, preds = scenario(n_users=users, n_requests=requests, seed=seed)
        total = len(events) + len(preds)
        stream_s = 15.0 * (restarts + 1)
        rate = len(events) / stream_s
        out(f"[{name}] Kafka {brokers} node(s) at {bootstrap}; {len(events)} events + {len(preds)} prediction "
            f"logs over ~{stream_s:.0f}s ({rate:,.0f}/s), {restarts} node SIGKILLs, each down {down_s:.0f}s; "
            f"app {settings.app_id}")
        w = Worker(settings, work / "log" / f"{settings.app_id}-{name}.log", "worker").start()
        # the requests' time is the stream's (its clock starts at T0): their prediction logs must not carry the
        # predictions input's event time a year past the stream's own logs, or engagements would not wait for them
        load = _ScoreLoad(w.url, score_rps, users, seed, ts=T0) if serving else None
        if load is not None:
            wait_until(lambda: w.get("/ready", timeout=2) is not None, 120, "worker ready", detail=w.log_tail)
            load.start()
        producer = PacedProducer(bootstrap, settings, events, preds, rate)
        producer.start()
        outages = []
        problems: list[str] = []
        try:
            for k in range(restarts):
                time.sleep(rng.uniform(3.0, 6.0))
                node = rng.randrange(brokers)
                before = w.stats()["processed"]
                ok0 = load.ok if load else 0
                t_kill = time.monotonic()
                kafka.kill_node(node)
                time.sleep(down_s)
                kafka.start_node(node)
                back_s = time.monotonic() - t_kill
                wait_until(lambda: w.stats()["processed"] > before, 120, "the worker to process again after the "
                           "broker came back", detail=lambda: w.log_tail(800))
                resumed_s = time.monotonic() - t_kill
                outages.append({"node": node, "down_and_restart_s": round(back_s, 1),
                                "worker_processing_again_after_s": round(resumed_s, 1),
                                "scored_meanwhile": (load.ok - ok0) if load else None})
                out(f"  outage {k + 1}: node {node} SIGKILLed, back after {back_s:.1f}s; the worker processed "
                    f"again {resumed_s:.1f}s after the kill" + (f"; /score answered {load.ok - ok0} meanwhile"
                                                               if load else ""))
            producer.join(timeout=300)
            if producer.error is not None or producer.is_alive():
                raise ChaosError(f"producer failed: {producer.error!r}")
            produced = sum(sum(v.values()) for v in producer.counts.values())
            if produced != total:
                problems.append(f"producer acked {produced} of {total} records")
            if load is not None:  # its prediction logs are inputs too: stop it before reading them all
                load.stop_flag.set()
                load.join(timeout=30)
            inputs = _read_all_inputs(bootstrap, settings, producer.counts)
            ends = _input_ends(inputs)
            total = sum(sum(v.values()) for v in ends.values())  # the producer's records and /score's logs
            waited = wait_until(lambda: _caught_up(w.stats(), ends, range(settings.partitions)), 240,
                                "the worker to catch up", detail=w.log_tail)
            out(f"  stream done; the worker caught up {waited:.1f}s later")
        finally:
            if load is not None:
                load.stop_flag.set()
                load.join(timeout=30)
            w.stop()
        if w.proc is not None and w.proc.returncode not in (0, -signal.SIGTERM):
            problems.append(f"graceful stop exited with {w.proc.returncode}")
        figures, checked = check_against_recomputation(bootstrap, settings, inputs, total, out)
        problems += checked
        accounted = figures["records_accounted"]
        score: dict[str, Any] = {}
        if load is not None:
            p50, p99 = load.percentiles()
            score = {"score_ok": load.ok, "score_failed": load.failed, "score_p50_ms": p50, "score_p99_ms": p99}
            out(f"  /score through the outages: {load.ok} ok, {load.failed} failed, p50 "
                f"{p50 or float('nan'):.1f} ms, p99 {p99 or float('nan'):.1f} ms")
            if load.failed:
                problems.append(f"/score failed {load.failed} times through the outages: {'; '.join(load.errors)}")
        result = {"scenario": name, "brokers": brokers, "outages": outages, "records_in": total,
                  "events_in": len(events), **figures, **score,
                  "seconds": round(time.monotonic() - t_started, 1), "problems": problems}
        out(f"  records in {total}, accounted for by the stored offsets {accounted}; tables equal the "
            f"recomputation: {result['tables_equal_recomputation']}")
        _verdict(out, name, problems)
        return result
    finally:
        kafka.stop()
