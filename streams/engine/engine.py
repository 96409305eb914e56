"""The table engine: consumes the event topics in batches and keeps the stream tables.

Why not a Faust agent for the hot path: measured on this 2-core machine, a
Faust 0.15.3 agent moves 2,000 to 3,300 events/s with one table write per
event (its per-message hand-off from consumer to stream costs several asyncio
tasks and loop turns), while this engine does 25,000 to 38,000 events/s with
all its tables (docs/faust-decision.md). The crash guarantee also needs to
*seek* each partition to the offsets stored with its state when it is
assigned, which Faust's stream/commit machinery does not let us own. So the
engine is a ``mode.Service`` started by the Faust app (Faust keeps the web
server, the lifecycle and the CLI) that drives its own aiokafka consumer:

- one consumer group ``<app_id>-tables`` over impressions, engagements and
  predictions, range assignment so partition p of the three topics lands on
  the same worker (one *task* per partition number);
- on assignment: open the partition's RocksDB, recover it from the changelog,
  re-ship its outbox, seek every topic to the committed offset + 1;
  on revocation: checkpoint and close.

Its other jobs live in modules of their own, mixed into ``TableEngine``:
``checkpointing`` (the commit protocol), ``alignment`` (event-time alignment
of engagements with the prediction logs), ``reset_watch`` (a broker that lost
data) and ``freshness`` (produce-to-visible delays).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import mode
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

from features.events import Engagement, Impression, decode_event_fast
from features.predictions import PredictionDecodeError, decode_prediction_header

from streams.kafka.broker_reset import InputWatch
from streams.engine.ingest import DeadLetter, TimeBounds, breaks_rules, decode_message, key_problem
from streams.engine.repartition import Router, forward_problem, origin_headers
from streams.kafka.topics import repartition_topic
from streams.settings import Settings
from streams.engine.state import PartitionState, open_backend
from streams.engine.state.backend import RocksDBMemoryCollector, configure_rocksdb, rocksdb_resources
from streams.engine.state.changelog import changelog_topic
from streams.engine.state.recovery import TOPIC_IDS
from streams.engine.tables import PartitionTables
from streams.engine.alignment import AlignmentMixin, DeliveryDelay, Held
from streams.engine.checkpointing import CheckpointMixin
from streams.engine.freshness import FreshnessLog
from streams.engine.reset_watch import ResetWatchMixin
from streams.kafka.security import kafka_options

log = logging.getLogger(__name__)

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

#: records applied between two chances for the event loop to run other tasks (``/score``) ...
SLICE = 64
#: ... taken when the batch has held the loop this long (a slice of 64 events is ~5 ms of work)
YIELD_S = 0.004


def lag_behind(inputs: Iterable[tuple[int, int, int | None]], now_ms: float) -> int:
    """How far tables are behind their inputs, from each input's ``(next offset handed to the tables, producer
    timestamp of that newest record, high watermark or None)``: the age of the newest record of an input with
    newer records at the broker, the largest over the inputs; 0 when each is read to its end (or unknown)."""
    worst = 0.0
    for next_offset, ts, hw in inputs:
        if hw is not None and hw > next_offset and ts > 0:
            worst = max(worst, now_ms - ts)
    return int(worst)


class TableEngine(AlignmentMixin, CheckpointMixin, ResetWatchMixin, mode.Service):
    """Keeps every stream table of the partitions this worker owns."""

    def __init__(self, settings: Settings, bootstrap: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.settings = settings
        self.bootstrap = bootstrap
        self.tables: dict[int, PartitionTables] = {}
        self.freshness = FreshnessLog()
        #: produce-to-received delays (ms) of engagements: the broker's and producer's share of freshness
        self.delivery = FreshnessLog()
        #: how late records reach the broker lately (the alignment's margin, ``streams.engine.alignment``)
        self.delivery_delay = DeliveryDelay()
        self._fetch_gaps: dict[Any, float] = {}  # tp -> when its fetches stopped succeeding (ms)
        #: tp -> (gap start, stamp its producers must reach) after a gap, until a record proves them back (ms)
        self._recovering: dict[Any, tuple[float, float]] = {}
        self._last_fetch: dict[Any, tuple[int, int]] = {}  # tp -> (high watermark, time) of its last fetch response
        #: event input tp -> (next offset, producer timestamp ms) of the newest record handed to the tables
        self._fetched: dict[Any, tuple[int, int]] = {}
        self.processed = 0
        self.dead_lettered = 0
        self.checkpoints = 0
        self.held_releases_forced = 0
        self._changelog = changelog_topic(settings.app_id)
        rep_imp = repartition_topic(settings.app_id, settings.topic_impressions)
        rep_eng = repartition_topic(settings.app_id, settings.topic_engagements)
        self._kinds = {
            settings.topic_impressions: "impression",
            settings.topic_engagements: "engagement",
            settings.topic_predictions: "prediction",
            rep_imp: "impression",
            rep_eng: "engagement",
        }
        self._order = {settings.topic_predictions: 0, settings.topic_impressions: 1, rep_imp: 2,
                       settings.topic_engagements: 3, rep_eng: 4}
        #: event inputs -> their repartition topic (records of a user on another partition are forwarded)
        self._forward_to = {settings.topic_impressions: rep_imp, settings.topic_engagements: rep_eng}
        self._repartitioned = set(self._forward_to.values())
        self._route = Router(settings.partitions)
        self._bounds = TimeBounds.of(settings)
        self.forwarded = 0
        self._outputs: dict[int, list[asyncio.Future[Any]]] = {}
        self._emitted: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self._held: dict[int, Held] = {}
        self._ckpt_tasks: dict[int, asyncio.Task[None]] = {}
        self._ckpt_error: BaseException | None = None
        self._align_ms = int((settings.attribution_window_s + settings.allowed_lateness_s) * 1000)
        self._last_ckpt = time.monotonic()
        self._slice_t0 = 0.0
        self._lock = asyncio.Lock()
        self.consumer: Any = None
        self.producer: Any = None
        self._embedded = False
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

        from streams.kafka.producer import compression_type, one_record_per_batch

        s = self.settings
        use_rocksdb_budget(s.rocksdb_memory_mb)
        #: the embedded broker's mode (streams.kafka.embedded): short fetch waits, no idempotent producer
        self._embedded = one_record_per_batch(s, self.bootstrap)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=2,
                                         max_batch_size=256 * 1024, acks="all", max_request_size=4 << 20,
                                         enable_idempotence=not self._embedded,
                                         compression_type=compression_type(s), **kafka_options("aiokafka", s))
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            **kafka_options("aiokafka", s),
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
        # the embedded broker holds a fetch ~the whole wait (measured: produce->consume p99 268 ms at 500, 28 ms
        # at 50, throughput falls below ~50 ms): keep the wait short
        return 50 if self._embedded else 500

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
                self._ids = await self._topic_ids_patiently([*self._kinds, self._changelog])
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
                self._held[p] = Held()
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


    # -- broker resets (see streams/broker_reset.py) ---------------------------------
    def _set_fatal(self, exc: BaseException, where: str) -> None:
        if self._fatal is None:
            self._fatal = exc
            log.critical("%s failed: %s: %s. The table engine stops; the worker exits non-zero", where,
                         type(exc).__name__, exc)


        # Topics are not re-created from here: on the embedded broker a CreateTopics racing the clients'
        # auto-creation right after its restart re-created a topic under them (its produces then fail with
        # UnknownError). `ensure_topics` runs at every worker start (docs/reliability.md).


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
            self._watch_fetch_gaps(data)
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
            why = key_problem(m.key, ev.user_id)
            return ev if why is None else DeadLetter(topic, p, m.offset, m.key, m.value, why)
        model = Impression if kind == "impression" else Engagement
        try:
            ev = decode_event_fast(m.value, model)
        except Exception:  # EventDecodeError or a validator bug: decode_message gives the reason
            return decode_message(topic, p, m.offset, m.key, m.value, model, m.timestamp, self._bounds)
        why = breaks_rules(m.key, ev, m.timestamp, self._bounds)
        return ev if why is None else DeadLetter(topic, p, m.offset, m.key, m.value, why)

    async def _forward(self, topic: str, p: int, m: Any, target: int) -> None:
        """Send a record of ``topic`` that belongs to partition ``target`` through the repartition topic."""
        from streams.metrics import EVENTS_REPARTITIONED

        fut = await self.producer.send(self._forward_to[topic], key=m.key, value=m.value, partition=target,
                                       timestamp_ms=m.timestamp if m.timestamp > 0 else None,
                                       headers=origin_headers(topic, p, m.offset))
        self._outputs.setdefault(p, []).append(fut)
        self.forwarded += 1
        EVENTS_REPARTITIONED.labels(topic).inc()

    def _forwarded_problem(self, tables: PartitionTables, p: int, m: Any, ev: Any) -> str | None:
        """Why a record of a repartition topic is not applied here: None to apply it, "" for a re-sent forward."""
        origin, why = forward_problem(m.headers, self._route(ev.user_id), p)
        if origin is None:
            return why
        return None if tables.origins.admit(*origin) else ""

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
            self._observe_delivery(tp, all_msgs)
            if kind != "prediction":
                self._fetched[tp] = (all_msgs[-1].offset + 1, all_msgs[-1].timestamp)
            held = self._held[p] if topic == self.settings.topic_engagements else None
            if held is not None:
                now_ms = time.time() * 1000.0
                self.delivery.add_many([now_ms - m.timestamp for m in all_msgs])
            for start in range(0, len(all_msgs), SLICE):
                msgs = all_msgs[start:start + SLICE]
                items = []
                for m in msgs:
                    out = self._decode(kind, topic, p, m)
                    if kind != "prediction" and not isinstance(out, DeadLetter):
                        if topic in self._repartitioned:
                            why = self._forwarded_problem(tables, p, m, out) if m.offset > fence else None
                            if why == "":
                                continue  # a forward sent again after a crash: applied before
                            if why is not None:
                                out = DeadLetter(topic, p, m.offset, m.key, m.value, why)
                        elif (target := self._route(out.user_id)) != p:
                            if m.offset > fence:
                                await self._forward(topic, p, m, target)
                            if held is not None:
                                held.items.append((m.offset, None, 0))
                            continue
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


    # -- reads -----------------------------------------------------------------
    def behind_ms(self, partition: int, now_ms: float | None = None) -> int:
        """How far ``partition``'s tables are behind their event inputs: the age of the newest record handed
        to them from an input the broker holds newer records of (0 when every input is read to its end).

        A request served meanwhile sees the tables without everything produced since: the online/offline
        consistency check counts those events as in flight, not as a mismatch (``scorer.consistency``)."""
        consumer = self.consumer
        if consumer is None:
            return 0
        return lag_behind([(next_offset, ts, consumer.highwater(tp)) for tp, (next_offset, ts) in self._fetched.items()
                           if tp.partition == partition], time.time() * 1000.0 if now_ms is None else now_ms)

    def stats(self) -> dict[str, Any]:
        per = {p: {**t.stats(), "held_engagements": len(self._held[p].items) if p in self._held else 0}
               for p, t in sorted(self.tables.items())}
        p50, p99 = self.freshness.percentiles(0.5, 0.99)
        return {"partitions": sorted(self.tables), "processed": self.processed,
                "dead_lettered": self.dead_lettered, "forwarded": self.forwarded, "checkpoints": self.checkpoints,
                "held_engagements": sum(len(h.items) for h in self._held.values()),
                "open_deadlines": sum(s.get("open_deadlines", 0) for s in per.values()),
                "held_releases_forced": self.held_releases_forced,
                "delivery_delay_ms": round(self.delivery_delay.current_ms(time.monotonic())),
                "freshness_ms": {"p50": p50, "p99": p99}, "join": per,
                "offsets": {p: dict(t.offsets) for p, t in sorted(self.tables.items())}}
