"""From-scratch recomputation of the stream tables, and the helpers around it.

``recompute`` is the from-scratch recomputation a worker's tables must equal:
it reads every input record back from the broker and runs the same pure
``PartitionTables`` over an in-memory backend, one partition at a time. Used
by the crash tests (``tests/test_streams_crash.py``, ``tests/test_reliability_*``)
and by ``feedrank chaos``; ``scenario`` generates a stream with in-window,
out-of-window, duplicate and late engagements plus prediction logs.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

from features.events import Engagement, Event, Impression, encode_event
from features.predictions import ItemPrediction, PredictionLog, decode_prediction, encode_prediction
from features.tiles import FeedbackTiles
from streams.settings import Settings
from streams.engine.state import PartitionState, open_backend
from streams.engine.state.partition import META_KEY
from streams.engine.tables import ALL_STORES, PartitionTables
from streams.engine.views import partition_for
from streams.kafka.security import kafka_options

#: the scenario's start: hour-aligned, three hours ago, so that its events (about an hour of event time)
#: are within the event-time rule's bounds of the records' timestamps (``streams.engine.ingest.TimeBounds``)
T0 = (int(time.time() * 1000) // 3_600_000 - 3) * 3_600_000


def table_settings(settings_factory: Any, **kw: Any) -> Settings:
    """Per-test settings with unique names for every topic the tables use; short windows."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = dict(
        topic_predictions=f"predictions-{tag}", topic_labeled=f"labeled-{tag}",
        topic_feedback_deltas=f"fbdeltas-{tag}", attribution_window_s=60.0, allowed_lateness_s=5.0,
        checkpoint_interval_s=0.2,
    )
    values.update(kw)
    return settings_factory(**values)


def scenario(n_users: int = 30, n_requests: int = 300, seed: int = 0,
             bot_impressions: int = 0) -> tuple[list[Event], list[PredictionLog]]:
    """A stream with in-window, out-of-window, duplicate and late engagements, and predictions.

    ``bot_impressions``: that many impressions of one user (``bot``) over the first 2 % of the
    requests' time, every 50th sent again at the end: past ``streams.engine.dedup.SMALL_IDS`` its
    counted ids are kept in sealed chunks.
    """
    rng = random.Random(seed)
    users = [f"u{i}" for i in range(n_users)]
    events: list[Event] = []
    preds: list[PredictionLog] = []
    t = T0
    n = 0
    countries = ["US", "DE", "BR"]
    for r in range(n_requests):
        t += rng.randrange(200, 2000)
        user = rng.choice(users)
        country = countries[int(user[1:]) % 3]
        gender = "fmu"[int(user[1:]) % 3]
        req = f"r{r}"
        items = [f"i{k}" for k in rng.sample(range(500), 3)]
        if rng.random() < 0.8:
            preds.append(PredictionLog(request_id=req, user_id=user, ts=t, model_version="m1",
                                       calibrator_version="c1",
                                       items=[ItemPrediction(item_id=it, position=k, raw={"click": rng.random()},
                                                             features={"f0": float(k)})
                                              for k, it in enumerate(items[:2])]))
        for k, it in enumerate(items):
            n += 1
            events.append(Impression(event_id=f"m{n}", user_id=user, item_id=it, request_id=req, ts=t + 10 + k,
                                     surface="home", position=k, item_type="video" if k == 2 else "organic",
                                     country=country, gender=gender, app_type="ios", device_type="phone"))
            if rng.random() < 0.4:
                n += 1
                delay = rng.choice([rng.randrange(100, 50_000), rng.randrange(55_000, 70_000)])
                e = Engagement(event_id=f"g{n}", user_id=user, item_id=it, request_id=req, ts=t + delay,
                               action=rng.choice(["click", "repin", "hide", "long_click"]), dwell_ms=delay % 997)
                events.append(e)
                if rng.random() < 0.05:
                    events.append(e)  # a duplicate delivery of the same event
    for i in range(bot_impressions):
        e = Impression(event_id=f"b{i}", user_id="bot", item_id=f"i{i % 500}", request_id=f"rb{i}",
                       ts=T0 + 1000 + i * (t - T0) // (50 * bot_impressions), surface="home", position=0,
                       item_type="organic", country="US", gender="u", app_type="web", device_type="desktop")
        events.append(e)
    events.sort(key=lambda e: e.ts)
    if bot_impressions:  # every 50th bot event sent again at the end, long after its chunk was written
        events.extend([e for e in events if e.user_id == "bot"][::50])
    # a few engagements far behind their input's event time: late
    for j in range(5):
        events.append(Engagement(event_id=f"late{j}", user_id=users[j], item_id="i0", request_id="r0",
                                 ts=T0 + 1000 + j, action="click"))
    end = events[-1].ts + 10 * 60_000
    # flush: push both inputs' event time of every partition past every window
    for u in users + (["bot"] if bot_impressions else []):
        events.append(Impression(event_id=f"fi-{u}", user_id=u, item_id="flush", request_id="flush", ts=end,
                                 surface="home", position=0, item_type="organic", country="US", gender="u",
                                 app_type="ios", device_type="phone"))
        events.append(Engagement(event_id=f"fe-{u}", user_id=u, item_id="flush2", request_id="flush",
                                 ts=end + 10 * 60_000, action="click"))
    return events, preds


def produce(bootstrap: str, settings: Settings, events: list[Event], preds: list[PredictionLog]) -> dict[str, dict[int, int]]:
    """Send predictions then events; returns records per topic per partition."""
    from streams.kafka.producer import EventProducer

    counts: dict[str, dict[int, int]] = {}
    with EventProducer(bootstrap, settings) as producer:
        futs = []
        for p in preds:
            futs.append(producer.send_raw(settings.topic_predictions, encode_prediction(p), p.user_id.encode()))
        for e in events:
            futs.append(producer.send(e))
        producer.flush()
        for f in futs:
            md = f.get(timeout=30)
            counts.setdefault(md.topic, {}).setdefault(md.partition, 0)
            counts[md.topic][md.partition] += 1
    return counts


def read_topic(bootstrap: str, topic: str, partitions: int, expect: int, timeout_s: float = 60.0,
               count: Any = len, drain: bool = False) -> list[Any]:
    """Read ``topic`` from the beginning until ``count(records) >= expect`` (or the timeout).

    ``drain``: then keep reading until a poll returns nothing (the rest of the topic).
    """
    import time

    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **kafka_options("kafka-python"))
    c.assign([TopicPartition(topic, p) for p in range(partitions)])
    c.seek_to_beginning()
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while count(out) < expect and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            out.extend(recs)
    while drain and time.monotonic() < deadline:
        got = c.poll(timeout_ms=1000)
        if not got:
            break
        for recs in got.values():
            out.extend(recs)
    c.close()
    return out


def input_kinds(settings: Settings) -> dict[str, str]:
    """The tables' inputs and their kinds, in their order of application: predictions, impressions,
    engagements, each event input followed by its repartition topic."""
    from streams.kafka.topics import repartition_topic

    return {settings.topic_predictions: "prediction", settings.topic_impressions: "impression",
            repartition_topic(settings.app_id, settings.topic_impressions): "impression",
            settings.topic_engagements: "engagement",
            repartition_topic(settings.app_id, settings.topic_engagements): "engagement"}


def read_inputs(bootstrap: str, settings: Settings, counts: dict[str, dict[int, int]]) -> dict[str, list[Any]]:
    """Every record of the inputs: the ``counts`` the producer acked, and what the repartition topics hold."""
    out = {}
    for topic in input_kinds(settings):
        total = sum(counts.get(topic, {}).values())
        out[topic] = read_topic(bootstrap, topic, settings.partitions, total, drain=topic not in counts)
        if topic in counts and len(out[topic]) != total:
            per: dict[int, int] = {}
            for r in out[topic]:
                per[r.partition] = per.get(r.partition, 0) + 1
            raise AssertionError(f"{topic}: read {len(out[topic])} records, the producer acked {total}: "
                                 f"read per partition {dict(sorted(per.items()))}, acked {counts.get(topic)}")
    return out


def recompute(settings: Settings, inputs: dict[str, list[Any]]) -> dict[str, Any]:
    """The tables from scratch, by the engine's rules: every partition's records in order (predictions,
    impressions, engagements, each event input followed by its repartition topic), bad records
    dead-lettered, records of another partition's users forwarded.

    Also returns ``dead_letters`` (reason per (topic, partition, offset)) and ``unforwarded``: records
    sent to another partition than their user's that the repartition topics do not hold (lost).
    """
    from streams.engine.ingest import DeadLetter, TimeBounds, decode_message, key_problem
    from streams.engine.repartition import Router, forward_problem
    from streams.kafka.topics import repartition_topic

    examples: dict[str, dict[str, Any]] = {}
    feedback = FeedbackTiles()
    dumps = {}
    bounds = TimeBounds.of(settings)
    route = Router(settings.partitions)
    kinds = {t: k for t, k in input_kinds(settings).items() if t in inputs}
    rep_topics = {repartition_topic(settings.app_id, t) for t in (settings.topic_impressions,
                                                                  settings.topic_engagements)}
    dead: dict[tuple[str, int, int], str] = {}
    misrouted: set[tuple[str, int]] = set()
    forwarded: set[tuple[str, int]] = set()
    for p in range(settings.partitions):
        state = PartitionState(open_backend(f"memory://{uuid.uuid4().hex}", ".", f"p{p}"), p)
        tables = PartitionTables(state, seq_len=settings.sequence_len,
                                 window_ms=int(settings.attribution_window_s * 1000),
                                 lateness_ms=int(settings.allowed_lateness_s * 1000),
                                 emit=lambda u, ex: examples.__setitem__(ex["example_id"], ex),
                                 retention_ms=int(settings.user_retention_s * 1000))
        for topic, kind in kinds.items():
            recs = sorted((r for r in inputs[topic] if r.partition == p), key=lambda r: r.offset)
            items = []
            for r in recs:
                if kind == "prediction":
                    log_ = decode_prediction(r.value)
                    why = key_problem(r.key, log_.user_id)
                    if why is None:
                        items.append((kind, r.offset, log_, r.value))
                    else:
                        dead[(topic, p, r.offset)] = why
                    continue
                d = decode_message(topic, p, r.offset, r.key, r.value,
                                   Impression if kind == "impression" else Engagement, r.timestamp, bounds)
                if not isinstance(d, DeadLetter):
                    user = d.event.user_id
                    if topic in rep_topics:
                        origin, why = forward_problem(r.headers, route(user), p)
                        if origin is None:
                            d = DeadLetter(topic, p, r.offset, r.key, r.value, why)
                        else:
                            forwarded.add(origin)
                            if not tables.origins.admit(*origin):
                                continue
                    elif route(user) != p:
                        misrouted.add((f"{topic}:{p}", r.offset))
                        continue
                if isinstance(d, DeadLetter):
                    dead[(topic, p, r.offset)] = d.reason
                    continue
                items.append((kind, r.offset, d.event, r.value))
            tables.process(topic, items)
            if recs:
                tables.offsets[topic] = recs[-1].offset
        for seg, tiles in tables.feedback.tiles.items():
            feedback.merge(seg, tiles)
        tables.checkpoint_local()
        dumps[p] = dump_state(state)
    return {"dumps": dumps, "examples": examples, "feedback": feedback, "dead_letters": dead,
            "unforwarded": sorted(misrouted - forwarded)}


def dump_state(state: PartitionState) -> dict[str, Any]:
    """Every store's content plus the comparable part of the metadata."""
    out: dict[str, Any] = {s.name: dict(state.items(s)) for s in ALL_STORES}
    from streams.engine.state.recovery import BOOKKEEPING_KEYS

    meta = state.meta
    out["meta"] = {"offsets": meta.offsets,
                   "extra": {k: v for k, v in meta.extra.items() if k not in BOOKKEEPING_KEYS}}
    return out


def dump_worker_state(settings: Settings) -> dict[int, dict[str, Any]]:
    """Open the worker's RocksDB partitions (worker stopped) and dump them."""
    base = Path(settings.data_dir) / "tables" / settings.app_id
    out = {}
    for p in range(settings.partitions):
        path = base / f"p{p}.rocksdb"
        state = PartitionState(open_backend("rocksdb://", base, f"p{p}"), p)
        try:
            out[p] = dump_state(state)
        finally:
            state.close()
        assert path.exists()
    return out


def labeled_records(bootstrap: str, settings: Settings, expect_ids: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """Every record of the labeled topic, read until ``expect_ids`` distinct example ids are seen.

    Returns ``raw`` (records read), ``examples`` (distinct, by example id),
    ``re_emits`` (records beyond the first per id: the at-least-once replays
    after a crash) and ``conflicts`` (ids whose copies differ: must be 0).
    """
    recs = read_topic(bootstrap, settings.topic_labeled, settings.partitions, expect_ids, timeout_s=timeout_s,
                      count=lambda rs: len({dict(r.headers)["feedrank.example_id"] for r in rs}), drain=True)
    out: dict[str, dict[str, Any]] = {}
    conflicts: list[str] = []
    for r in recs:
        ex = json.loads(r.value)
        prev = out.setdefault(ex["example_id"], ex)
        if prev != ex:
            conflicts.append(ex["example_id"])
    return {"raw": len(recs), "examples": out, "re_emits": len(recs) - len(out), "conflicts": conflicts}


def labeled_examples(bootstrap: str, settings: Settings, expect: int) -> dict[str, dict[str, Any]]:
    """Distinct labeled examples by id; duplicates (only after a crash) must be identical."""
    recs = read_topic(bootstrap, settings.topic_labeled, settings.partitions, expect, timeout_s=60,
                      count=lambda rs: len({dict(r.headers)["feedrank.example_id"] for r in rs}))
    out: dict[str, dict[str, Any]] = {}
    for r in recs:
        ex = json.loads(r.value)
        prev = out.setdefault(ex["example_id"], ex)
        assert prev == ex, f"two different examples for impression {ex['example_id']}"
    return out


__all__ = ["META_KEY", "T0", "dump_state", "dump_worker_state", "labeled_examples", "labeled_records", "read_topic", "partition_for", "produce", "read_inputs",
           "recompute", "scenario", "table_settings", "encode_event"]
