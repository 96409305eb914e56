"""The embedded broker's end-offset defect is handled where it belongs.

After N records the end offsets equal N, both for the project's kafka-python
producer and for Faust's own producer (a table changelog), and a Faust table
restored from its changelog alone holds every update.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from features.events import Impression
from streams.kafka.procutil import free_port
from streams.kafka.embedded import is_embedded_broker
from streams.kafka.producer import EventProducer, one_record_per_batch
from streams.settings import Settings
from streams.kafka.topics import TopicSpec, ensure_topics

from conftest import ROOT, wait_until

pytestmark = pytest.mark.broker


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def test_end_offsets_equal_records_written(each_broker: str) -> None:
    """On real Kafka the producer batches; on the embedded broker it sends one record per batch: either way the
    end offsets are exact (the embedded broker's are not for multi-record batches, docs/brokers.md)."""
    kafka_bootstrap = each_broker
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, topic_impressions=f"imp-{uuid.uuid4().hex[:6]}")
    ensure_topics(kafka_bootstrap, [TopicSpec(settings.topic_impressions, 2)])
    n = 500
    with EventProducer(kafka_bootstrap, settings) as producer:
        assert producer.single_record_batches is is_embedded_broker(kafka_bootstrap)
        for i in range(n):
            producer.send(Impression(event_id=f"e{i}", user_id=f"u{i % 37}", item_id="i", request_id="r",
                                     ts=int(time.time() * 1000) + i, surface="home", position=0, item_type="organic",
                                     country="US", gender="u", app_type="web", device_type="desktop"))
    offsets = end_offsets(kafka_bootstrap, settings.topic_impressions)
    assert sum(offsets.values()) == n, offsets


@pytest.mark.embedded
def test_auto_mode_detects_the_embedded_broker(embedded_bootstrap: str) -> None:
    kafka_bootstrap = embedded_bootstrap
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    assert one_record_per_batch(settings, kafka_bootstrap) is True
    assert one_record_per_batch(Settings(one_record_per_batch="off"), kafka_bootstrap) is False


def test_auto_mode_batches_on_real_kafka(kafka_broker) -> None:
    if kafka_broker.kind != "kafka":
        pytest.skip(f"the session broker is {kafka_broker.kind}, not the local Apache Kafka")
    assert is_embedded_broker(kafka_broker.bootstrap) is False
    assert one_record_per_batch(Settings(), kafka_broker.bootstrap) is False


@pytest.mark.embedded
def test_embedded_broker_pid_finds_the_broker_on_that_address(embedded_bootstrap: str) -> None:
    from streams.kafka.embedded import embedded_broker_pid

    kafka_bootstrap = embedded_bootstrap
    pid = embedded_broker_pid(kafka_bootstrap)
    assert pid is not None
    assert b"tansu" in Path(f"/proc/{pid}/cmdline").read_bytes()
    host, port = kafka_bootstrap.rsplit(":", 1)
    assert embedded_broker_pid(f"{host}:{int(port) + 1}") is None


def _get_sum(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/sum", timeout=2) as resp:
        return json.loads(resp.read())


def test_faust_table_restored_from_changelog_holds_every_update(kafka_bootstrap: str, tmp_path: Path) -> None:
    app_id = f"counter{uuid.uuid4().hex[:6]}"
    topic = f"count-in-{uuid.uuid4().hex[:6]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 2), TopicSpec(f"{app_id}-counts-changelog", 2, compacted=True)])
    datadir = tmp_path / "data"
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "COUNTER_APP_ID": app_id,
           "COUNTER_TOPIC": topic, "COUNTER_DATADIR": str(datadir), "COUNTER_WEB_PORT": str(port)}
    script = ROOT / "tests" / "apps" / "counter_app.py"

    def start(log_name: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log_name, "wb") as logf:
            return subprocess.Popen([sys.executable, str(script), "worker", "-l", "warn"], env=env, cwd=ROOT,
                                    stdout=logf, stderr=subprocess.STDOUT)

    def answers() -> bool:
        try:
            _get_sum(port)
            return True
        except OSError:
            return False

    n = 600
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, batch_size=0)
    for i in range(n):
        producer.send(topic, key=f"k{i % 23}".encode(), value=b'"x"')
    producer.flush()
    producer.close()

    proc = start("first.log")
    try:
        wait_until(answers, 60, what="counter app web port")
        wait_until(lambda: _get_sum(port)["sum"] == n, 90, what=f"first run to count {n} events")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    changelog = end_offsets(kafka_bootstrap, f"{app_id}-counts-changelog")
    assert sum(changelog.values()) == n, f"changelog end offsets {changelog} != {n} updates"

    shutil.rmtree(datadir)  # force a restore from the changelog alone
    proc = start("second.log")
    try:
        wait_until(answers, 60, what="counter app web port after restart")
        wait_until(lambda: _get_sum(port)["recovered"], 90, what="table recovery")
        time.sleep(1.0)
        got = _get_sum(port)
        assert got["sum"] == n, f"restored table sums to {got['sum']}, expected {n} ({(tmp_path / 'second.log').read_text()[-2000:]})"
        assert got["keys"] == 23
    finally:
        proc.terminate()
        proc.wait(timeout=60)
