"""A real Apache Kafka (streams.kafka.apache_kafka): one node, data across restarts, a 3-node quorum.

Skipped, with the reason, when this machine cannot run it (no Java >= 17, or no cached
jars and no mvn). The first run fetches the jars with Maven (~55 MB, once).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from streams.kafka.apache_kafka import KAFKA_VERSION, LocalKafka, available, probe_brokers

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RECORDS = 1_000
BATCH = 100


@pytest.fixture(scope="module")
def kafka_ok() -> None:
    ok, why = available()
    if not ok:
        pytest.skip(f"Apache Kafka {KAFKA_VERSION} cannot run here: {why}")


@pytest.fixture(scope="module")
def single(kafka_ok: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    with LocalKafka(brokers=1, data_dir=tmp_path_factory.mktemp("kafka1")) as k:
        yield k
    assert k.pids == [None]


def _topic() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def create_topic(bootstrap: str, name: str, partitions: int, rf: int, min_isr: int | None = None) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="feedrank-test")
    try:
        configs = {"min.insync.replicas": str(min_isr)} if min_isr else {}
        admin.create_topics([NewTopic(name, partitions, rf, topic_configs=configs)])
        deadline = time.monotonic() + 30
        while True:
            desc = admin.describe_topics([name])[0]
            parts = desc.get("partitions") or []
            if (
                desc.get("error_code") == 0
                and len(parts) == partitions
                and all(p["leader_id"] >= 0 and len(p["isr_nodes"]) == rf for p in parts)
            ):
                return
            assert time.monotonic() < deadline, f"topic {name} not ready: {desc}"
            time.sleep(0.2)
    finally:
        admin.close()


async def produce_batches(bootstrap: str, topic: str, partitions: int, count: int, start: int = 0) -> None:
    """``count`` records in batches of ``BATCH`` (idempotent, acks=all, lz4), spread over partitions."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type="lz4",
        request_timeout_ms=30_000,
    )
    await producer.start()
    try:
        n = start
        futures = []
        while n < start + count:
            partition = (n // BATCH) % partitions
            batch = producer.create_batch()
            for _ in range(min(BATCH, start + count - n)):
                assert batch.append(key=str(n).encode(), value=f"record-{n}".encode(), timestamp=None) is not None
                n += 1
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(offsets.values())
    finally:
        await consumer.stop()


async def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> set[bytes]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: set[bytes] = set()
    try:
        deadline = time.monotonic() + timeout_s
        while len(seen) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                seen.update(r.value for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return seen


def test_single_node_produce_batches_and_consume(single: LocalKafka) -> None:
    topic = _topic()
    create_topic(single.bootstrap, topic, partitions=2, rf=1)
    asyncio.run(produce_batches(single.bootstrap, topic, 2, RECORDS))
    assert asyncio.run(end_offsets(single.bootstrap, topic, 2)) == RECORDS
    values = asyncio.run(consume_all(single.bootstrap, topic, RECORDS))
    assert values == {f"record-{i}".encode() for i in range(RECORDS)}


def test_other_clients_talk_to_it(single: LocalKafka) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient
    from kafka import KafkaAdminClient

    topic = _topic()
    admin = KafkaAdminClient(bootstrap_servers=single.bootstrap)
    try:
        cluster = admin.describe_cluster()
        assert [b["broker_id"] for b in cluster["brokers"]] == [0]
        assert cluster["cluster_id"] == single.cluster_id
    finally:
        admin.close()
    create_topic(single.bootstrap, topic, partitions=1, rf=1)

    confluent_admin = AdminClient({"bootstrap.servers": single.bootstrap})
    md = confluent_admin.list_topics(timeout=10)
    assert topic in md.topics and list(md.brokers) == [0]
    producer = Producer({"bootstrap.servers": single.bootstrap, "enable.idempotence": True, "compression.type": "lz4"})
    for i in range(10):
        producer.produce(topic, f"c-{i}".encode())
    assert producer.flush(15) == 0
    consumer = Consumer({
        "bootstrap.servers": single.bootstrap,
        "group.id": f"g-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
    })
    try:
        consumer.subscribe([topic])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
        assert sorted(got) == sorted(f"c-{i}".encode() for i in range(10))
    finally:
        consumer.close()


def test_data_survives_stop_and_start(single: LocalKafka) -> None:
    topic = _topic()
    create_topic(single.bootstrap, topic, partitions=2, rf=1)
    asyncio.run(produce_batches(single.bootstrap, topic, 2, 300))
    bootstrap, cluster_id = single.bootstrap, single.cluster_id
    single.stop()
    assert single.pids == [None]
    single.start()
    assert (single.bootstrap, single.cluster_id) == (bootstrap, cluster_id)
    assert asyncio.run(end_offsets(single.bootstrap, topic, 2)) == 300
    asyncio.run(produce_batches(single.bootstrap, topic, 2, 200, start=300))
    values = asyncio.run(consume_all(single.bootstrap, topic, 500))
    assert values == {f"record-{i}".encode() for i in range(500)}


@pytest.mark.long
def test_three_node_cluster_survives_one_node(kafka_ok: None, tmp_path: Path) -> None:
    with LocalKafka(brokers=3, data_dir=tmp_path / "kafka3") as k:
        assert len(k.bootstrap.split(",")) == 3 and all(k.pids)
        for i in range(3):
            host, port = k.node_bootstrap(i).split(":")
            assert probe_brokers(host, int(port)) == [0, 1, 2]
        topic = _topic()
        create_topic(k.bootstrap, topic, partitions=3, rf=3, min_isr=2)
        asyncio.run(produce_batches(k.bootstrap, topic, 3, 300))

        k.kill_node(1)
        assert k.pids[1] is None and k.pids[0] and k.pids[2]
        asyncio.run(produce_batches(k.bootstrap, topic, 3, 300, start=300))
        assert asyncio.run(end_offsets(k.bootstrap, topic, 3)) == 600

        k.start_node(1)
        assert all(k.pids)
        host, port = k.node_bootstrap(1).split(":")
        assert probe_brokers(host, int(port)) == [0, 1, 2]
        values = asyncio.run(consume_all(k.bootstrap, topic, 600))
        assert values == {f"record-{i}".encode() for i in range(600)}
    assert k.pids == [None, None, None]
