"""``streams.tools.loadgen``: the replayed events are valid, new and still join (pure logic); librdkafka partitions keys as the worker reads them (broker)."""

from __future__ import annotations

import uuid

import pytest

from aiokafka.partitioner import murmur2
from features.events import Engagement, Impression, decode_event, encode_event
from streams.tools.loadgen import EventPool, LoadError
from features.synthetic import synthetic_events

N = 600


@pytest.fixture(scope="module")
def pool_and_events():
    source = synthetic_events(50, seed=11, rate=300.0, start_ms=1_796_000_000_000)
    originals = [next(source) for _ in range(N)]
    pool = EventPool(iter(originals), N, partitions=4)
    return pool, originals


def test_first_cycle_is_the_world_itself(pool_and_events) -> None:
    pool, originals = pool_and_events
    assert len(pool) == N
    for i, ev in enumerate(originals):
        idx, key, p, value = pool.record(i)
        assert value == encode_event(ev)
        assert idx == (0 if isinstance(ev, Impression) else 1)
        assert key == ev.user_id.encode()
        assert p == (murmur2(key) & 0x7FFFFFFF) % 4


def test_later_cycles_are_new_events_later_in_event_time(pool_and_events) -> None:
    pool, originals = pool_and_events
    seen_ids = {ev.event_id for ev in originals}
    span = max(ev.ts for ev in originals) - min(ev.ts for ev in originals) + 1
    assert pool.span_ms == span
    last_cycle_end = max(ev.ts for ev in originals)
    for k in (1, 2, 7):
        cycle = [decode_event(pool.record(k * N + j)[3]) for j in range(N)]
        for ev, orig in zip(cycle, originals):
            assert type(ev) is type(orig)
            assert ev.ts == orig.ts + k * span
            assert ev.request_id == f"{orig.request_id}.{k}"
            assert ev.event_id.startswith(ev.request_id) and ev.event_id != orig.event_id
            # everything but the ids and the time is the world's event
            assert ev.model_dump(exclude={"event_id", "request_id", "ts"}) == \
                orig.model_dump(exclude={"event_id", "request_id", "ts"})
        ids = {ev.event_id for ev in cycle}
        assert len(ids) == N and not ids & seen_ids, "a replayed event reuses an event id"
        seen_ids |= ids
        assert min(ev.ts for ev in cycle) > last_cycle_end - span  # event time moves on cycle by cycle
        last_cycle_end = max(ev.ts for ev in cycle)


def test_replayed_engagements_still_join_their_impressions(pool_and_events) -> None:
    pool, originals = pool_and_events
    cycle = [decode_event(pool.record(3 * N + j)[3]) for j in range(N)]
    shown = {(ev.user_id, ev.item_id, ev.request_id) for ev in cycle if isinstance(ev, Impression)}
    engagements = [ev for ev in cycle if isinstance(ev, Engagement)]
    assert engagements, "the sample has no engagements"
    joined = sum((ev.user_id, ev.item_id, ev.request_id) in shown for ev in engagements)
    # the world's engagements trail their impressions inside the pool, except near the pool's start
    assert joined >= 0.9 * len(engagements)


def test_paced_event_time_follows_the_send_schedule(pool_and_events) -> None:
    """Paced, record i's event time is (about) when it is due to be sent, and never goes back."""
    _pool, originals = pool_and_events
    pool = EventPool(iter(originals), N, partitions=4)
    start, rate = 1_800_000_000_000, 150.0  # N records a cycle: 4 s of sending at 150/s
    pool.pace(start, rate)
    stamps = [decode_event(pool.record(i)[3]) for i in range(4 * N)]
    due = [start + i / rate * 1000 for i in range(4 * N)]
    # the world's own spacing is kept (scaled), so an event is early or late by its place in the world
    # against an even spread: bounded by a fraction of a cycle, not growing cycle after cycle
    drift = [ev.ts - d for ev, d in zip(stamps, due)]
    cycle_ms = N / rate * 1000
    assert max(abs(x) for x in drift) < 0.5 * cycle_ms
    assert abs(sum(drift[-N:]) / N - sum(drift[:N]) / N) < 1.0  # the same in the fourth cycle as in the first
    firsts = [stamps[k * N].ts for k in range(4)]
    assert [b - a for a, b in zip(firsts, firsts[1:])] == pytest.approx([cycle_ms] * 3, abs=1)
    for ev, orig, k in zip(stamps, originals * 4, [i // N for i in range(4 * N)]):
        assert ev.request_id == (orig.request_id if k == 0 else f"{orig.request_id}.{k}")
    # each cycle's order in event time is the world's order
    for k in range(4):
        ts = [ev.ts for ev in stamps[k * N:(k + 1) * N]]
        assert ts == sorted(ts)
    assert stamps[N].ts >= stamps[N - 1].ts  # and the next cycle starts after the last one ended


def test_an_empty_world_is_an_error() -> None:
    with pytest.raises(LoadError, match="no events"):
        EventPool(iter(()), 10, partitions=4)


@pytest.mark.broker
def test_librdkafka_sends_each_key_to_the_partition_the_worker_reads_it_from(kafka_bootstrap) -> None:
    from confluent_kafka import Producer

    from streams.tools.chaos.load import _end_offsets
    from streams.tools.loadgen import librdkafka_config
    from streams.kafka.topics import TopicSpec, ensure_topics
    from streams.engine.views import partition_for

    topic = f"loadgen-partitions-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 16)])
    landed: dict[str, int] = {}
    errors: list[str] = []

    def done(err, msg) -> None:  # noqa: ANN001
        if err is not None:
            errors.append(str(err))
        else:
            landed[msg.key().decode()] = msg.partition()

    for single in (True, False):
        producer = Producer(librdkafka_config(kafka_bootstrap, single))
        for k in range(200):
            producer.produce(topic, value=b"{}", key=f"u{k}-{single}".encode(), on_delivery=done)
        assert producer.flush(30) == 0
        if single:  # one record per batch: even the embedded broker's end offsets count every record
            sent = {p: n for p in range(16) if (n := list(landed.values()).count(p))}
            assert _end_offsets(kafka_bootstrap, [topic], 16) == {topic: sent}
    assert not errors, errors
    assert len(landed) == 400
    assert {key: partition_for(key, 16) for key in landed} == landed
    assert len(set(landed.values())) == 16


@pytest.mark.broker
def test_librdkafka_batches_carry_the_configured_codec_and_read_back_intact(kafka_bootstrap) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer
    from confluent_kafka import Producer

    from streams.tools.loadgen import librdkafka_config
    from streams.kafka.topics import TopicSpec, ensure_topics
    from streams_support import batch_codecs

    values = [f'{{"event_id": "e{k}", "user_id": "u{k % 7}", "action": "click"}}'.encode() for k in range(300)]
    for codec in ("lz4", "none"):
        topic = f"loadgen-codec-{codec}-{uuid.uuid4().hex[:8]}"
        ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
        producer = Producer(librdkafka_config(kafka_bootstrap, False, linger_ms=50, compression=codec))
        for v in values:
            producer.produce(topic, value=v)
        assert producer.flush(30) == 0
        batches = batch_codecs(kafka_bootstrap, topic, 1)
        assert {c for c, _n in batches} == {codec}, batches
        assert sum(n for _c, n in batches) == len(values)  # the walk saw every batch
        assert len(batches) < len(values) // 10  # batched (lingered), not one record each

        async def read_back() -> list[bytes]:
            c = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
            await c.start()
            got: list[bytes] = []
            try:
                while len(got) < len(values):
                    got += [m.value for ms in (await c.getmany(timeout_ms=2000)).values() for m in ms]
            finally:
                await c.stop()
            return got

        assert asyncio.run(asyncio.wait_for(read_back(), 30)) == values
