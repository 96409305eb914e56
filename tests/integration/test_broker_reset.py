"""Broker resets: the broker lost data the worker's state depends on (docs/reliability.md, "Broker outage").

Brokerless units for the detection (a changelog write landing at or below the
committed marker, the input watch, out-of-range classification), the re-seed
and the marker check; then the table engine against a private embedded broker
that is restarted empty: a restarted engine keeps its state, re-seeds the
changelog, reads the re-created inputs from their start, and an engine with no
local state restores everything from the re-seeded changelog; with
``on_broker_reset=fail`` it crashes with ``BrokerResetError`` instead.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streams.kafka.broker_reset import InputWatch, classify_out_of_range
from streams.engine.state import Meta, PartitionState, open_backend
from streams.engine.state.changelog import MARKER_KEY, ChangelogReplay
from streams.engine.state.exceptions import ChangelogError, ChangelogResetError
from streams.engine.state.partition import META_KEY
from streams.engine.state.recovery import RESEED_PENDING, _is_marker_of, reseed_changelog, reseed_pending, write_checkpoint


# -- a fake producer: one in-memory log per partition -----------------------------------------------------

class _Batch:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, key: Any, value: Any, timestamp: Any, headers: Any) -> Any:
        if len(self.records) >= self.cap:
            return None
        self.records.append((key, value))
        return self

    def close(self) -> None: ...

    def record_count(self) -> int:
        return len(self.records)


class FakeProducer:
    """``create_batch`` / ``send_batch`` / ``send`` of aiokafka's producer over lists; ``fail`` raises on sends."""

    def __init__(self, batch_cap: int = 10) -> None:
        self.logs: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        self.batch_cap = batch_cap
        self.fail = False

    def _append(self, partition: int, records: list[tuple[bytes | None, bytes | None]]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(RuntimeError("broker down"))
            return fut
        log = self.logs.setdefault(partition, [])
        fut.set_result(SimpleNamespace(offset=len(log)))
        log.extend(records)
        return fut

    def create_batch(self) -> _Batch:
        return _Batch(self.batch_cap)

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[Any]:
        return self._append(partition, batch.records)

    async def send(self, topic: str, value: Any = None, key: Any = None, partition: int = 0,
                   headers: Any = None) -> asyncio.Future[Any]:
        return self._append(partition, [(key, value)])


def _state(n_keys: int = 25, marker: int = 50) -> PartitionState:
    state = PartitionState(open_backend(f"memory://{uuid.uuid4().hex}", ".", "p0"), 0)
    changes = [(b"user_sequences\x01u%d" % i, b"v%d" % i) for i in range(n_keys)]
    state.commit(changes, Meta(offsets={"impressions": 99}, ckpt=7, changelog_offset=marker))
    return state


def _replay(records: list[tuple[bytes | None, bytes | None]]) -> PartitionState:
    fresh = PartitionState(open_backend(f"memory://{uuid.uuid4().hex}", ".", "p0"), 0)
    replay = ChangelogReplay()
    for off, (k, v) in enumerate(records):
        cp = replay.feed(off, k, v)
        if cp is not None:
            fresh.commit(cp.changes, cp.meta)
    return fresh


def _data(state: PartitionState) -> dict[bytes, bytes]:
    return {k: v for k, v in state.backend.items(b"") if k != META_KEY}


# -- units -----------------------------------------------------------------------------------------------

def test_a_checkpoint_landing_at_or_below_the_committed_marker_is_a_changelog_reset() -> None:
    async def go() -> None:
        producer = FakeProducer()
        meta = Meta(offsets={"impressions": 120}, ckpt=8)
        changes = [(b"k%d" % i, b"v") for i in range(12)]
        # a new, empty log (the broker came back empty): the first record lands at 0 <= 50
        with pytest.raises(ChangelogResetError) as info:
            await write_checkpoint(producer, "cl", 0, changes, meta, after=50)
        assert info.value.found == 0 and info.value.expected == 50
        assert info.value.marker == 12  # the marker it wrote, for the caller to commit before re-seeding
        assert producer.logs[0][-1][0] == MARKER_KEY
        # the same log grown past the marker: a normal checkpoint
        producer.logs[0].extend([(b"x", b"y")] * 40)
        assert await write_checkpoint(producer, "cl", 0, changes, meta, after=50) == 13 + 40 + 12
        # no committed marker yet (a fresh partition): never a reset
        assert await write_checkpoint(FakeProducer(), "cl", 0, changes, meta, after=-1) == 12

    asyncio.run(go())


def test_reseed_writes_the_whole_state_so_a_replay_restores_it() -> None:
    async def go() -> None:
        state = _state(n_keys=25)
        producer = FakeProducer(batch_cap=10)  # several batches
        n = await reseed_changelog(state, producer, "cl", extra={"topic_ids": {"cl": "new"}})
        assert n == 25
        log = producer.logs[0]
        assert len(log) == 26 and log[-1][0] == MARKER_KEY
        assert state.meta.changelog_offset == 25 and not reseed_pending(state)
        assert state.meta.extra["topic_ids"] == {"cl": "new"}
        assert state.meta.offsets == {"impressions": 99} and state.meta.ckpt == 7
        restored = _replay(log)
        assert _data(restored) == _data(state)
        assert restored.meta.offsets == state.meta.offsets and restored.meta.changelog_offset == 25
        # later checkpoints are deltas on top of the re-seed
        await write_checkpoint(producer, "cl", 0, [(b"user_sequences\x01u0", b"new")],
                               replace(state.meta, ckpt=8), after=state.meta.changelog_offset)
        assert _data(_replay(producer.logs[0]))[b"user_sequences\x01u0"] == b"new"

    asyncio.run(go())


def test_an_interrupted_reseed_stays_pending_for_the_next_recovery() -> None:
    async def go() -> None:
        state = _state()
        producer = FakeProducer()
        producer.fail = True
        with pytest.raises(ChangelogError):
            await reseed_changelog(state, producer, "cl")
        assert reseed_pending(state) and state.meta.extra[RESEED_PENDING] is True
        assert state.meta.changelog_offset == 50  # nothing committed but the flag
        producer.fail = False
        await reseed_changelog(state, producer, "cl")
        assert not reseed_pending(state)
        marker_meta = Meta.decode(producer.logs[0][-1][1])
        assert RESEED_PENDING not in marker_meta.extra  # the flag never reaches the changelog

    asyncio.run(go())


def test_the_record_at_the_marker_offset_must_be_that_marker() -> None:
    meta = Meta(offsets={"impressions": 99}, ckpt=7, changelog_offset=50)
    ours = SimpleNamespace(key=MARKER_KEY, value=replace(meta, changelog_offset=-1).encode())
    assert _is_marker_of(ours, meta)
    other_ckpt = SimpleNamespace(key=MARKER_KEY, value=replace(meta, ckpt=3, changelog_offset=-1).encode())
    assert not _is_marker_of(other_ckpt, meta)
    assert not _is_marker_of(SimpleNamespace(key=b"user_sequences\x01u1", value=b"x"), meta)
    assert not _is_marker_of(SimpleNamespace(key=MARKER_KEY, value=b"not json"), meta)


def test_input_watch_trusts_a_proven_reset_at_once_and_a_lagging_watermark_only_after_a_while() -> None:
    w = InputWatch(confirm_s=15.0)
    assert not w.observe("a", stored=41, highwater=42, now=0.0)  # healthy: next offset to read is 42
    assert not w.observe("a", stored=None, highwater=0, now=0.0)  # nothing processed yet
    assert not w.observe("a", stored=41, highwater=None, now=0.0)  # no fetch answered yet
    assert not w.observe("a", stored=41, highwater=10, now=100.0)  # behind: suspect
    assert not w.observe("a", stored=41, highwater=10, now=110.0)
    assert w.observe("a", stored=41, highwater=10, now=115.0)  # persisted 15 s
    assert w.observe("b", stored=41, highwater=41, now=0.0, proven=True)  # changelog reset proven: at once
    assert not w.observe("a", stored=41, highwater=60, now=116.0)  # caught up again: suspicion dropped
    assert w.suspects() == ["b"]
    w.forget("b")
    assert w.suspects() == []


def test_out_of_range_below_the_log_start_is_retention_above_is_a_reset() -> None:
    assert classify_out_of_range(position=5, log_start=100) == "retention"
    assert classify_out_of_range(position=500, log_start=0) == "reset"
    assert classify_out_of_range(position=100, log_start=100) == "reset"


# -- against a broker ------------------------------------------------------------------------------------

@pytest.mark.broker
def test_recovery_rejects_a_changelog_whose_record_at_the_marker_is_not_ours(kafka_bootstrap) -> None:
    """A re-created changelog that already grew past the local marker: found by the record at its offset."""
    from aiokafka import AIOKafkaProducer

    from streams.engine.state.recovery import recover_partition
    from streams.kafka.topics import TopicSpec, ensure_topics

    topic = f"regrown-changelog-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1, compacted=True)])
    state = _state(marker=5)

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_batch_size=1, linger_ms=0)
        await producer.start()
        try:
            for i in range(12):  # someone else's records, past offset 5
                await (await producer.send(topic, key=b"user_sequences\x01x%d" % i, value=b"v", partition=0))
            await asyncio.wait_for(recover_partition(state, producer, kafka_bootstrap, topic), 30)
        finally:
            await producer.stop()

    with pytest.raises(ChangelogResetError, match="record at offset 5 is not the marker"):
        asyncio.run(go())


@pytest.mark.broker
def test_event_producer_replaces_a_producer_in_its_fatal_state(kafka_bootstrap, settings_factory) -> None:
    from kafka.errors import KafkaError

    from features.events import Impression
    from streams.kafka.embedded import is_embedded_broker
    from streams.kafka.producer import EventProducer
    from streams.kafka.topics import ensure_topics, topic_specs

    settings = settings_factory()
    ensure_topics(kafka_bootstrap, topic_specs(settings))
    ev = Impression(event_id="e1", user_id="u1", item_id="i1", request_id="r1", ts=int(time.time() * 1000),
                    surface="home", position=0, item_type="organic", country="US", gender="f", app_type="ios",
                    device_type="phone")
    with EventProducer(kafka_bootstrap, settings) as p:
        # the embedded broker forgets producer ids when it restarts: no idempotence there; real Kafka: idempotent
        assert p._producer.config["enable_idempotence"] is (not is_embedded_broker(kafka_bootstrap))
    with EventProducer(kafka_bootstrap, settings, enable_idempotence=True) as p:
        p.send(ev).get(timeout=30)
        p._producer._transaction_manager.transition_to_fatal_error(KafkaError("simulated fatal InitProducerId"))
        assert p.is_fatal()
        md = p.send(ev).get(timeout=30)  # a new producer took over
        assert p.recreated == 1 and not p.is_fatal() and md.offset >= 1


@pytest.mark.broker
def test_engine_stops_with_a_topology_error_when_an_input_has_another_partition_count(kafka_bootstrap,
                                                                                     settings_factory) -> None:
    from streams.engine.engine import TableEngine
    from streams.engine.state.exceptions import TopologyError
    from streams.kafka.topics import TopicSpec, ensure_topics, topic_specs

    settings = settings_factory(partitions=2, shutdown_timeout_s=2.0)
    specs = [TopicSpec(s.name, 4 if s.name == settings.topic_impressions else s.partitions, s.compacted)
             for s in topic_specs(settings)]  # as tansu auto-creates a topic a client touches first
    ensure_topics(kafka_bootstrap, specs)

    async def go() -> BaseException | None:
        engine = TableEngine(settings, kafka_bootstrap)
        await engine.start()
        try:
            deadline = time.monotonic() + 60
            while not engine.crashed and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            return engine.crash_reason
        finally:
            await asyncio.wait_for(engine.stop(), 30)

    reason = asyncio.run(go())
    assert isinstance(reason, TopologyError), reason
    assert "has 4 partitions but FEEDRANK_PARTITIONS=2" in str(reason)


# -- the engine across a restart of a private embedded broker ----------------------------------------------

USERS = [f"ru{i}" for i in range(12)]


def _imps(prefix: str, n: int) -> list[Any]:
    from features.events import Impression

    now = int(time.time() * 1000)
    return [Impression(event_id=f"{prefix}{i}", user_id=USERS[i % len(USERS)], item_id=f"i{i}",
                       request_id=f"{prefix}r{i}", ts=now + i, surface="home", position=0, item_type="organic",
                       country="US", gender="f", app_type="ios", device_type="phone") for i in range(n)]


def _produce(bootstrap: str, settings: Any, events: list[Any]) -> None:
    from streams.kafka.producer import EventProducer

    with EventProducer(bootstrap, settings) as p:
        futs = [p.send(e) for e in events]
        p.flush()
        for f in futs:
            f.get(timeout=30)


def _impressions(engine: Any) -> int:
    return sum(t.user_state(u).counts_1d.impressions for t in engine.tables.values() for u in USERS)


async def _run_engine(settings: Any, bootstrap: str, want: int, timeout_s: float = 90.0) -> dict[str, Any]:
    """Start an engine, wait until its tables hold ``want`` impressions of USERS, stop it; what it saw."""
    from streams.engine.engine import TableEngine

    engine = TableEngine(settings, bootstrap)
    await engine.start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout_s and not engine.crashed:
            if len(engine.tables) == settings.partitions and _impressions(engine) >= want:
                break
            await asyncio.sleep(0.2)
        return {"impressions": _impressions(engine), "resets": engine.broker_resets, "crashed": engine.crashed,
                "reason": engine.crash_reason, "partitions": sorted(engine.tables)}
    finally:
        t = time.monotonic()
        await asyncio.wait_for(engine.stop(), 60)
        assert time.monotonic() - t < 30


@pytest.mark.broker
@pytest.mark.embedded
@pytest.mark.slow
@pytest.mark.long
def test_engine_after_a_broker_restart_keeps_its_state_reseeds_and_reads_the_new_topics(tmp_path: Path) -> None:
    from streams.kafka.embedded import EmbeddedBroker
    from streams.tools.chaos import make_settings
    from streams.kafka.topics import ensure_topics, topic_specs

    broker = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    try:
        settings = make_settings(tmp_path, broker.bootstrap, partitions=2, checkpoint_interval_s=0.2,
                                 shutdown_timeout_s=5.0)
        ensure_topics(broker.bootstrap, topic_specs(settings))
        _produce(broker.bootstrap, settings, _imps("pre", 60))
        first = asyncio.run(_run_engine(settings, broker.bootstrap, want=60))
        assert first["impressions"] == 60 and first["resets"] == 0

        broker.stop()  # memory storage: everything on the broker is gone
        broker = EmbeddedBroker(port=broker.port, log_path=tmp_path / "broker.log").start()
        ensure_topics(broker.bootstrap, topic_specs(settings))
        _produce(broker.bootstrap, settings, _imps("post", 24))  # fewer than the stored offsets: offsets 0..11

        second = asyncio.run(_run_engine(settings, broker.bootstrap, want=84))
        assert not second["crashed"], second["reason"]
        assert second["impressions"] == 84  # the 60 from the local state + the 24 of the new topics
        assert second["resets"] >= 4  # changelog and input, both partitions

        # no local state: everything comes back from the re-seeded changelog
        fresh = settings.model_copy(update={"data_dir": tmp_path / "fresh"})
        third = asyncio.run(_run_engine(fresh, broker.bootstrap, want=84, timeout_s=60))
        assert third["impressions"] == 84 and third["resets"] == 0

        # the same after another empty restart, with on_broker_reset=fail: the engine crashes, loudly
        broker.stop()
        broker = EmbeddedBroker(port=broker.port, log_path=tmp_path / "broker.log").start()
        ensure_topics(broker.bootstrap, topic_specs(settings))
        strict = settings.model_copy(update={"on_broker_reset": "fail"})
        fourth = asyncio.run(_run_engine(strict, broker.bootstrap, want=10**9, timeout_s=60))
        from streams.engine.state.exceptions import BrokerResetError

        assert fourth["crashed"] and isinstance(fourth["reason"], BrokerResetError), fourth
        assert "FEEDRANK_ON_BROKER_RESET=fail" in str(fourth["reason"])
    finally:
        broker.stop()
        shutil.rmtree(tmp_path / "fresh", ignore_errors=True)


@pytest.mark.broker
def test_a_broker_error_during_recovery_is_retried_not_fatal(tmp_path: Path, kafka_bootstrap: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in the outage scenario: the embedded broker failed the recovery's fence write (UnknownError:
    a produce colliding with records sent before the topic was re-created) and the engine exited."""
    from aiokafka.errors import UnknownError

    import streams.engine.reset_watch as runtime
    from streams.tools.chaos import make_settings
    from streams.kafka.topics import ensure_topics, topic_specs

    settings = make_settings(tmp_path, kafka_bootstrap, partitions=2, checkpoint_interval_s=0.2,
                             shutdown_timeout_s=5.0)
    ensure_topics(kafka_bootstrap, topic_specs(settings))
    _produce(kafka_bootstrap, settings, _imps("rec", 40))
    real, failed = runtime.recover_partition, []

    async def flaky(state: Any, *args: Any, **kwargs: Any) -> Any:
        if state.partition not in failed:
            failed.append(state.partition)
            raise UnknownError("injected: the fence write failed")
        return await real(state, *args, **kwargs)

    monkeypatch.setattr(runtime, "recover_partition", flaky)
    seen = asyncio.run(_run_engine(settings, kafka_bootstrap, want=40))
    assert sorted(failed) == [0, 1]  # every partition's first recovery attempt failed ...
    assert not seen["crashed"], seen["reason"]  # ... and was retried
    assert seen["impressions"] == 40 and seen["partitions"] == [0, 1]


@pytest.mark.broker
@pytest.mark.embedded
@pytest.mark.slow
@pytest.mark.long
def test_a_running_engine_reads_a_recreated_input_refilled_past_its_stored_offset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CI failure of the outage scenario: the broker is away longer than the group session and comes back
    empty; the engine's partitions are re-assigned while the topic ids cannot be read yet (injected here: in
    the scenario the admin client's node was not ready), and more events than the stored offsets refill the
    inputs right after the changelog reset. The high-watermark signal never sees those inputs below their
    stored offsets; the engine keeps them paused until it has compared the topic ids, then reads them from
    their start: every event counts once."""
    import streams.engine.reset_watch as runtime
    from streams.engine.engine import TableEngine
    from streams.kafka.embedded import EmbeddedBroker
    from streams.tools.chaos import make_settings
    from streams.kafka.topics import ensure_topics, topic_specs

    failing = {"on": False, "injected": 0}
    real = TableEngine._describe_ids

    async def describe(self: Any, topics: list[str]) -> tuple[dict[str, str], str | None]:
        if failing["on"]:
            failing["injected"] += 1
            return {}, "NodeNotReadyError: injected"
        return await real(self, topics)

    monkeypatch.setattr(TableEngine, "_describe_ids", describe)
    monkeypatch.setattr(runtime, "TOPIC_IDS_PATIENCE_S", 8.0)
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log").start()
    # 4 partitions, the embedded broker's count for auto-created topics: the running engine's clients touch
    # the inputs as soon as the broker is back, before ensure_topics (see run_outage)
    settings = make_settings(tmp_path, broker.bootstrap, partitions=4, checkpoint_interval_s=0.2,
                             shutdown_timeout_s=5.0)
    ensure_topics(broker.bootstrap, topic_specs(settings))

    async def until(what: str, cond: Any, engine: Any, timeout_s: float = 60.0) -> None:
        t0 = time.monotonic()
        while not cond():
            assert not engine.crashed, engine.crash_reason
            assert time.monotonic() - t0 < timeout_s, f"timed out waiting for {what}: {_impressions(engine)}"
            await asyncio.sleep(0.02)

    async def go() -> dict[str, Any]:
        nonlocal broker
        engine = TableEngine(settings, broker.bootstrap)
        await engine.start()
        try:
            await asyncio.to_thread(_produce, broker.bootstrap, settings, _imps("pre", 60))
            await until("the first events", lambda: len(engine.tables) == 4 and _impressions(engine) >= 60, engine)
            failing["on"] = True
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(12.0)  # past the group session (10 s): the engine's partitions are re-assigned
            broker = await asyncio.to_thread(
                lambda: EmbeddedBroker(port=broker.port, log_path=tmp_path / "broker.log").start())
            await asyncio.to_thread(ensure_topics, broker.bootstrap, topic_specs(settings))
            await asyncio.to_thread(_produce, broker.bootstrap, settings, _imps("few", 4))
            await until("the changelog reset", lambda: engine.broker_resets > 0, engine, 90.0)
            # twice the first events of each user: past every partition's stored offset at once
            await asyncio.to_thread(_produce, broker.bootstrap, settings, _imps("refill", 120))
            failing["on"] = False
            await until("every event", lambda: _impressions(engine) >= 184, engine)
            await asyncio.sleep(2.0)  # anything read twice would show by now
            return {"impressions": _impressions(engine), "resets": engine.broker_resets}
        finally:
            await asyncio.wait_for(engine.stop(), 60)

    try:
        seen = asyncio.run(go())
    finally:
        broker.stop()
    assert failing["injected"] > 0  # the ids were unavailable for a while
    assert seen["impressions"] == 60 + 4 + 120, seen
    assert seen["resets"] >= 2, seen  # changelogs and impressions inputs (of the partitions holding users)
