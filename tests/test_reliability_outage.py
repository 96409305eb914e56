"""Embedded broker stopped for 10 s and restarted empty on the same port (memory storage).

What holds (asserted): producers deliver or fail with an error, none hangs; the worker
stays up through the outage, its web server answers, and it logs the outage.
What does not hold yet (xfail strict, see docs/reliability.md "Broker outage"): after
the restart the running worker neither resumes nor fails, and ignores SIGTERM; a
restarted worker waits 120 s in recovery and then stays up owning nothing.
"""

from __future__ import annotations

import pytest

from streams.chaos import run_outage

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    return run_outage(tmp_path_factory.mktemp("outage"), outage_s=10.0, events=200, observe_s=3.0,
                      new_wait_s=10.0, stop_wait_s=10.0, restart_wait_s=20.0)


def test_producers_deliver_or_fail_loudly_and_none_hangs(outage) -> None:
    assert not outage["producer_hung"]
    assert outage["producer_unresolved"] == 0
    assert outage["producer_ok"] + outage["producer_failed_loudly"] == outage["producer_sent"]
    assert outage["producer_failed_loudly"] > 0  # sends during a 10 s outage end in an error, not silence
    assert outage["producer_ok"] > 0  # the ones before it were delivered


def test_worker_survives_the_outage_and_logs_it(outage) -> None:
    assert outage["worker_alive_during"]
    assert outage["web_probes_ok"] == outage["web_probes"] > 0  # /metrics keeps answering
    assert outage["worker_alive_after_restart"] or outage["worker_exit_code"] not in (0, None)
    assert outage["worker_error_lines"] > 0  # connection errors are logged, not swallowed
    # memory storage: every topic is gone; a client may auto-create some (4 partitions) before ensure_topics
    assert outage["topics_after_restart"]


@pytest.mark.xfail(strict=True, reason="TableEngine stalls after the broker loses its data: the consumer "
                   "re-joins a new group and never gets going again, and events on the re-created topics sit at "
                   "offsets at or below the stored offsets, which the fence would skip (bug report: docs/reliability.md)")
def test_running_worker_resumes_or_fails_loudly_after_restart(outage) -> None:
    assert outage["running_worker_processed_new"] or not outage["worker_alive_after_restart"]


@pytest.mark.xfail(strict=False, reason="intermittent: after the broker restart SIGTERM often does not stop the worker "
                   "within 10 s (39 s to >60 s measured, sometimes in time); likely TableEngine.on_stop waiting without a timeout on the engine lock or a "
                   "checkpoint blocked on the lost broker")
def test_sigterm_stops_the_worker_after_restart(outage) -> None:
    assert outage["stop_code"] != -9


@pytest.mark.xfail(strict=True, reason="recover_partition seeks the changelog to the local marker + 1, beyond "
                   "the end of the re-created changelog, and waits 120 s for a fence it cannot reach; the "
                   "ChangelogError then only goes to the log and the worker stays up with no partitions")
def test_restarted_worker_recovers_or_exits_loudly(outage) -> None:
    assert outage["restarted_partitions"] is not None or (
        not outage.get("restarted_alive", True) and outage.get("restarted_stop_code") not in (0, None))


def test_recovery_fails_fast_when_the_changelog_is_shorter_than_local_state(kafka_bootstrap, tmp_path) -> None:
    """The unit behind the restart case: local state says marker 50, the (re-created) changelog is empty."""
    import asyncio
    import uuid
    from dataclasses import replace

    from aiokafka import AIOKafkaProducer

    from streams.state import PartitionState, open_backend
    from streams.state.exceptions import ChangelogError
    from streams.state.recovery import recover_partition
    from streams.topics import TopicSpec, ensure_topics

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

    with pytest.raises(ChangelogError):  # at once, not after the 12 s guard (or the 120 s recovery timeout)
        asyncio.run(go())
