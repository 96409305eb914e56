"""The table engine against a real broker: known stream -> exact sequences, rates and examples."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from features.events import Engagement, Impression
from features.predictions import ItemPrediction, PredictionLog
from streams.engine.feedback_view import FeedbackViewService
from streams.engine.engine import TableEngine
from streams.kafka.topics import ensure_topics, topic_specs
from streams.engine.views import StreamViews

from streams_support import (T0, batch_codecs, dump_worker_state, labeled_examples, produce, read_inputs, recompute, scenario,
                             table_settings)

pytestmark = pytest.mark.broker


def imp(eid: str, user: str, item: str, req: str, ts: int, country: str = "US", gender: str = "f") -> Impression:
    return Impression(event_id=eid, user_id=user, item_id=item, request_id=req, ts=ts, surface="home", position=0,
                      item_type="video", country=country, gender=gender, app_type="ios", device_type="phone")


def eng(eid: str, user: str, item: str, req: str, ts: int, action: str) -> Engagement:
    return Engagement(event_id=eid, user_id=user, item_id=item, request_id=req, ts=ts, action=action)


async def run_until_caught_up(settings: Any, bootstrap: str, counts: dict[str, dict[int, int]],
                              timeout_s: float = 90.0) -> dict[str, Any]:
    engine = TableEngine(settings, bootstrap)
    fb = FeedbackViewService(settings, bootstrap)
    await fb.start()
    await engine.start()
    views = StreamViews(engine, fb)
    want = {(t, p): n - 1 for t, per in counts.items() for p, n in per.items()}
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            have = {(t, p): engine.tables[p].offsets.get(t, -1) if p in engine.tables else -1 for t, p in want}
            if all(have.get(k, -1) >= v for k, v in want.items()):
                break
            assert time.monotonic() < deadline, f"engine did not catch up: {have} vs {want}"
            await asyncio.sleep(0.1)
        out: dict[str, Any] = {"user_states": {}, "stats": views.stats()}
        for u in ("u1", "u2"):
            try:
                out["user_states"][u] = views.get_user_state(u, now_ms=T0 + 120_000)
            except LookupError:
                pass
    finally:
        await engine.stop()
    # the last checkpoint shipped its deltas; wait for the view to take them
    shipped = engine.checkpoints
    deadline = time.monotonic() + 30
    last = -1
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        if fb.view.applied == last and shipped:
            break
        last = fb.view.applied
    out["view"] = fb.view
    await fb.stop()
    return out


def test_known_stream_gives_exact_sequences_rates_and_examples(settings_factory, kafka_bootstrap) -> None:
    settings = table_settings(settings_factory)
    ensure_topics(kafka_bootstrap, topic_specs(settings))
    A = 60_000
    events = [
        imp("m1", "u1", "a", "r1", T0),
        imp("m2", "u1", "b", "r1", T0 + 1),
        imp("m3", "u2", "a", "r2", T0 + 2, country="DE", gender="m"),
        eng("g1", "u1", "a", "r1", T0 + 5_000, "click"),
        eng("g2", "u1", "a", "r1", T0 + 6_000, "repin"),
        eng("g2", "u1", "a", "r1", T0 + 6_000, "repin"),  # duplicate delivery
        eng("g4", "u2", "a", "r2", T0 + 3_000, "long_click"),
        eng("g3", "u1", "b", "r1", T0 + A + 2_000, "hide"),  # outside the attribution window
        # flush: close every window on both partitions
        imp("fx1", "u1", "z", "rz", T0 + 20 * A), imp("fx2", "u2", "z", "rz", T0 + 20 * A),
        eng("fy1", "u1", "y", "ry", T0 + 40 * A, "click"), eng("fy2", "u2", "y", "ry", T0 + 40 * A, "click"),
    ]
    preds = [PredictionLog(request_id="r1", user_id="u1", ts=T0 - 50, model_version="m7", calibrator_version="c3",
                           items=[ItemPrediction(item_id="a", raw={"click": 0.25, "repin": 0.1},
                                                 features={"ctr_30m": 0.02})])]
    counts = produce(kafka_bootstrap, settings, events, preds)
    out = asyncio.run(run_until_caught_up(settings, kafka_bootstrap, counts))

    u1 = out["user_states"]["u1"]
    assert [(a.item_id, a.action, a.ts) for a in u1.actions] == [
        ("a", "click", T0 + 5_000), ("a", "repin", T0 + 6_000), ("b", "hide", T0 + A + 2_000),
        ("y", "click", T0 + 40 * A)]
    assert [(a.surface, a.item_type) for a in u1.actions[:3]] == [("home", "video"), ("home", "video"), ("", "unknown")]
    assert u1.counts_3h.impressions == 2 and u1.counts_3h.actions == {"click": 1, "repin": 1, "hide": 1}

    ex = labeled_examples(kafka_bootstrap, settings, expect=5)
    assert set(ex) >= {"m1", "m2", "m3"}
    assert ex["m1"]["labels"] == {"click": 1, "long_click": 0, "closeup": 0, "repin": 1, "hide": 0,
                                  "video_view_10s": 0}
    assert ex["m1"]["prediction"]["raw"] == {"click": 0.25, "repin": 0.1}
    assert ex["m1"]["prediction"]["model_version"] == "m7"
    assert sum(ex["m2"]["labels"].values()) == 0 and ex["m2"]["prediction"] is None
    assert ex["m3"]["labels"]["long_click"] == 1

    snap = out["view"].snapshot(T0 + 10_000)
    assert snap.get("all").impressions == 3
    assert snap.get("all").actions == {"click": 1, "repin": 1, "long_click": 1}
    assert snap.get("c:US").rate("click") == 0.5
    assert snap.get("gc:m:DE").rate("long_click") == 1.0
    stats = out["stats"]["join"]
    assert sum(s["unlabeled_engagements"] for s in stats.values()) >= 1

    # the worker's writes are lz4 batches (Settings.compression), read back above through every client
    for topic in (f"{settings.app_id}-state-changelog", settings.topic_labeled):
        batches = batch_codecs(kafka_bootstrap, topic, settings.partitions)
        assert batches and {c for c, _n in batches} == {"lz4"}, (topic, batches)


def test_tables_equal_a_from_scratch_recomputation(settings_factory, kafka_bootstrap) -> None:
    settings = table_settings(settings_factory, sequence_len=8)
    ensure_topics(kafka_bootstrap, topic_specs(settings))
    events, preds = scenario(n_users=12, n_requests=150, seed=1)
    counts = produce(kafka_bootstrap, settings, events, preds)
    out = asyncio.run(run_until_caught_up(settings, kafka_bootstrap, counts))
    want = recompute(settings, read_inputs(kafka_bootstrap, settings, counts))
    got = dump_worker_state(settings)
    for p in range(settings.partitions):
        for store in want["dumps"][p]:
            assert got[p][store] == want["dumps"][p][store], f"partition {p} store {store} differs"
    ex = labeled_examples(kafka_bootstrap, settings, expect=len(want["examples"]))
    assert ex == want["examples"]
    view = out["view"]
    assert view.snapshot() == want["feedback"].snapshot(view.watermark)


def test_a_poll_hands_out_the_fetched_prediction_logs_first(settings_factory, kafka_bootstrap) -> None:
    """Held engagements wait until the logs of the latest fetch are applied (``_exhausted``): a poll returns
    them before any other input, however many impressions the same fetch brought."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    settings = settings_factory(partitions=4)
    ensure_topics(kafka_bootstrap, topic_specs(settings))
    n_imp, n_logs = 1000, 5

    async def go() -> list[dict[str, int]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
        await producer.start()
        try:
            futs = [await producer.send(settings.topic_impressions, b"x" * 200, key=b"u", partition=p)
                    for p in range(4) for _ in range(n_imp)]
            futs += [await producer.send(settings.topic_predictions, b"log", key=b"u", partition=p)
                     for p in range(4) for _ in range(n_logs)]
            await asyncio.gather(*futs)
        finally:
            await producer.stop()
        engine = TableEngine(settings, kafka_bootstrap)
        engine.consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                                           auto_offset_reset="earliest", max_partition_fetch_bytes=4 << 20)
        tps = [TopicPartition(t, p) for t in (settings.topic_impressions, settings.topic_predictions) for p in range(4)]
        engine.consumer.assign(tps)
        await engine.consumer.start()
        for tp in tps:  # positioned, so that one fetch request asks for all of them
            engine.consumer.seek(tp, 0)
        polls: list[dict[str, int]] = []
        try:
            await asyncio.sleep(1.0)  # that fetch's response is in the consumer's buffer
            deadline = time.monotonic() + 30
            while sum(p.get(settings.topic_predictions, 0) for p in polls) < 4 * n_logs and time.monotonic() < deadline:
                data = await engine._poll(max_records=100)
                if data:
                    polls.append({})
                    for tp, msgs in data.items():
                        polls[-1][tp.topic] = polls[-1].get(tp.topic, 0) + len(msgs)
        finally:
            await engine.consumer.stop()
        return polls

    polls = asyncio.run(go())
    # the first poll with anything in it has every log of the fetch, and at most 100 other records
    assert polls and polls[0].get(settings.topic_predictions) == 4 * n_logs, polls[:3]
    assert polls[0].get(settings.topic_impressions, 0) <= 100
