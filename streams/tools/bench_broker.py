"""``feedrank bench broker``: the broker's produce and consume rates, one record per batch vs batched.

Numbers for the README: the price of the embedded broker's end-offset
workaround, measured with aiokafka (Faust's client) on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from streams.kafka.broker import resolve_broker
from streams.kafka.topics import TopicSpec, ensure_topics
from streams.kafka.security import kafka_options

VALUE = b'{"event_id":"e123456","user_id":"u1234","item_id":"i98765","request_id":"r1","ts":1764000000000,' \
        b'"surface":"home","position":3,"item_type":"organic","country":"US","gender":"f","app_type":"ios",' \
        b'"device_type":"phone"}'


async def _produce(bootstrap: str, topic: str, n: int, batched: bool) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5 if batched else 0,
                                max_batch_size=16384 if batched else 1, **kafka_options("aiokafka"))
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(topic, VALUE, key=f"u{i % 1000}".encode()) for i in range(n)]
        await asyncio.gather(*futures)
        return n / (time.perf_counter() - t0)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=16 << 20,
                                **kafka_options("aiokafka"))
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        got = 0
        t0 = time.perf_counter()
        while got < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not batch:
                break
            got += sum(len(v) for v in batch.values())
        return got / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


def run(n: int) -> dict[str, float]:
    broker = resolve_broker()
    try:
        out: dict[str, float] = {}
        for batched in (False, True):
            topic = f"bench-{uuid.uuid4().hex[:6]}"
            ensure_topics(broker.bootstrap, [TopicSpec(topic, 1)])
            label = "batched (16 KB)" if batched else "one record per batch"
            out[f"produce {label}"] = asyncio.run(_produce(broker.bootstrap, topic, n, batched))
            out[f"consume ({label} topic)"] = asyncio.run(_consume(broker.bootstrap, topic, n))
        return out
    finally:
        broker.stop()


def _cmd(args: argparse.Namespace) -> int:
    n = int(args.records)
    print(f"broker bench: {n:,} records of {len(VALUE)} bytes per run, aiokafka, 1 partition")
    for name, rate in run(n).items():
        print(f"  {name:<40} {rate:>10,.0f} records/s")
    return 0


def register_bench(bench) -> None:
    p = bench.add_parser("broker", help="produce/consume rates of the broker, one record per batch vs batched")
    p.add_argument("--records", default=50_000, help="records per run")
    p.set_defaults(func=_cmd)
