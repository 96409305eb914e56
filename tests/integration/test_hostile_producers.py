"""Careless and hostile producers, through a stock librdkafka producer (confluent-kafka, default partitioner).

One run produces, beside good traffic for 24 users, each class of record that used to lose, hide or
corrupt state: events from the year 2099 and from before the retention horizon, null, empty and
wrong keys, an engagement re-sent after it left the 256-action window, an impression re-sent. librdkafka's
default partitioner (CRC32) puts most users' records on another partition than the murmur2 one feedrank
reads them from. Then: every bad record is dead-lettered with its reason and original bytes, every user's
sequence and counters hold exactly their distinct good events, no watermark is past the wall clock, the
misrouted records were forwarded once, and every table equals the from-scratch recomputation.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from streams.engine.repartition import Router
from streams.kafka.topics import ensure_topics, topic_specs
from streams.tools.chaos.fuzz import produce_librdkafka

from conftest import wait_until
from streams_support import dump_worker_state, read_inputs, recompute, table_settings

pytestmark = pytest.mark.broker

NOW = int(time.time() * 1000)
T0 = NOW - 40 * 60_000
HEAVY = "heavy-user"
BASE = dict(surface="home", item_type="video", country="US", gender="f", app_type="ios", device_type="phone")


def _imp(eid: str, user: str, ts: int, pos: int = 0) -> dict:
    return dict(kind="impression", event_id=eid, user_id=user, item_id=f"i{pos}", request_id=f"r-{eid}",
                ts=ts, position=pos, **BASE)


def _eng(eid: str, user: str, ts: int, action: str = "click") -> dict:
    return dict(kind="engagement", event_id=eid, user_id=user, item_id="i0", request_id=f"r-{eid}",
                ts=ts, action=action)


def _good_traffic() -> tuple[list[tuple[str, dict]], dict[str, Counter]]:
    """(topic kind, event) in send order, and each user's distinct clicks and impressions."""
    sent: list[tuple[str, dict]] = []
    want: dict[str, Counter] = {}
    for u in range(24):
        user = f"user-{u}"
        for k in range(6):
            ts = T0 + (u * 6 + k) * 1000
            sent.append(("imp", _imp(f"{user}-imp-{k}", user, ts, k)))
            sent.append(("eng", _eng(f"{user}-eng-{k}", user, ts + 500)))
        want[user] = Counter(impressions=6, click=6)
    for k in range(300):  # more than the 256-action window
        sent.append(("eng", _eng(f"{HEAVY}-eng-{k}", HEAVY, T0 + k * 1000)))
    want[HEAVY] = Counter(click=300)
    return sent, want


def _dlq_headers(bootstrap: str, settings, expect: int) -> dict[bytes, dict[str, str]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=10_000)
    consumer.assign([TopicPartition(settings.topic_dlq, p) for p in range(settings.partitions)])
    consumer.seek_to_beginning()
    out = {}
    for msg in consumer:
        out[msg.value] = {k: v.decode() for k, v in msg.headers}
        if len(out) == expect:
            break
    consumer.close()
    return out


def test_librdkafka_producer_with_hostile_records(settings_factory, worker_factory, kafka_bootstrap) -> None:
    settings = table_settings(settings_factory, checkpoint_interval_s=0.2)
    ensure_topics(kafka_bootstrap, topic_specs(settings))
    topics = {"imp": settings.topic_impressions, "eng": settings.topic_engagements}
    good, want = _good_traffic()
    first_heavy_click = next(e for k, e in good if e["user_id"] == HEAVY)
    resent_impression = good[0][1]
    j = lambda e: json.dumps(e).encode()  # noqa: E731
    # (name, topic kind, key, value, words in the reason)
    bad = [
        ("engagement from 2099", "eng", b"user-1", j(_eng("x1", "user-1", 4_102_358_400_000)), "ts_future"),
        ("impression from 2099", "imp", b"user-2", j(_imp("x2", "user-2", 4_102_358_400_000)), "ts_future"),
        ("before the retention horizon", "imp", b"user-3", j(_imp("x3", "user-3", NOW - 9 * 86_400_000)), "ts_too_old"),
        ("null key", "imp", None, j(_imp("x4", "user-4", T0)), "key_missing"),
        ("empty key", "eng", b"", j(_eng("x5", "user-5", T0)), "key_missing"),
        ("key of another user", "eng", b"user-7", j(_eng("x6", "user-6", T0)), "key"),
    ]

    worker = worker_factory(settings)
    records = [(topics[kind], e["user_id"].encode(), j(e)) for kind, e in good]
    records.append((topics["eng"], HEAVY.encode(), j(first_heavy_click)))  # a re-send
    records.append((topics["imp"], resent_impression["user_id"].encode(), j(resent_impression)))
    records += [(topics[kind], key, value) for _name, kind, key, value, _why in bad]
    placed = produce_librdkafka(kafka_bootstrap, records)  # librdkafka's defaults: CRC32 partitioner
    delivered = Counter((topic, p) for (topic, _k, _v), (_key, p) in zip(records, placed))
    route = Router(settings.partitions)
    bad_values = {v for _n, _t, _k, v, _w in bad}
    misrouted = sum(1 for (_t, key, value), (_key, p) in zip(records, placed)
                    if value not in bad_values and route(key.decode()) != p)
    users = sorted(want)

    def user(u: str) -> dict:
        return json.loads(worker.get(f"/users/{u}/sequence"))

    def complete() -> bool:
        return all(user(u)["counts_1d"]["actions"].get("click", 0) == want[u]["click"] for u in users)

    wait_until(complete, 90, what="every user's clicks applied",
               detail=lambda: worker.get("/tables/stats").decode())
    dlq = _dlq_headers(kafka_bootstrap, settings, expect=len(bad))
    time.sleep(1.0)  # let the re-sends (behind the good records) be read too
    stats = json.loads(worker.get("/tables/stats"))

    # 1. every bad record dead-lettered, with its reason and its original bytes
    assert len(dlq) == len(bad), sorted(h["feedrank.error"] for h in dlq.values())
    for name, kind, _key, value, why in bad:
        assert value in dlq, f"{name}: original bytes not in the dead-letter topic"
        assert why in dlq[value]["feedrank.error"], (name, dlq[value]["feedrank.error"])
        assert dlq[value]["feedrank.source.topic"] == topics[kind]
    # 2. every user's state is exactly their distinct good events, on the partition feedrank reads
    for u in users:
        got = user(u)
        assert got["partition"] == route(u)
        assert got["counts_1d"]["actions"].get("click", 0) == want[u]["click"], u
        assert got["counts_1d"]["impressions"] == want[u]["impressions"], u
        assert got["length"] == min(want[u]["click"], settings.sequence_len), u  # actions only
    # 3. no watermark moved past the producer's clock
    for p, per in stats["join"].items():
        for wm in ("wm_impressions", "wm_engagements"):
            assert per[wm] <= time.time() * 1000 + settings.max_event_future_s * 1000, (p, wm, per[wm])
    # 4. librdkafka's partitioner misrouted many users' records; each was forwarded once
    assert misrouted > len(good) // 4, misrouted
    assert stats["forwarded"] == misrouted
    assert worker.metric("feedrank_events_repartitioned_total") == stats["forwarded"]
    assert worker.proc is not None and worker.proc.poll() is None
    worker.stop()

    # 5. every table equals the recomputation from the input topics
    counts: dict[str, dict[int, int]] = {}
    for (t, p), n in delivered.items():
        counts.setdefault(t, {})[p] = n
    recomputed = recompute(settings, read_inputs(kafka_bootstrap, settings, counts))
    assert recomputed["unforwarded"] == []
    assert len(recomputed["dead_letters"]) == len(bad)
    got_state = dump_worker_state(settings)
    for p in range(settings.partitions):
        for store, content in recomputed["dumps"][p].items():
            if store != "meta":
                assert got_state[p][store] == content, f"partition {p} store {store} differs from the recomputation"
