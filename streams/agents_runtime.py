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
import time
from collections import deque
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import mode

from features.events import Engagement, EventDecodeError, Impression, decode_event_fast
from features.predictions import PredictionDecodeError, decode_prediction_header

from .ingest import Decoded, DeadLetter, decode_message
from .settings import Settings
from .state import PartitionState, open_backend
from .state.changelog import changelog_topic
from .state.recovery import recover_partition, send_records, write_checkpoint
from .tables import PartitionTables

log = logging.getLogger(__name__)

Processor = Callable[[Sequence[Decoded]], Awaitable[None]]

#: held engagements of one partition above which its engagement input is paused / below which resumed
HOLD_PAUSE = 20_000
HOLD_RESUME = 5_000
#: a held queue that makes no progress this long is released anyway (a predictions input that
#: never reports its end would otherwise stall the partition)
HOLD_MAX_WAIT_S = 10.0
#: a fetch response must be this much newer than a held engagement to prove the predictions input
#: has nothing older left (margin for clock skew between producers and this worker)
EXHAUSTED_MARGIN_MS = 1000


class FreshnessLog:
    """Produce-to-visible delays (ms) of engagements: a bounded sample ring and counters."""

    def __init__(self, maxlen: int = 200_000) -> None:
        self.samples: deque[float] = deque(maxlen=maxlen)

    def add_many(self, values: list[float]) -> None:
        self.samples.extend(values)

    def percentiles(self, *qs: float) -> list[float]:
        data = sorted(self.samples)
        if not data:
            return [float("nan")] * len(qs)
        return [data[min(len(data) - 1, int(q * len(data)))] for q in qs]


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

    def __init__(self, settings: Settings, bootstrap: str, *, processors: Sequence[Processor] = (),
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.settings = settings
        self.bootstrap = bootstrap
        self.processors = list(processors)
        self.tables: dict[int, PartitionTables] = {}
        self.freshness = FreshnessLog()
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
        self._lock = asyncio.Lock()
        self.consumer: Any = None
        self.producer: Any = None
        self.caught_up = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------
    async def on_start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.coordinator.assignors.range import RangePartitionAssignor

        s = self.settings
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=2,
                                         max_batch_size=256 * 1024, acks="all", max_request_size=4 << 20)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=f"{s.app_id}-tables",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=s.consume_partition_fetch_bytes,
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
        self.add_future(self._run())

    async def on_stop(self) -> None:
        try:
            async with self._lock:
                await self._checkpoint_all(wait=True)
                for p in list(self.tables):
                    self.tables.pop(p).state.close()
        finally:
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()

    # -- partitions ----------------------------------------------------------------
    def _data_dir(self) -> Path:
        return Path(self.settings.data_dir) / "tables" / self.settings.app_id

    async def _assign(self, assigned: Any) -> None:
        async with self._lock:
            s = self.settings
            for p in sorted({tp.partition for tp in assigned}):
                if p in self.tables:
                    continue
                state = PartitionState(open_backend(s.state_backend, self._data_dir(), f"p{p}"), p)
                await recover_partition(state, self.producer, self.bootstrap, self._changelog)
                self.tables[p] = PartitionTables(
                    state, seq_len=s.sequence_len, window_ms=int(s.attribution_window_s * 1000),
                    lateness_ms=int(s.allowed_lateness_s * 1000), emit=self._emitter(p),
                    retention_ms=int(s.user_retention_s * 1000))
                self._held[p] = _Held()
                await self._ship_outbox(state.meta.outbox)  # idempotent: fenced by (origin, ckpt)
            for tp in assigned:
                off = self.tables[tp.partition].offsets.get(tp.topic)
                if off is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, off + 1)
            log.info("assigned partitions %s", sorted(self.tables))

    async def _revoke(self, partitions: set[int]) -> None:
        async with self._lock:
            for p in sorted(partitions):
                if p in self.tables:
                    await self._wait_checkpoint(p)
                    await self._checkpoint(p, wait=True)
                    self.tables.pop(p).state.close()
                held = self._held.pop(p, None)
                if held is not None and held.paused:
                    self._resume(p)
                self._emitted.pop(p, None)

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
            if self._ckpt_error is not None:
                raise self._ckpt_error
            try:
                data = await self.consumer.getmany(timeout_ms=20, max_records=max_records)
            except asyncio.CancelledError:
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

    async def _process(self, data: dict[Any, list[Any]]) -> None:
        from .metrics import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED, EVENTS_VALID, FRESHNESS_SECONDS

        kinds, order = self._kinds, self._order
        good: list[Decoded] = []
        eng_ts: list[int] = []
        n_valid = {"impression": 0, "engagement": 0, "prediction": 0}
        want_good = bool(self.processors)
        touched = set(self._held)
        for tp in sorted(data, key=lambda tp: (tp.partition, order.get(tp.topic, 9))):
            msgs = data[tp]
            tables = self.tables.get(tp.partition)
            if tables is None or not msgs:
                continue
            topic, p = tp.topic, tp.partition
            kind = kinds[topic]
            EVENTS_CONSUMED.labels(topic).inc(len(msgs))
            fence = tables.offsets.get(topic, -1)
            held = self._held[p] if kind == "engagement" else None
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
                if want_good and kind != "prediction":
                    good.append(Decoded(out, topic, p, m.offset, m.timestamp))
            if held is not None:
                continue  # applied below, in event-time step with the predictions
            # the last offset also covers dead-lettered messages at the end of the batch
            applied = tables.process(topic, items)  # re-delivered records are fenced, not counted
            if msgs[-1].offset > tables.offsets.get(topic, -1):
                tables.offsets[topic] = msgs[-1].offset
            n_valid[kind] += applied
            self.processed += applied
        for p in touched:
            applied = self._release(p, eng_ts)
            n_valid["engagement"] += applied
            self.processed += applied
        await self._send_emitted()
        now_ms = time.time() * 1000.0
        if eng_ts:
            fresh = [now_ms - t for t in eng_ts]
            self.freshness.add_many(fresh)
            FRESHNESS_SECONDS.observe(max(fresh) / 1000.0)
        for k, n in n_valid.items():
            if n:
                EVENTS_VALID.labels(k).inc(n)
        for proc in self.processors:
            await proc(good)

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

    def _release(self, p: int, eng_ts: list[int]) -> int:
        """Apply the held engagements of ``p`` that the predictions input allows; returns how many."""
        held = self._held.get(p)
        tables = self.tables.get(p)
        if held is None or tables is None or not held.items:
            return 0
        q = held.items
        topic = self.settings.topic_engagements
        # an engagement may close the windows of impressions up to A + L before it, and a log
        # expires 2A + L after its request: both inputs must have been read that far
        leads = ((self.settings.topic_predictions, tables.wm_pred), (self.settings.topic_impressions, tables.join.wm_imp))
        limits = [wm + self._align_ms for _t, wm in leads]
        batch: list[Any] = []
        last = -1
        while q:
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
        if not held.paused and len(q) > HOLD_PAUSE:
            self._pause(p)
        elif held.paused and len(q) < HOLD_RESUME:
            self._resume(p)
        return applied

    def _pause(self, p: int) -> None:
        from aiokafka import TopicPartition

        self.consumer.pause(TopicPartition(self.settings.topic_engagements, p))
        self._held[p].paused = True

    def _resume(self, p: int) -> None:
        from aiokafka import TopicPartition

        tp = TopicPartition(self.settings.topic_engagements, p)
        if tp in self.consumer.assignment():
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
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        for p, buf in self._emitted.items():
            if not buf:
                continue
            records = [(user_id.encode(), dumps(ex).encode(), [("feedrank.example_id", ex["example_id"].encode())])
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
        meta.changelog_offset = await write_checkpoint(self.producer, self._changelog, p, changes, meta)
        if self.tables.get(p) is not tables:
            return  # revoked meanwhile (the revocation awaited us; nothing else to do)
        tables.committed(changes, meta)
        self.checkpoints += 1
        await self._ship_outbox(meta.outbox)
        try:
            await self.consumer.commit({TopicPartition(t, p): o + 1 for t, o in meta.offsets.items()})
        except Exception as exc:  # informational commit; the state's offsets are the truth
            log.debug("consumer offset commit for partition %d skipped: %s", p, exc)

    async def _ship_outbox(self, outbox: dict[str, Any]) -> None:
        if not outbox:
            return
        origin, ckpt = int(outbox["origin"]), int(outbox["ckpt"])
        topic = self.settings.topic_feedback_deltas
        futs = []
        for seg, tiles in outbox["delta"].items():
            value = json.dumps({"origin": origin, "ckpt": ckpt, "segment": seg, "tiles": tiles},
                               separators=(",", ":")).encode()
            futs.append(await self.producer.send(topic, key=seg.encode(), value=value))
        await asyncio.gather(*futs)

    # -- reads -----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        per = {p: t.stats() for p, t in sorted(self.tables.items())}
        p50, p99 = self.freshness.percentiles(0.5, 0.99)
        return {"partitions": sorted(self.tables), "processed": self.processed,
                "dead_lettered": self.dead_lettered, "checkpoints": self.checkpoints,
                "held_engagements": sum(len(h.items) for h in self._held.values()),
                "held_releases_forced": self.held_releases_forced,
                "freshness_ms": {"p50": p50, "p99": p99}, "join": per,
                "offsets": {p: dict(t.offsets) for p, t in sorted(self.tables.items())}}
