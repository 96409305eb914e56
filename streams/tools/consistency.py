"""``feedrank consistency``: served features against the replay's, from what the topics hold (issue 28).

Reads the impressions, engagements and prediction logs from the beginning to their current end, replays the
events in event-time order through ``scorer.replay_state.ReplayState`` (with the worker's attribution window
and lateness from the settings) and, at each sampled prediction log (the ones carrying ``inputs``:
``FEEDRANK_FEATURE_LOG_SAMPLE``), compares what was served with what the replay assembles
(``scorer.consistency``). Prints the report; ``--out`` writes it as JSON, ``--fail`` exits 1 when a feature
differs on more than 0.1 % of its values. The same check runs beside the stream when
``FEEDRANK_CONSISTENCY_CHECK`` is on (``streams.engine.consistency_monitor``: ``GET /metrics``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from scorer.consistency import ConsistencyChecker, ConsistencyReport, decode_record, format_report
from streams.kafka.security import kafka_options
from streams.settings import Settings

log = logging.getLogger(__name__)

def read_to_end(bootstrap: str, topic: str, timeout_s: float = 120.0) -> list[bytes]:
    """Every value of ``topic``, from the beginning to the end offsets it had when called."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **kafka_options("kafka-python"))
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        c.seek_to_beginning()
        ends = c.end_offsets(tps)
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while any(c.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not read to its end in {timeout_s:.0f} s")
            for tp, recs in c.poll(timeout_ms=500).items():
                out.extend(r.value for r in recs if r.offset < ends[tp])
        return out
    finally:
        c.close()


def check_topics(bootstrap: str, settings: Settings, in_flight_ms: int = 2_000,
                 progress: Callable[[str], None] = print) -> tuple[ConsistencyReport, dict[str, int]]:
    """The consistency report of everything the topics hold now, and what was read (counts by kind)."""
    checker = ConsistencyChecker(int(settings.attribution_window_s * 1000), int(settings.allowed_lateness_s * 1000),
                                 in_flight_ms)
    counts = {"impression": 0, "engagement": 0, "prediction": 0, "undecodable": 0}
    for topic, kind in ((settings.topic_impressions, "impression"), (settings.topic_engagements, "engagement"),
                        (settings.topic_predictions, "prediction")):
        values = read_to_end(bootstrap, topic)
        for raw in values:
            rec = decode_record(kind, raw)
            if rec is None:
                counts["undecodable"] += 1  # the worker dead-letters it: no table sees it
                continue
            counts[kind] += 1
            checker.add(kind, rec)
        progress(f"consistency: read {len(values):,} records of {topic}")
    checker.drain()
    return checker.report, counts


def _cmd(args: argparse.Namespace) -> int:
    from streams.kafka.broker import resolve_broker

    settings = Settings()
    broker = resolve_broker(log_dir=settings.log_dir)
    try:
        report, counts = check_topics(broker.bootstrap, settings, int(args.in_flight_ms))
    finally:
        broker.stop()
    data = {**report.to_dict(), "read": counts}
    print(format_report(data))
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=1))
        print(f"report: {args.out}")
    diverging = report.diverging()
    if diverging:
        print("features over the 0.1 % goal: " + ", ".join(f"{k} {v:.2%}" for k, v in sorted(diverging.items())))
    return 1 if args.fail and diverging else 0


def register(sub: Any) -> None:
    p = sub.add_parser("consistency", help="served features against the replay's, from the topics (online/offline "
                                           "consistency; needs FEEDRANK_FEATURE_LOG_SAMPLE > 0 on the worker)")
    p.add_argument("--in-flight-ms", type=int, default=2_000,
                   help="sequence actions this recent that the served one lacks count as in flight, not as a mismatch")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    p.add_argument("--fail", action="store_true", help="exit 1 when a feature differs on more than 0.1 %% of values")
    p.set_defaults(func=_cmd)
