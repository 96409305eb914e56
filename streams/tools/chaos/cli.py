"""``feedrank chaos``: crashes, rebalances, a broker outage, bad input and sustained load.

The command: runs the chosen scenarios against one broker, prints a summary and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from streams.tools.chaos.broker_restart import run_broker_restart
from streams.tools.chaos.common import machine_load
from streams.tools.chaos.crash import run_crash
from streams.tools.chaos.fuzz import run_fuzz
from streams.tools.chaos.load import (EMBEDDED_PARTITION_BATCHES, LOAD_PARTITIONS, LOAD_SCENARIO_LINGER_MS,
                                      run_load)
from streams.tools.chaos.outage import run_outage
from streams.tools.chaos.rebalance import run_rebalance

SCENARIOS = ("crash", "rebalance", "fuzz", "outage", "load", "broker-restart", "broker-failover")
#: scenarios that start a broker of their own (the outage one an embedded broker, the others Apache Kafka)
OWN_BROKER = {"outage", "broker-restart", "broker-failover"}


def run(args: argparse.Namespace) -> int:
    """Run the chosen scenarios and print a summary; exit status 1 when any property failed."""
    from streams.kafka.broker import resolve_broker

    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    work = Path(args.work_dir or (Path("var/chaos") / time.strftime("%Y%m%dT%H%M%S"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir, cal_dir = Path(args.model_dir).resolve(), Path(args.calibrator_dir).resolve()
    serving = sorted(set(names) & {"rebalance", "fuzz", "load"})
    if serving and not (model_dir / "latest").exists():
        print(f"scenarios {', '.join(serving)} serve /score and need a model: none under {model_dir}. Run "
              f"`make demo` once (it trains and caches one there), or `feedrank train --out {model_dir}`, or pass "
              f"--model-dir", file=sys.stderr)
        return 2
    print(f"feedrank chaos: {', '.join(names)}; work dir {work}; uptime load {machine_load()}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    broker = None
    t0 = time.monotonic()

    def _terminate(signum: int, _frame: Any) -> None:  # SIGTERM stops like Ctrl-C: workers, then the broker
        raise KeyboardInterrupt(f"signal {signum}")

    main_thread = threading.current_thread() is threading.main_thread()  # (signal handlers live there only)
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        if set(names) - OWN_BROKER:
            broker = resolve_broker(log_dir=work / "log")
            print(f"broker: {broker.bootstrap} ({broker.kind})", flush=True)
        for name in names:
            t = time.monotonic()
            try:
                if name == "crash":
                    results[name] = run_crash(broker.bootstrap, work, kills=args.kills, seed=args.seed)
                elif name == "rebalance":
                    results[name] = run_rebalance(broker.bootstrap, work, model_dir, cal_dir, seed=args.seed + 1)
                elif name == "fuzz":
                    results[name] = run_fuzz(broker.bootstrap, work, model_dir, cal_dir, seed=args.seed + 2)
                elif name in ("broker-restart", "broker-failover"):
                    results[name] = run_broker_restart(work, brokers=1 if name == "broker-restart" else 3,
                                                       model_dir=model_dir, calibrator_dir=cal_dir,
                                                       seed=args.seed + 4)
                elif name == "outage":
                    results[name] = run_outage(work, outage_s=args.outage_s)
                elif name == "load":
                    results[name] = run_load(broker.bootstrap, work, model_dir, cal_dir, minutes=args.minutes,
                                             max_rate=args.max_rate, calibrate_s=args.calibrate_s,
                                             clients=args.load_clients, partitions=args.load_partitions,
                                             seed=args.seed + 3, batches=args.load_batches == "on",
                                             linger_ms=args.load_linger_ms, broker_pid=broker.pid,
                                             broker_data=broker.data_dir,
                                             event_retention_s=args.event_retention_s or None)
            except Exception as exc:  # one scenario failing must not stop the others
                results[name] = {"scenario": name, "problems": [f"aborted: {type(exc).__name__}: {exc}"]}
                print(f"  [{name}] ABORTED: {str(exc)[:2000]}", flush=True)
            results[name]["seconds"] = round(time.monotonic() - t, 1)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if broker is not None:
            broker.stop()
    print(f"\nsummary ({time.monotonic() - t0:.0f}s; load {machine_load()}):")
    r = results
    if "crash" in r and "kills_survived" in r["crash"]:
        c = r["crash"]
        print(f"  kills survived {c['kills_survived']}; records in {c['records_in']:,}, accounted for "
              f"{c['records_accounted']:,}; labeled duplicates after dedup {c['labeled_duplicates_after_dedup']} "
              f"(raw re-emits {c['labeled_raw_re_emits']}), missing {c['labeled_missing']}")
    if "rebalance" in r and "users" in r["rebalance"]:
        b = r["rebalance"]
        print(f"  rebalance: takeover {b['takeover_s']}s, {b['served_after_takeover']}/{b['users']} users served by "
              f"the survivor, {b['served_after_return']}/{b['users']} after the return; labeled duplicates "
              f"{b['labeled_duplicates_after_dedup']}, missing {b['labeled_missing']}")
    if "fuzz" in r and "bad_events" in r["fuzz"]:
        f = r["fuzz"]
        print(f"  bad events {f['bad_events']}, dead-lettered {f['dead_lettered']}; good {f['good_events']}, processed "
              f"{f['valid_counted']}; bad requests {f['bad_requests']}, answered 4xx {f['bad_requests_4xx']}; good "
              f"requests {f['good_requests_200']}/{f['good_requests']} answered 200")
    if "outage" in r and "producer_sent" in r["outage"]:
        o = r["outage"]
        print(f"  outage {o['outage_s']:.0f}s: producer {o['producer_ok']} acked / {o['producer_failed_loudly']} failed "
              f"loudly / {o['producer_unresolved']} unresolved ({o.get('producer_after_restart_ok')}/"
              f"{o.get('producer_after_restart_sent')} sent after the restart delivered); broker reset detected "
              f"{o.get('reset_detected_s')}s after the restart; running worker processed the new events: "
              f"{o.get('running_worker_processed_new')} ({o.get('running_worker_impressions')} of "
              f"{o.get('impressions_expected')} impressions in its tables); SIGTERM -> exit {o.get('stop_code')} after "
              f"{o.get('stop_s')}s; restarted worker: {o.get('restarted_impressions')}, fresh worker from the "
              f"changelog: {o.get('fresh_impressions')} impressions")
    if "load" in r and "events_acked" in r["load"]:
        ld = r["load"]
        print(f"  load {ld['minutes']:g} min at {ld['rate']:,.0f}/s (80% of {ld['max_rate']:,.0f}/s, "
              f"{ld['max_rate_basis']}): {ld['events_acked']:,} events in, {ld['accounted']:,} accounted; "
              f"/score {ld['score_ok']:,} ok / {ld['score_failed']} failed; peak RSS {ld['peak_rss_mb']:.0f} MiB")
    for n in ("broker-restart", "broker-failover"):
        if n in r and "outages" in r[n]:
            k = r[n]
            print(f"  {n} ({k['brokers']} node(s)): {len(k['outages'])} node SIGKILLs; records in "
                  f"{k['records_in']:,}, accounted {k['records_accounted']:,}; labeled duplicates after dedup "
                  f"{k['labeled_duplicates_after_dedup']}, missing {k['labeled_missing']}; tables equal the "
                  f"recomputation: {k['tables_equal_recomputation']}"
                  + (f"; /score p99 {k['score_p99_ms']:.1f} ms, {k['score_failed']} failed" if k.get("score_p99_ms")
                     else ""))
    failed = {n: x["problems"] for n, x in results.items() if x.get("problems")}
    for n, probs in failed.items():
        print(f"  {n}: {len(probs)} problem(s): " + "; ".join(p[:300] for p in probs[:5]))
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"  results: {work / 'results.json'}")
    return 1 if failed else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--kills", type=int, default=3, help="SIGKILLs in the crash scenario")
    p.add_argument("--event-retention-s", type=float, default=600.0,
                   help="load scenario: retention of the event and prediction topics (0: the broker's default), so "
                        "the broker's disk stays bounded over a long run (real Kafka deletes old segments)")
    p.add_argument("--outage-s", type=float, default=30.0, help="seconds the broker stays down")
    p.add_argument("--minutes", type=float, default=10.0, help="duration of the sustained-load scenario")
    p.add_argument("--max-rate", type=float, default=None,
                   help="maximum sustained event rate (events/s); load runs at 80%% of it. Default: measure it "
                        "first on this box (producer + worker + broker + /score together, --calibrate-s)")
    p.add_argument("--calibrate-s", type=float, default=60.0,
                   help="seconds of unpaced production that measure the maximum rate (when --max-rate is unset), "
                        "after a warm-up of the attribution window + lateness + 30 s")
    p.add_argument("--load-partitions", type=int, default=LOAD_PARTITIONS,
                   help="partitions of the load scenario's topics (the embedded broker's fetches collapse beyond "
                        f"~{EMBEDDED_PARTITION_BATCHES:,} one-record batches in a partition)")
    p.add_argument("--load-batches", choices=("on", "off"), default="on",
                   help=f"on: the load producer batches records (linger {LOAD_SCENARIO_LINGER_MS} ms) as feed "
                        "servers do "
                        "against real Kafka; the checks use each partition's highest acknowledged offset, not the "
                        "embedded broker's end offsets (wrong for multi-record batches). off: one record per "
                        "batch, which costs the embedded broker ~150 us of CPU per event")
    p.add_argument("--load-linger-ms", type=int, default=LOAD_SCENARIO_LINGER_MS,
                   help="how long the load producer lets a partition's batch fill (with --load-batches on). The "
                        "embedded broker lists every batch a partition holds on each fetch of it, so its CPU grows "
                        "with the number of batches stored, not the records")
    p.add_argument("--load-clients", type=int, default=1,
                   help="aiokafka producers in the load producer process (each "
                        "topic-partition written by one of them)")
    p.add_argument("--seed", type=int, default=0, help="seed of streams, kill points and fuzz inputs")
    p.add_argument("--model-dir", default=os.environ.get("FEEDRANK_MODEL_DIR", "var/models"),
                   help="model artifacts root for the workers that serve /score")
    p.add_argument("--calibrator-dir", default=os.environ.get("FEEDRANK_CALIBRATOR_DIR", "var/calibrators"),
                   help="calibrator store for those workers")
    p.add_argument("--work-dir", default=None, help="state, logs and results.json (default var/chaos/<time>)")
    p.set_defaults(func=run)


def register(subparsers: Any) -> None:
    """Add ``feedrank chaos`` (called by ``streams.cli``)."""
    p = subparsers.add_parser("chaos", help="crash, rebalance, broker-outage, fuzz and sustained-load scenarios")
    add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="feedrank chaos", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    return run(args)
