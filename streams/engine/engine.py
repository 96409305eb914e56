"""The table engine: consumes the event topics in batches and keeps the stream tables.

Why not a Faust agent for the hot path: measured on the embedded broker, a
Faust agent doing nothing but ``stream.take_events(2000, 0.01)`` moves about
7,900 events/s on this machine while a plain aiokafka consumer moves 200k+/s;
and the crash guarantee needs to *seek* each partition to the offsets stored
with its state when it is assigned, which Faust's stream/commit machinery does
not let us own. So the engine is a ``mode.Service`` started by the Faust app
(web server, CLI, metrics stay Faust's) that drives its own aiokafka consumer:

- one consumer group ``<app_id>-tables`` over impressions, engagements and
  predictions, range assignment so partition p of the three topics lands on
  the same worker (one *task* per partition number);
- on assignment: open the partition's RocksDB, recover it from the changelog,
  re-ship its outbox, seek every topic to the committed offset + 1;
  on revocation: checkpoint and close;
- every ``checkpoint_interval_s``: take a snapshot of the partition's changed
  keys (cheap: references, serialized later in chunks) and hand it to a
  background task that awaits the outputs (labeled examples, dead letters),
  writes each changed key once plus a marker to the changelog (record batches),
  commits the same changes and the source offsets in one RocksDB batch, then
  ships the feedback delta (outbox) and commits the consumer offsets
  (informational only: the offsets stored with the state are the truth).
  Processing never waits for a checkpoint (double buffering: one checkpoint in
  flight per partition, the record cache serves reads meanwhile);
- event-time alignment: the engagements of a partition are applied only while
  they are no more than ``A + L`` ahead of the partition's prediction logs and
  impressions (or that input has nothing more to read), so a window closes
  at the same engagement and finds the same log as in a from-scratch
  recomputation, whatever the consumer fetched first (catch-up after a
  restart included). Held engagements wait
  in a per-partition queue; the consumer pauses that topic-partition when
  the queue is long and resumes it when it drains.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from array import array
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Sequence, TypeVar

import mode
import orjson
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from features.events import Engagement, EventDecodeError, Impression, decode_event_fast
from features.predictions import PredictionDecodeError, decode_prediction_header

from streams.kafka.broker_reset import InputWatch, classify_out_of_range, consequence, fail_advice
from streams.engine.ingest import DeadLetter, decode_message
from streams.settings import Settings
from streams.engine.state import PartitionState, open_backend
from streams.engine.state.backend import RocksDBMemoryCollector, configure_rocksdb, rocksdb_resources
from streams.engine.state.changelog import changelog_topic
from streams.engine.state.exceptions import BrokerResetError, ChangelogError, ChangelogResetError, TopologyError
from streams.engine.state.recovery import (RESEED_PENDING, TOPIC_IDS, recover_partition, reseed_changelog, reseed_pending,
                             send_records, write_checkpoint)
from streams.engine.tables import PartitionTables

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_rocksdb_collector: RocksDBMemoryCollector | None = None


def use_rocksdb_budget(memory_mb: int) -> None:
    """Size this process's RocksDB budget from the settings and export its memory on ``/metrics`` (once)."""
    global _rocksdb_collector
    from streams.metrics import REGISTRY

    if rocksdb_resources().memory_mb != memory_mb:
        configure_rocksdb(memory_mb)
    if _rocksdb_collector is None:
        _rocksdb_collector = RocksDBMemoryCollector()
        REGISTRY.register(_rocksdb_collector)

#: held engagements of one partition above which its engagement input is paused / below which resumed
HOLD_PAUSE = 20_000
HOLD_RESUME = 5_000
#: a held queue that makes no progress this long is released anyway (a predictions input that
#: never reports its end would otherwise stall the partition)
HOLD_MAX_WAIT_S = 10.0
#: records applied between two chances for the event loop to run other tasks (``/score``) ...
SLICE = 64
#: ... taken when the batch has held the loop this long (a slice of 64 events is ~5 ms of work)
YIELD_S = 0.004
#: a fetch response must be this much newer than a held engagement to prove the predictions input
#: has nothing older left (margin for clock skew between producers and this worker)
EXHAUSTED_MARGIN_MS = 1000
#: how often the inputs' high watermarks are compared with the stored offsets (broker reset detection)
WATCH_INTERVAL_S = 0.5
#: how long a partition assignment or a changelog reset waits for the topic ids while the broker is not ready
TOPIC_IDS_PATIENCE_S = 15.0
#: the informational consumer offset commit of a checkpoint gives up after this long
COMMIT_TIMEOUT_S = 5.0
#: a changelog write that fails (not a reset) is retried this long before the checkpoint fails; retrying is
#: safe (an unfinished attempt is a tail without marker). After an embedded broker restart, records written
#: while a topic did not exist yet become part of it once it is created, and the next writes collide with
#: them (UnknownError) until its offsets pass them
CHANGELOG_RETRY_S = 30.0


def percentiles(values: Iterable[float], *qs: float) -> list[float]:
    """Nearest-rank percentiles of ``values`` (NaN when there are none)."""
    data = sorted(values)
    if not data:
        return [float("nan")] * len(qs)
    return [data[min(len(data) - 1, int(q * len(data)))] for q in qs]


class FreshnessLog:
    """Produce-to-visible delays (ms) of engagements: the last ``maxlen`` in a ring allocated up front.

    A float array of fixed size, not a deque of float objects: 8 bytes a sample instead of ~32, all
    taken at start-up (a deque of 200,000 floats grew for minutes at low event rates, ~6 MiB each:
    measured with tracemalloc in the load scenario at 2,000 events/s, the largest growing allocation).
    """

    def __init__(self, maxlen: int = 200_000) -> None:
        self._ring = array("d", bytes(8 * maxlen))
        self._next = 0
        self._n = 0

    def add_many(self, values: list[float]) -> None:
        ring, size = self._ring, len(self._ring)
        if len(values) >= size:
            values = values[-size:]
        i = self._next
        head = min(len(values), size - i)
        ring[i:i + head] = array("d", values[:head])
        if head < len(values):
            ring[:len(values) - head] = array("d", values[head:])
        self._next = (i + len(values)) % size
        self._n = min(size, self._n + len(values))

    def clear(self) -> None:
        self._next = self._n = 0

    def __len__(self) -> int:
        return self._n

    def percentiles(self, *qs: float) -> list[float]:
        return percentiles(self._ring[:self._n], *qs)


class _Held:
    """Engagements of one partition read but not yet applied (event-time alignment)."""

    __slots__ = ("items", "since", "paused")

    def __init__(self) -> None:
        # (offset, item or None for a dead-lettered record, producer timestamp ms)
        self.items: deque[tuple[int, Any, int]] = deque()
        self.since = 0.0  # monotonic time the head started waiting (0 = not waiting)
        self.paused = False


class TableEngine(mode.Service):
    """Keeps every stream table of the partitions this worker owns."""

    def __init__(self, settings: Settings, bootstrap: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.settings = settings
        self.bootstrap = bootstrap
        self.tables: dict[int, PartitionTables] = {}
        self.freshness = FreshnessLog()
        #: produce-to-received delays (ms) of engagements: the broker's and producer's share of freshness
        self.delivery = FreshnessLog()
        self.processed = 0
        self.dead_lettered = 0
        self.checkpoints = 0
        self.held_releases_forced = 0
        self._changelog = changelog_topic(settings.app_id)
        self._kinds = {
            settings.topic_impressions: "impression",
            settings.topic_engagements: "engagement",
            settings.topic_predictions: "prediction",
        }
        self._order = {settings.topic_predictions: 0, settings.topic_impressions: 1, settings.topic_engagements: 2}
        self._outputs: dict[int, list[asyncio.Future[Any]]] = {}
        self._emitted: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self._held: dict[int, _Held] = {}
        self._ckpt_tasks: dict[int, asyncio.Task[None]] = {}
        self._ckpt_error: BaseException | None = None
        self._align_ms = int((settings.attribution_window_s + settings.allowed_lateness_s) * 1000)
        self._last_ckpt = time.monotonic()
        self._slice_t0 = 0.0
        self._lock = asyncio.Lock()
        self.consumer: Any = None
        self.producer: Any = None
        self.caught_up = asyncio.Event()
        #: an error of the rebalance listener, the input watch or a broker reset under ``fail``: ``_run``
        #: re-raises it, so the worker exits non-zero instead of staying up owning nothing
        self._fatal: BaseException | None = None
        self._run_task: asyncio.Future[Any] | None = None
        self._watch_task: asyncio.Future[Any] | None = None
        self._inputs = InputWatch()
        self._ids: dict[str, str] = {}  # current topic ids of the inputs and the changelog (``_assign``)
        self._part_ids: dict[int, dict[str, str]] = {}  # per partition: the ids its offsets / marker refer to
        self._admin: Any = None
        self._admin_lock = threading.Lock()  # the kafka-python admin client is not thread-safe
        self._reset_seen: set[int] = set()  # partitions whose changelog was found reset in this process
        #: partitions whose inputs' topic ids the watch must compare with the ones their offsets refer to (a
        #: changelog reset proved that the broker lost data: its inputs were probably re-created too), with
        #: when that began; their inputs stay paused until then
        self._verify_ids: dict[int, float] = {}
        self._watch_wake = asyncio.Event()
        self.broker_resets = 0

    # -- lifecycle ---------------------------------------------------------------
    async def on_start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.coordinator.assignors.range import RangePartitionAssignor

        from streams.kafka.producer import compression_type

        s = self.settings
        use_rocksdb_budget(s.rocksdb_memory_mb)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=2,
                                         max_batch_size=256 * 1024, acks="all", max_request_size=4 << 20,
                                         compression_type=compression_type(s))
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=f"{s.app_id}-tables",
            enable_auto_commit=False,
            # every assigned partition is positioned explicitly (``_assign``); an out-of-range position must
            # surface (``_out_of_range``), not silently jump to the start of the log
            auto_offset_reset="none",
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=s.consume_partition_fetch_bytes,
            fetch_max_wait_ms=self._fetch_max_wait_ms(),
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=300_000,
        )
        from aiokafka import ConsumerRebalanceListener

        engine = self

        class _Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
                await engine._revoke({tp.partition for tp in revoked})

            async def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
                await engine._assign(assigned)

        self.consumer.subscribe(list(self._kinds), listener=_Listener())
        await self.consumer.start()
        self._run_task = self.add_future(self._run())
        self._watch_task = self.add_future(self._watch_inputs())

    async def on_stop(self) -> None:
        """Final checkpoint, then stores, consumer and producer closed; every wait bounded.

        Each wait runs at most ``shutdown_timeout_s``; what runs out is abandoned
        with a WARNING. That is safe: RocksDB holds the last committed checkpoint
        (one atomic batch) and the inputs after its offsets replay on restart.
        """
        from streams.metrics import STOP_ABANDONED

        timeout = self.settings.shutdown_timeout_s

        async def final_checkpoint() -> None:
            async with self._lock:  # the processing loop finishes its batch and stops (should_stop)
                await self._checkpoint_all(wait=True)

        t0 = time.monotonic()
        try:
            await asyncio.wait_for(final_checkpoint(), timeout)
        except asyncio.TimeoutError:
            STOP_ABANDONED.labels("checkpoint").inc()
            log.warning("stop: final checkpoint of partitions %s abandoned after %.1fs (broker unreachable?); the "
                        "state stays at its last committed checkpoint and the inputs after it replay on restart",
                        sorted(self.tables), timeout)
        except Exception as exc:
            log.error("stop: final checkpoint failed (%s: %s); the inputs after the last committed checkpoint "
                      "replay on restart", type(exc).__name__, exc)
        finally:
            await self._cancel_tasks()
            for p in list(self.tables):
                self.tables.pop(p).state.close()
            await self._stop_client(self.consumer, "consumer", timeout)
            await self._stop_client(self.producer, "producer", timeout)
            if self._admin is not None:
                try:
                    self._admin.close()
                except Exception:
                    pass
            log.info("table engine stopped in %.1fs", time.monotonic() - t0)

    async def _cancel_tasks(self) -> None:
        """Cancel the processing loop, the input watch and checkpoints in flight (nothing commits after)."""
        tasks = [t for t in (self._run_task, self._watch_task, *self._ckpt_tasks.values())
                 if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._ckpt_tasks.clear()

    async def _stop_client(self, client: Any, name: str, timeout: float) -> None:
        from streams.metrics import STOP_ABANDONED

        if client is None:
            return
        try:
            await asyncio.wait_for(client.stop(), timeout)
        except asyncio.TimeoutError:
            STOP_ABANDONED.labels(name).inc()
            log.warning("stop: the %s did not stop within %.1fs (broker unreachable?); abandoned%s", name, timeout,
                        " with unsent records (outputs after the last checkpoint are sent again on restart)"
                        if name == "producer" else "")
        except Exception as exc:
            log.warning("stop: the %s failed to stop cleanly: %s: %s", name, type(exc).__name__, exc)

    def _fetch_max_wait_ms(self) -> int:
        if self.settings.consume_fetch_max_wait_ms is not None:
            return self.settings.consume_fetch_max_wait_ms
        from streams.kafka.producer import one_record_per_batch

        # the embedded broker holds a fetch ~the whole wait (measured: produce->consume p99 268 ms at 500, 28 ms
        # at 50, throughput falls below ~50 ms): keep the wait short
        return 50 if one_record_per_batch(self.settings, self.bootstrap) else 500

    # -- partitions ----------------------------------------------------------------
    def _data_dir(self) -> Path:
        return Path(self.settings.data_dir) / "tables" / self.settings.app_id

    async def _assign(self, assigned: Any) -> None:
        """Open, recover and position the assigned partitions.

        An error here would only be logged by aiokafka's rebalance listener and
        leave the worker up owning nothing: it is stored and re-raised by ``_run``.
        """
        try:
            await self._assign_partitions(assigned)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._set_fatal(exc, "partition assignment")

    async def _assign_partitions(self, assigned: Any) -> None:
        async with self._lock:
            s = self.settings
            self._check_topology(assigned)
            if assigned:
                self._ids = await self._topic_ids([*self._kinds, self._changelog], patience_s=TOPIC_IDS_PATIENCE_S)
            for p in sorted({tp.partition for tp in assigned}):
                if p in self.tables:
                    continue
                state = PartitionState(open_backend(s.state_backend, self._data_dir(), f"p{p}"), p)
                try:
                    # the changelog's id is checked against the local marker's, the inputs' against the
                    # recovered state's (another worker may have processed a re-created input meanwhile)
                    await self._recover(p, state, changelog_recreated=self._changelog in self._recreated_topics(state))
                    recreated = self._recreated_topics(state)
                    recreated.pop(self._changelog, None)
                except BaseException:
                    state.close()
                    raise
                self.tables[p] = tables = PartitionTables(
                    state, seq_len=s.sequence_len, window_ms=int(s.attribution_window_s * 1000),
                    lateness_ms=int(s.allowed_lateness_s * 1000), emit=self._emitter(p),
                    retention_ms=int(s.user_retention_s * 1000))
                self._held[p] = _Held()
                for topic in sorted(recreated):
                    self._broker_reset("input", p, f"input {topic} was re-created (topic id {recreated[topic]}) "
                                       f"after this partition's state processed it up to offset "
                                       f"{tables.offsets.get(topic)}")
                    tables.offsets.pop(topic, None)  # the next checkpoint stores the new topic's offsets and id
                self._part_ids[p] = {**(state.meta.extra.get(TOPIC_IDS) or {}), **self._ids}
                await self._ship_outbox(state.meta.outbox)  # idempotent: fenced by (origin, ckpt)
            for tp in assigned:
                self._inputs.forget(tp)
                off = self.tables[tp.partition].offsets.get(tp.topic)
                if off is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, off + 1)
            log.info("assigned partitions %s", sorted(self.tables))

    async def _revoke(self, partitions: set[int]) -> None:
        """Checkpoint (bounded by ``shutdown_timeout_s``) and close the revoked partitions."""
        try:
            async with self._lock:
                for p in sorted(partitions):
                    if p in self.tables:
                        await self._checkpoint_before_close(p)
                        self.tables.pop(p).state.close()
                    self._outputs.pop(p, None)  # (acknowledged by the checkpoint, or replayed by the next owner)
                    self._verify_ids.pop(p, None)
                    held = self._held.pop(p, None)
                    if held is not None and held.paused:
                        self._resume(p)
                    self._emitted.pop(p, None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._set_fatal(exc, "partition revocation")

    async def _checkpoint_before_close(self, p: int) -> None:
        from streams.metrics import STOP_ABANDONED

        timeout = self.settings.shutdown_timeout_s
        in_flight = self._ckpt_tasks.get(p)

        async def final() -> None:
            await self._wait_checkpoint(p)
            await self._checkpoint(p, wait=True)

        try:
            await asyncio.wait_for(final(), timeout)
        except asyncio.TimeoutError:
            STOP_ABANDONED.labels("revoke_checkpoint").inc()
            log.warning("partition %d: checkpoint at revocation abandoned after %.1fs (broker unreachable?); the "
                        "next owner replays the inputs after the last committed checkpoint", p, timeout)
        except BrokerResetError:
            raise
        except Exception as exc:
            log.error("partition %d: checkpoint at revocation failed (%s: %s); the next owner replays the inputs "
                      "after the last committed checkpoint", p, type(exc).__name__, exc)
        finally:
            for task in (in_flight, self._ckpt_tasks.pop(p, None)):
                if task is not None and not task.done():
                    task.cancel()

    # -- broker resets (see streams/broker_reset.py) ---------------------------------
    def _set_fatal(self, exc: BaseException, where: str) -> None:
        if self._fatal is None:
            self._fatal = exc
            log.critical("%s failed: %s: %s. The table engine stops; the worker exits non-zero", where,
                         type(exc).__name__, exc)

    def _check_topology(self, assigned: Any) -> None:
        """Every input must have the configured partition count (co-partitioning; one state per partition)."""
        want = self.settings.partitions
        for topic in self._kinds:
            parts = self.consumer.partitions_for_topic(topic)
            if parts and len(parts) != want:
                raise TopologyError(
                    f"input topic {topic} has {len(parts)} partitions but FEEDRANK_PARTITIONS={want}: it was "
                    "probably auto-created (an embedded broker restarted empty and a client touched the topic "
                    "before `feedrank topics` / a worker start re-created it). Stop its producers, delete the "
                    f"topic and re-create it with {want} partitions (`ensure_topics`), then restart the worker")
        beyond = sorted({tp.partition for tp in assigned if tp.partition >= want})
        if beyond:
            raise TopologyError(f"assigned partitions {beyond} but FEEDRANK_PARTITIONS={want}")

    def _broker_reset(self, what: str, p: int, detail: str) -> None:
        """Count and report a broker reset of ``what`` on partition ``p``; raises under ``on_broker_reset=fail``."""
        from streams.metrics import BROKER_RESETS

        action = self.settings.on_broker_reset
        BROKER_RESETS.labels(what, action).inc()
        self.broker_resets += 1
        if action == "fail":
            raise BrokerResetError(f"broker reset on partition {p}: {detail}. {fail_advice(self.settings.app_id)}")
        log.warning("BROKER RESET on partition %d: %s. FEEDRANK_ON_BROKER_RESET=reseed: %s", p, detail,
                    consequence(what))

    async def _topic_ids(self, topics: list[str], patience_s: float = 0.0) -> dict[str, str]:
        """Current topic ids (KIP-516; real Kafka 2.8+ and tansu have them); {} when unavailable.

        A failed describe (the broker just came back and its node is not ready yet) is retried for up to
        ``patience_s``: without the ids, an input re-created and refilled past the stored offset would look
        processed.
        """
        deadline = time.monotonic() + patience_s
        pause = 0.25
        while True:
            ids, err = await self._describe_ids(topics)
            if err is None or time.monotonic() + pause > deadline:
                if err is not None:
                    log.info("topic ids unavailable (%s); re-created topics are found by their offsets only", err)
                return ids
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def _describe_ids(self, topics: list[str]) -> tuple[dict[str, str], str | None]:
        """One describe: (topic -> id, None), or ({}, the error)."""

        def describe() -> dict[str, str]:
            from kafka.admin import KafkaAdminClient

            with self._admin_lock:
                if self._admin is None:
                    self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
                described = self._admin.describe_topics(topics)
            return {d["name"]: str(d["topic_id"]) for d in described
                    if not d.get("error_code") and d.get("topic_id") and d.get("name")}

        try:
            return await asyncio.wait_for(asyncio.to_thread(describe), 15.0), None
        except Exception as exc:
            return {}, f"{type(exc).__name__}: {exc}"

    def _recreated_topics(self, state: PartitionState) -> dict[str, str]:
        """Topics whose id differs from the one ``state``'s offsets / changelog marker refer to: topic -> new id."""
        stored = state.meta.extra.get(TOPIC_IDS) or {}
        out = {}
        for topic, now in self._ids.items():
            was = stored.get(topic)
            if was and was != now and (topic == self._changelog or topic in state.meta.offsets):
                out[topic] = now
        return out

    async def _recover(self, p: int, state: PartitionState, changelog_recreated: bool = False) -> None:
        """Recover ``p`` from its changelog; a changelog the broker lost is re-seeded (or fails)."""
        if changelog_recreated:
            self._broker_reset("changelog", p, f"changelog {self._changelog} was re-created (topic id "
                                               f"{self._ids.get(self._changelog)}, not the one this partition's "
                                               "state wrote to)")
            await self._reseed(p, state)
            return
        try:
            # a broker error (e.g. the embedded broker's colliding produces to a re-created topic) is retried:
            # recovery writes a new fence each time and resumes from the last checkpoint it committed
            await self._retrying(f"partition {p}: recovery from {self._changelog}",
                                 lambda: recover_partition(state, self.producer, self.bootstrap, self._changelog),
                                 KafkaError)
        except ChangelogResetError as exc:
            self._broker_reset("changelog", p, str(exc))
            await self._reseed(p, state)
            return
        if reseed_pending(state):
            log.warning("partition %d: finishing a re-seed of %s that was interrupted", p, self._changelog)
            await self._reseed(p, state)

    async def _reseed(self, p: int, state: PartitionState) -> None:
        t0 = time.monotonic()
        ids = dict(state.meta.extra.get(TOPIC_IDS) or {})
        if self._changelog in self._ids:  # the marker now refers to the current changelog (inputs: unchanged)
            ids[self._changelog] = self._ids[self._changelog]
            self._part_ids.setdefault(p, {})[self._changelog] = self._ids[self._changelog]
        n = await self._retrying(f"partition {p}: re-seeding the changelog",
                                 lambda: reseed_changelog(state, self.producer, self._changelog,
                                                          extra={TOPIC_IDS: ids}), ChangelogError)
        self._reset_seen.add(p)
        self._quarantine(p)
        log.warning("partition %d: re-seeded the changelog %s from the local state: %d keys in %.1fs (marker at "
                    "offset %d); a later recovery restores the whole state from it", p, self._changelog, n,
                    time.monotonic() - t0, state.meta.changelog_offset)
        # Topics are not re-created from here: on the embedded broker a CreateTopics racing the clients'
        # auto-creation right after its restart re-created a topic under them (its produces then fail with
        # UnknownError). `ensure_topics` runs at every worker start (docs/reliability.md).

    async def _watch_inputs(self) -> None:
        """Find re-created inputs: by topic id after a proven reset, else by the fetch high watermark falling to
        or below the stored offset (``InputWatch``)."""
        while not self.should_stop:
            try:
                await asyncio.wait_for(self._watch_wake.wait(), WATCH_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
            self._watch_wake.clear()
            if self._fatal is not None or not self.tables:
                continue
            try:
                await self._verify_input_ids()
                async with self._lock:
                    now = time.monotonic()
                    for tp in list(self.consumer.assignment()):
                        tables = self.tables.get(tp.partition)
                        if tables is None:
                            continue
                        stored = tables.offsets.get(tp.topic)
                        hw = self.consumer.highwater(tp)
                        if self._inputs.observe(tp, stored, hw, now, proven=tp.partition in self._reset_seen):
                            await self._reset_input(
                                tp, f"input {tp.topic}[{tp.partition}] ends at offset {hw} (high watermark of "
                                    f"the latest fetch) but this partition's state has processed it up to offset "
                                    f"{stored}: the topic was re-created or truncated")
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self._set_fatal(exc, "input watch")

    async def _verify_input_ids(self) -> None:
        """For the partitions in ``_verify_ids``: an input whose topic id is not the one its stored offset refers
        to was re-created, possibly refilled past that offset already; read it from its start. While an input
        this partition has read has no id yet (the describe failed, or the topic is not re-created yet on a
        broker that has ids), the partition stays paused and this runs again on the next tick, for up to
        ``TOPIC_IDS_PATIENCE_S``; then it resumes with a WARNING, on the offset signals alone."""
        todo = set(self._verify_ids)
        if not todo:
            return
        ids, err = await self._describe_ids(sorted(self._kinds))
        has_ids = err is not None or bool(ids)  # False: a broker without topic ids (nothing to wait for)
        async with self._lock:
            for p in sorted(todo):
                tables = self.tables.get(p)
                if tables is None or p not in self._verify_ids:
                    self._unquarantine(p)
                    continue
                tps = sorted(tp for tp in self.consumer.assignment() if tp.partition == p)
                unknown = [tp.topic for tp in tps if has_ids and tables.offsets.get(tp.topic) is not None
                           and not ids.get(tp.topic)]
                if unknown and time.monotonic() - self._verify_ids[p] < TOPIC_IDS_PATIENCE_S:
                    continue  # next tick
                for tp in tps:
                    was, now = self._part_ids.get(p, {}).get(tp.topic), ids.get(tp.topic)
                    if not (was and now and was != now):
                        continue
                    if tables.offsets.get(tp.topic) is None:
                        self._part_ids[p][tp.topic] = now  # nothing read from it yet: nothing to redo
                    else:
                        await self._reset_input(
                            tp, f"input {tp.topic} was re-created (topic id {now}, not {was} that this partition's "
                                f"stored offset {tables.offsets.get(tp.topic)} refers to)", topic_id=now)
                if unknown:
                    log.warning("partition %d: no topic id for %s after %.0fs (%s); resuming, a re-created input is "
                                "found by its offsets only", p, unknown, TOPIC_IDS_PATIENCE_S, err or "topic absent")
                self._unquarantine(p)

    async def _reset_input(self, tp: Any, detail: str, topic_id: str | None = None) -> None:
        """Forget the stored offset of input ``tp`` (a new topic, whose id is read unless given) and read it
        from its start."""
        self._broker_reset("input", tp.partition, detail)
        tables = self.tables[tp.partition]
        tables.offsets.pop(tp.topic, None)  # the next checkpoint stores the new topic's offsets
        ids = self._part_ids.setdefault(tp.partition, {})
        now = topic_id or (await self._topic_ids([tp.topic])).get(tp.topic)
        if now:
            ids[tp.topic] = now
        else:  # unknown: record none rather than the old topic's
            ids.pop(tp.topic, None)
        self._inputs.forget(tp)
        if tp.topic == self.settings.topic_engagements:
            held = self._held.get(tp.partition)
            if held is not None:
                dropped = len(held.items)
                held.items.clear()
                held.since = 0.0
                if held.paused:
                    self._resume(tp.partition)
                if dropped:
                    log.warning("partition %d: dropped %d held engagements of the old topic", tp.partition, dropped)
        await self.consumer.seek_to_beginning(tp)

    async def _out_of_range(self, exc: BaseException) -> None:
        """The broker says a position is out of range (real Kafka): retention, or a truncated/re-created log."""
        from streams.metrics import BROKER_RESETS

        positions = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        async with self._lock:
            for tp, pos in positions.items():
                tables = self.tables.get(tp.partition)
                if tables is None or tp not in self.consumer.assignment():
                    continue
                try:
                    start = (await asyncio.wait_for(self.consumer.beginning_offsets([tp]), 10.0))[tp]
                except Exception as err:  # broker unreachable: the next fetch raises again
                    log.warning("offset %d of %s is out of range; its log start is unknown yet (%s)", pos, tp, err)
                    continue
                if classify_out_of_range(pos, start) == "retention":
                    BROKER_RESETS.labels("retention", "skip").inc()
                    log.warning("input %s[%d]: offset %d is below the log start %d: records %d..%d were deleted by "
                                "retention before this worker read them; continuing at %d", tp.topic, tp.partition,
                                pos, start, pos, start - 1, start)
                    self.consumer.seek(tp, start)
                else:
                    await self._reset_input(
                        tp, f"input {tp.topic}[{tp.partition}]: the broker answers offset {pos} (after the stored "
                            f"offset {tables.offsets.get(tp.topic)}) with OFFSET_OUT_OF_RANGE: the log was "
                            "truncated or re-created")

    def _emitter(self, p: int) -> Callable[[str, dict[str, Any]], None]:
        buf = self._emitted.setdefault(p, [])

        def emit(user_id: str, example: dict[str, Any]) -> None:
            buf.append((user_id, example))

        return emit

    # -- processing ----------------------------------------------------------------
    async def _run(self) -> None:
        interval = self.settings.checkpoint_interval_s
        max_records = self.settings.consume_max_records
        while not self.should_stop:
            if self._fatal is not None:
                raise self._fatal
            if self._ckpt_error is not None:
                raise self._ckpt_error
            try:
                data = await self._poll(max_records)
            except asyncio.CancelledError:
                raise
            except OffsetOutOfRangeError as exc:
                await self._out_of_range(exc)
                continue
            except NoOffsetForPartitionError:  # assigned, not positioned yet: ``_assign`` is at work
                async with self._lock:
                    pass
                await asyncio.sleep(0.05)
                continue
            except Exception as exc:
                if self._fatal is not None:
                    raise self._fatal from exc
                raise
            async with self._lock:
                if data:
                    await self._process(data)
                else:
                    if self.tables and not self.caught_up.is_set():
                        self.caught_up.set()
                    if any(h.items for h in self._held.values()):
                        await self._process({})  # the predictions input may have reached its end
                if time.monotonic() - self._last_ckpt >= interval:
                    await self._checkpoint_all()

    async def _poll(self, max_records: int) -> dict[Any, list[Any]]:
        """One poll: the prediction logs already fetched first, then up to ``max_records`` of any input.

        Held engagements wait for proof that their partition's logs are read up to the latest fetch's
        high watermark (``_exhausted``). A fetch response covers every assigned partition, and when far
        behind it holds ~250 KiB of each, which plain polls hand out partition by partition over seconds:
        the few logs of a response could come last, and the engagements waited that long.
        """
        logs = [tp for tp in self.consumer.assignment() if tp.topic == self.settings.topic_predictions]
        first = await self.consumer.getmany(*logs, timeout_ms=0, max_records=max_records) if logs else {}
        data = await self.consumer.getmany(timeout_ms=0 if first else 20, max_records=max_records)
        for tp, msgs in first.items():
            data[tp] = msgs + data.get(tp, [])
        return data

    def _decode(self, kind: str, topic: str, p: int, m: Any) -> Any:
        """The event (or prediction header) of one record, or a ``DeadLetter``."""
        if kind == "prediction":
            try:
                ev: Any = decode_prediction_header(m.value)
            except PredictionDecodeError as exc:
                return DeadLetter(topic, p, m.offset, m.key, m.value, exc.reason)
            if m.key is not None and m.key != ev.user_id.encode():
                return DeadLetter(topic, p, m.offset, m.key, m.value, "key: message key must equal user_id")
            return ev
        model = Impression if kind == "impression" else Engagement
        try:
            ev = decode_event_fast(m.value, model)
        except EventDecodeError:
            return decode_message(topic, p, m.offset, m.key, m.value, model, m.timestamp)  # the reason
        except Exception:  # defensive: decode_message turns a validator bug into a dead letter
            return decode_message(topic, p, m.offset, m.key, m.value, model, m.timestamp)
        if m.key is not None and m.key != ev.user_id.encode():
            return DeadLetter(topic, p, m.offset, m.key, m.value,
                              "key: message key must equal user_id (co-partitioning by user)")
        return ev

    async def _yield(self) -> None:
        """Let the event loop run (``/score`` requests) when this batch has held it ``YIELD_S``."""
        now = time.perf_counter()
        if now - self._slice_t0 >= YIELD_S:
            await asyncio.sleep(0)
            self._slice_t0 = time.perf_counter()

    async def _process(self, data: dict[Any, list[Any]]) -> None:
        """Apply one poll's records, in slices of ``SLICE`` that yield to the loop between them.

        The order of application is the same as one pass over the batch (the
        engine holds its lock throughout: no checkpoint or rebalance cuts in);
        yielding only lets request handlers read the tables meanwhile.
        """
        from streams.metrics import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED, EVENTS_VALID

        kinds, order = self._kinds, self._order
        n_valid = {"impression": 0, "engagement": 0, "prediction": 0}
        touched = set(self._held)
        self._slice_t0 = time.perf_counter()
        for tp in sorted(data, key=lambda tp: (tp.partition, order.get(tp.topic, 9))):
            all_msgs = data[tp]
            tables = self.tables.get(tp.partition)
            if tables is None or not all_msgs:
                continue
            topic, p = tp.topic, tp.partition
            kind = kinds[topic]
            EVENTS_CONSUMED.labels(topic).inc(len(all_msgs))
            fence = tables.offsets.get(topic, -1)
            held = self._held[p] if kind == "engagement" else None
            if held is not None:
                now_ms = time.time() * 1000.0
                self.delivery.add_many([now_ms - m.timestamp for m in all_msgs])
            for start in range(0, len(all_msgs), SLICE):
                msgs = all_msgs[start:start + SLICE]
                items = []
                for m in msgs:
                    out = self._decode(kind, topic, p, m)
                    if isinstance(out, DeadLetter):
                        if m.offset > fence:
                            await self._dead_letter(out)
                            EVENTS_DEAD_LETTERED.labels(topic, out.kind if kind != "prediction" else "prediction").inc()
                        if held is not None:
                            held.items.append((m.offset, None, 0))
                        continue
                    item = (kind, m.offset, out, m.value)
                    if held is not None:
                        held.items.append((m.offset, item, m.timestamp))
                    else:
                        items.append(item)
                if held is None:
                    # the last offset also covers dead-lettered messages at the end of the slice
                    applied = tables.process(topic, items)  # re-delivered records are fenced, not counted
                    if msgs[-1].offset > tables.offsets.get(topic, -1):
                        tables.offsets[topic] = msgs[-1].offset
                    n_valid[kind] += applied
                    self.processed += applied
                # else: applied below, in event-time step with the predictions
                await self._yield()
        for p in touched:
            while True:
                applied, more = self._release(p, SLICE)
                n_valid["engagement"] += applied
                self.processed += applied
                if not more:
                    break
                await self._yield()
        await self._send_emitted()
        for k, n in n_valid.items():
            if n:
                EVENTS_VALID.labels(k).inc(n)

    def _exhausted(self, topic: str, p: int, tables: PartitionTables, since_ms: int) -> bool:
        """Everything on partition ``p`` of ``topic`` that was produced before ``since_ms`` is applied.

        True when the applied prediction offset reached the high watermark of a
        fetch response that came back at least ``EXHAUSTED_MARGIN_MS`` after
        ``since_ms`` (the producer timestamp of the held engagement): an older
        response may predate predictions that were produced before it.
        """
        from aiokafka import TopicPartition

        tp = TopicPartition(topic, p)
        hw = self.consumer.highwater(tp)
        seen = self.consumer.last_poll_timestamp(tp)
        if hw is None or seen is None or seen < since_ms + EXHAUSTED_MARGIN_MS:
            return False
        return tables.offsets.get(topic, -1) + 1 >= hw

    def _release(self, p: int, limit: int = 1 << 62) -> tuple[int, bool]:
        """Apply up to ``limit`` held engagements of ``p`` that the other inputs allow.

        Returns how many were applied and whether the limit stopped it (more may be releasable).
        """
        held = self._held.get(p)
        tables = self.tables.get(p)
        if held is None or tables is None or not held.items:
            return 0, False
        q = held.items
        topic = self.settings.topic_engagements
        # an engagement may close the windows of impressions up to A + L before it, and a log
        # expires 2A + L after its request: both inputs must have been read that far
        leads = ((self.settings.topic_predictions, tables.wm_pred), (self.settings.topic_impressions, tables.join.wm_imp))
        limits = [wm + self._align_ms for _t, wm in leads]
        batch: list[Any] = []
        eng_ts: list[int] = []
        last = -1
        while q and len(batch) < limit:
            off, item, ts_ms = q[0]
            if item is not None and item[2].ts > min(limits):
                for i, (lead_topic, _wm) in enumerate(leads):
                    if item[2].ts > limits[i] and self._exhausted(lead_topic, p, tables, ts_ms):
                        limits[i] = 1 << 62  # nothing older left to read on that input
                if item[2].ts > min(limits):
                    now = time.monotonic()
                    if not held.since:
                        held.since = now
                    if now - held.since < HOLD_MAX_WAIT_S:
                        break
                    self.held_releases_forced += 1
                    log.warning("partition %d: engagements held %.0fs for predictions/impressions that do not "
                                "come; releasing %d", p, now - held.since, len(q))
                    limits = [1 << 62]  # everything held now
            q.popleft()
            held.since = 0.0
            last = off
            if item is not None:
                batch.append(item)
                eng_ts.append(ts_ms)
        applied = tables.process(topic, batch) if batch else 0
        if last > tables.offsets.get(topic, -1):
            tables.offsets[topic] = last
        if eng_ts:  # visible from here on (read-your-own-writes through the record cache)
            from streams.metrics import FRESHNESS_SECONDS

            now_ms = time.time() * 1000.0
            fresh = [now_ms - t for t in eng_ts]
            self.freshness.add_many(fresh)
            FRESHNESS_SECONDS.observe(max(fresh) / 1000.0)
        if not held.paused and len(q) > HOLD_PAUSE:
            self._pause(p)
        elif held.paused and len(q) < HOLD_RESUME:
            self._resume(p)
        return applied, bool(q) and len(batch) >= limit

    def _quarantine(self, p: int) -> None:
        """Pause ``p``'s inputs until the watch has compared their topic ids (``_verify_input_ids``)."""
        self._verify_ids.setdefault(p, time.monotonic())
        tps = [tp for tp in self.consumer.assignment() if tp.partition == p]
        if tps:
            self.consumer.pause(*tps)
        self._watch_wake.set()

    def _unquarantine(self, p: int) -> None:
        if self._verify_ids.pop(p, None) is None:
            return
        held = self._held.get(p)
        tps = [tp for tp in self.consumer.assignment() if tp.partition == p
               and not (tp.topic == self.settings.topic_engagements and held is not None and held.paused)]
        if tps:
            self.consumer.resume(*tps)

    def _pause(self, p: int) -> None:
        from aiokafka import TopicPartition

        self.consumer.pause(TopicPartition(self.settings.topic_engagements, p))
        self._held[p].paused = True

    def _resume(self, p: int) -> None:
        from aiokafka import TopicPartition

        tp = TopicPartition(self.settings.topic_engagements, p)
        if tp in self.consumer.assignment() and p not in self._verify_ids:  # (else ``_unquarantine`` resumes it)
            self.consumer.resume(tp)
        if p in self._held:
            self._held[p].paused = False

    async def _dead_letter(self, dl: DeadLetter) -> None:
        self.dead_lettered += 1
        log.warning("dead-lettered %s[%d]@%d: %s", dl.topic, dl.partition, dl.offset, dl.reason)
        fut = await self.producer.send(self.settings.topic_dlq, key=dl.key, value=dl.value,
                                       headers=dl.headers(), partition=dl.partition)
        self._outputs.setdefault(dl.partition, []).append(fut)

    async def _send_emitted(self) -> None:
        topic = self.settings.topic_labeled
        dumps = orjson.dumps
        for p, buf in self._emitted.items():
            if not buf:
                continue
            records = [(user_id.encode(), dumps(ex), [("feedrank.example_id", ex["example_id"].encode())])
                       for user_id, ex in buf]
            buf.clear()
            self._outputs.setdefault(p, []).extend(await send_records(self.producer, topic, p, records))

    # -- checkpoints ---------------------------------------------------------------
    async def _checkpoint_all(self, wait: bool = False) -> None:
        """Start a checkpoint of every partition with none in flight (``wait``: all, and await them)."""
        self._last_ckpt = time.monotonic()
        for p in list(self.tables):
            if wait:
                await self._wait_checkpoint(p)
            await self._checkpoint(p, wait=wait)

    async def _wait_checkpoint(self, p: int) -> None:
        task = self._ckpt_tasks.get(p)
        if task is not None:
            try:
                await asyncio.shield(task)
            finally:
                if task.done() and self._ckpt_tasks.get(p) is task:  # a cancelled waiter leaves it registered
                    self._ckpt_tasks.pop(p, None)

    async def _checkpoint(self, p: int, wait: bool = False) -> None:
        task = self._ckpt_tasks.get(p)
        if task is not None:
            if not task.done():
                return  # one in flight per partition; the next interval takes the rest
            self._ckpt_tasks.pop(p)
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        tables = self.tables[p]
        outs = self._outputs.pop(p, [])
        if not tables.dirty:
            if outs:
                await asyncio.gather(*outs)
            return
        snap, meta = tables.prepare()
        ids = self._part_ids.get(p)
        if ids:
            meta.extra[TOPIC_IDS] = dict(ids)  # the topics this checkpoint's offsets and marker refer to
        coro = self._write_checkpoint(p, tables, snap, meta, outs)
        if wait:
            await coro
            return
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._checkpoint_done)
        self._ckpt_tasks[p] = task

    def _checkpoint_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and self._ckpt_error is None:
            self._ckpt_error = task.exception()
            log.error("checkpoint failed: %s", self._ckpt_error)

    async def _write_checkpoint(self, p: int, tables: PartitionTables, snap: Any, meta: Any,
                                outs: list[asyncio.Future[Any]]) -> None:
        from aiokafka import TopicPartition

        if outs:
            await asyncio.gather(*outs)  # labeled examples / dead letters of the interval are acknowledged
        while not snap.serialize(2000):  # in chunks: fresh events are processed in between
            await asyncio.sleep(0)
        changes = snap.changes

        async def write() -> bool:
            """Write the delta; True when the broker lost the changelog (raises under on_broker_reset=fail)."""
            try:
                meta.changelog_offset = await write_checkpoint(self.producer, self._changelog, p, changes, meta,
                                                               after=tables.state.meta.changelog_offset)
                return False
            except ChangelogResetError as exc:
                self._broker_reset("changelog", p, str(exc))
                meta.changelog_offset = exc.marker
                return True

        reset = await self._retrying(f"partition {p}: changelog write of the checkpoint", write, ChangelogError)
        if self.tables.get(p) is not tables:
            return  # revoked meanwhile (the revocation awaited us; nothing else to do)
        if reset:
            # the delta is valid: commit it flagged, then write the whole state after it
            tables.committed(changes, replace(meta, extra={**meta.extra, RESEED_PENDING: True}))
            self._ids.update(await self._topic_ids([self._changelog], patience_s=TOPIC_IDS_PATIENCE_S))
            await self._reseed(p, tables.state)
        else:
            tables.committed(changes, meta)
        self.checkpoints += 1
        await self._ship_outbox(meta.outbox)
        try:
            await asyncio.wait_for(
                self.consumer.commit({TopicPartition(t, p): o + 1 for t, o in meta.offsets.items()}), COMMIT_TIMEOUT_S)
        except Exception as exc:  # informational commit; the state's offsets are the truth
            log.debug("consumer offset commit for partition %d skipped: %s", p, exc)

    async def _ship_outbox(self, outbox: dict[str, Any]) -> None:
        """Send a checkpoint's feedback delta; failures are retried (the view dedups by origin and ckpt)."""
        if outbox:
            await self._retrying(f"shipping the feedback delta of checkpoint {outbox.get('ckpt')}",
                                 lambda: self._send_outbox(outbox), Exception)

    async def _retrying(self, what: str, op: Callable[[], Awaitable[_T]],
                        retry_on: type[BaseException] | tuple[type[BaseException], ...]) -> _T:
        """``await op()``, retried every 0.5 s for ``CHANGELOG_RETRY_S`` on ``retry_on`` (not after stop).

        Safe for what it wraps: an unfinished changelog attempt is a tail
        without marker, feedback deltas are deduplicated by origin and checkpoint,
        and a recovery attempt writes a new fence and resumes from its last commit.
        """
        deadline = time.monotonic() + CHANGELOG_RETRY_S
        while True:
            try:
                return await op()
            except retry_on as exc:
                if time.monotonic() > deadline or self.should_stop:
                    raise
                log.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
                await asyncio.sleep(0.5)

    async def _send_outbox(self, outbox: dict[str, Any]) -> None:
        origin, ckpt = int(outbox["origin"]), int(outbox["ckpt"])
        topic = self.settings.topic_feedback_deltas
        futs = []
        for seg, tiles in outbox["delta"].items():
            value = json.dumps({"origin": origin, "ckpt": ckpt, "segment": seg, "tiles": tiles},
                               separators=(",", ":")).encode()
            futs.append(await self.producer.send(topic, key=seg.encode(), value=value))
        for r in await asyncio.gather(*futs, return_exceptions=True):  # every outcome retrieved
            if isinstance(r, BaseException):
                raise r

    # -- reads -----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        per = {p: {**t.stats(), "held_engagements": len(self._held[p].items) if p in self._held else 0}
               for p, t in sorted(self.tables.items())}
        p50, p99 = self.freshness.percentiles(0.5, 0.99)
        return {"partitions": sorted(self.tables), "processed": self.processed,
                "dead_lettered": self.dead_lettered, "checkpoints": self.checkpoints,
                "held_engagements": sum(len(h.items) for h in self._held.values()),
                "open_deadlines": sum(s.get("open_deadlines", 0) for s in per.values()),
                "held_releases_forced": self.held_releases_forced,
                "freshness_ms": {"p50": p50, "p99": p99}, "join": per,
                "offsets": {p: dict(t.offsets) for p, t in sorted(self.tables.items())}}
