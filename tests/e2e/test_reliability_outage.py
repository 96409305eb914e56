"""Embedded broker stopped for 10 s and restarted empty on the same port (memory storage).

Asserted: producers deliver or fail with an error (none hangs) and deliver again after the restart;
the worker stays up through the outage, its web server answers, it logs the outage; after the restart
it detects the broker reset, keeps its state, re-seeds the changelog and processes the events produced
afterwards; SIGTERM stops it in time; a worker restarted on the same state and one with no local state
(restoring the re-seeded changelog alone) hold every acknowledged event. With
``FEEDRANK_ON_BROKER_RESET=fail`` a worker restarted after the outage exits non-zero, saying why.
See docs/reliability.md ("Broker outage").
"""

from __future__ import annotations

import time

import pytest

from streams.tools.chaos.outage import run_outage

# the broker comes back empty: the embedded broker's outage (a private one; real Kafka keeps its data, see
# test_reliability_broker.py)
pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.long]


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    return run_outage(tmp_path_factory.mktemp("outage"), outage_s=10.0, events=200, observe_s=30.0,
                      new_wait_s=30.0, stop_wait_s=20.0, restart_wait_s=90.0)


def _why(outage: dict) -> str:
    """The scenario's timeline and problems, so a failure in CI says what happened."""
    return "\n".join([*outage.get("timeline", []), *(f"problem: {p}" for p in outage.get("problems", []))])


def test_producers_deliver_or_fail_loudly_and_none_hangs(outage) -> None:
    assert not outage["producer_hung"]
    assert outage["producer_unresolved"] == 0
    assert outage["producer_ok"] + outage["producer_failed_loudly"] == outage["producer_sent"]
    assert outage["producer_ok"] > 0


def test_producers_recover_after_the_restart(outage) -> None:
    # sends buffered during the outage are retried into the restarted broker or fail with an error
    assert outage["producer_outage_sent"] > 0
    # and the producer keeps delivering afterwards (no fatal state; tansu may fail some sends that collide
    # with records it accepted before the topic was re-created: loud, counted as failures)
    assert outage["producer_after_restart_ok"] > 0
    assert outage["post_ok"] > 0


def test_worker_survives_the_outage_and_logs_it(outage) -> None:
    assert outage["worker_alive_during"]
    assert outage["web_probes_ok"] == outage["web_probes"] > 0  # /metrics keeps answering
    assert outage["worker_alive_after_restart"]
    assert outage["worker_error_lines"] > 0  # connection errors are logged, not swallowed
    assert outage["worker_reset_warnings"] > 0  # and the broker reset is reported loudly
    assert outage["topics_after_restart"]


def test_running_worker_detects_the_reset_and_resumes(outage) -> None:
    assert outage["reset_detected_s"] is not None
    assert outage["broker_resets_metric"]["changelog"] > 0
    assert outage["running_worker_processed_new"], _why(outage)
    # its tables hold every impression acknowledged before the outage (kept local state) and after it
    assert outage["running_worker_impressions"] == outage["impressions_expected"], _why(outage)


def test_sigterm_stops_the_worker_after_restart(outage) -> None:
    assert outage["stop_code"] == 0, outage["stop_s"]


def test_restarted_worker_recovers(outage) -> None:
    assert outage["restarted_partitions"] == [0, 1, 2, 3], _why(outage)
    assert outage["restarted_impressions"] == outage["impressions_expected"], _why(outage)
    assert outage["restarted_stop_code"] == 0


def test_worker_without_local_state_restores_the_reseeded_changelog(outage) -> None:
    assert outage["fresh_partitions"] == [0, 1, 2, 3], _why(outage)
    assert outage["fresh_impressions"] == outage["impressions_expected"], _why(outage)
    assert outage["fresh_stop_code"] == 0
    assert not outage["problems"], outage["problems"]


def test_with_on_broker_reset_fail_a_worker_restarted_after_the_outage_exits_non_zero(tmp_path) -> None:
    from streams.kafka.embedded import EmbeddedBroker
    from streams.tools.chaos.common import ChaosError, Worker, make_settings, wait_until
    from streams.kafka.topics import ensure_topics, topic_specs

    from test_broker_reset import _imps, _produce

    broker = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    w = None
    try:
        settings = make_settings(tmp_path, broker.bootstrap, partitions=4, checkpoint_interval_s=0.2,
                                 on_broker_reset="fail")
        ensure_topics(broker.bootstrap, topic_specs(settings))
        w = Worker(settings, tmp_path / "worker-1.log", "worker").start()
        _produce(broker.bootstrap, settings, _imps("pre", 40))
        wait_until(lambda: w.metric("feedrank_events_valid_total") >= 40, 90, "events processed", detail=w.log_tail)
        w.stop()
        assert w.proc is not None and w.proc.returncode == 0
        broker.stop()
        broker = EmbeddedBroker(port=broker.port, log_path=tmp_path / "broker.log").start()
        ensure_topics(broker.bootstrap, topic_specs(settings))
        w = Worker(settings, tmp_path / "worker-2.log", "worker")
        t0 = time.monotonic()
        try:
            w.start()
        except ChaosError:
            pass  # exited before its web server answered: fine, as long as it is non-zero
        assert w.proc is not None
        w.proc.wait(timeout=90)
        took = time.monotonic() - t0
        assert w.proc.returncode not in (0, None)
        log_text = w.log_tail(200_000)
        assert "BrokerResetError" in log_text and "FEEDRANK_ON_BROKER_RESET=fail" in log_text, log_text[-2000:]
        print(f"worker exited with {w.proc.returncode} {took:.1f}s after its start")
    finally:
        if w is not None:
            w.kill()
        broker.stop()


def test_recovery_fails_fast_when_the_changelog_is_shorter_than_local_state(kafka_bootstrap, tmp_path) -> None:
    """The unit behind the restart case: local state says marker 50, the (re-created) changelog is empty."""
    import asyncio
    import uuid
    from dataclasses import replace

    from aiokafka import AIOKafkaProducer

    from streams.engine.state import PartitionState, open_backend
    from streams.engine.state.exceptions import ChangelogResetError
    from streams.engine.state.recovery import recover_partition
    from streams.kafka.topics import TopicSpec, ensure_topics

    topic = f"lost-changelog-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1, compacted=True)])
    state = PartitionState(open_backend(f"memory://{uuid.uuid4().hex}", ".", "p0"), 0)
    state.commit([], replace(state.meta, changelog_offset=50))

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_batch_size=1, linger_ms=0)
        await producer.start()
        try:
            await asyncio.wait_for(recover_partition(state, producer, kafka_bootstrap, topic), 12)
        finally:
            await producer.stop()

    with pytest.raises(ChangelogResetError) as info:  # at once, not after the 12 s guard
        asyncio.run(go())
    assert info.value.expected == 50 and info.value.found <= 50
