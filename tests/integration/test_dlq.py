"""Bad events never stop a worker: each lands in events-dlq with its reason and original bytes."""

from __future__ import annotations

import json
import time
import pytest

from features.events import MAX_MESSAGE_BYTES, Engagement, Impression
from streams.kafka.producer import EventProducer
from streams.kafka.topics import ensure_topics, topic_specs

from conftest import wait_until

pytestmark = pytest.mark.broker

TS = (int(time.time() * 1000) // 3_600_000 - 1) * 3_600_000
IMP = dict(event_id="e", user_id="u1", item_id="i1", request_id="r1", ts=TS, surface="home", position=3,
           item_type="video", country="US", gender="f", app_type="ios", device_type="phone")
ENG = dict(event_id="g", user_id="u1", item_id="i1", request_id="r1", ts=TS + 5, action="repin")


def j(obj: object) -> bytes:
    return json.dumps(obj).encode()


# (name, topic kind, key, value, expected words in the reason)
BAD = [
    ("garbage bytes", "imp", b"u1", b"\x00\xff\xfe garbage", "not UTF-8"),
    ("truncated JSON", "imp", b"u1", j(IMP)[:-9], "not JSON"),
    ("wrong types", "imp", b"u1", j({**IMP, "position": "three"}), "position"),
    ("unknown action", "eng", b"u1", j({**ENG, "action": "like"}), "action"),
    ("missing fields", "eng", b"u1", j({"event_id": "x", "user_id": "u1"}), "Field required"),
    ("oversize", "imp", b"u1", j({**IMP, "surface": "s" * (MAX_MESSAGE_BYTES + 10)}), "too large"),
    ("empty ids", "eng", b"", j({**ENG, "user_id": ""}), "user_id"),
    ("engagement on impression topic", "imp", b"u1", j({**ENG, "kind": "engagement"}), "expected impression"),
    ("key is not the user", "imp", b"u2", j(IMP), "key"),
    ("null value", "eng", b"u1", None, "empty message"),
]


def test_bad_events_are_dead_lettered_and_good_ones_still_flow(settings_factory, worker_factory,
                                                               kafka_bootstrap) -> None:
    from kafka import KafkaConsumer, TopicPartition

    settings = settings_factory()
    ensure_topics(kafka_bootstrap, topic_specs(settings))
    worker = worker_factory(settings)
    topics = {"imp": settings.topic_impressions, "eng": settings.topic_engagements}
    n_good = 40
    with EventProducer(kafka_bootstrap, settings) as producer:
        for i in range(n_good // 2):  # good before the bad ...
            producer.send(Impression(**{**IMP, "event_id": f"a{i}", "user_id": f"u{i}"}))
        for _name, kind, key, value, _reason in BAD:
            producer.send_raw(topics[kind], value, key)
        for i in range(n_good // 2):  # ... and after it
            producer.send(Engagement(**{**ENG, "event_id": f"b{i}", "user_id": f"u{i}"}))

    wait_until(lambda: worker.metric("feedrank_events_valid_total") >= n_good, 60,
               what=f"{n_good} good events processed", detail=lambda: worker.get("/tables/stats").decode())
    assert worker.metric("feedrank_events_valid_total") == n_good
    assert worker.metric("feedrank_events_dead_lettered_total") == len(BAD)

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, consumer_timeout_ms=10_000)
    consumer.assign([TopicPartition(settings.topic_dlq, p) for p in range(settings.partitions)])
    consumer.seek_to_beginning()
    records = []
    for msg in consumer:
        records.append(msg)
        if len(records) == len(BAD):
            break
    consumer.close()
    assert len(records) == len(BAD)
    by_value = {r.value: dict((k, v.decode()) for k, v in r.headers) for r in records}
    for name, kind, _key, value, reason in BAD:
        headers = by_value.get(value)
        assert headers is not None, f"{name}: original bytes not found in the dead-letter topic"
        assert reason in headers["feedrank.error"], (name, headers["feedrank.error"])
        assert headers["feedrank.source.topic"] == topics[kind]
        assert int(headers["feedrank.source.offset"]) >= 0
    # the worker is alive and still consuming
    assert worker.proc is not None and worker.proc.poll() is None
