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
- every ``checkpoint_interval_s``: await the outputs (labeled examples, dead
  letters), write each changed key once plus a marker to the changelog, commit
  the same changes and the source offsets in one RocksDB batch, then ship the
  feedback delta (outbox) and commit the consumer offsets (informational only:
  the offsets stored with the state are the truth).
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

from features.events import Engagement, Impression
from features.predictions import PredictionDecodeError, decode_prediction

from .ingest import Decoded, DeadLetter, decode_message
from .settings import Settings
from .state import PartitionState, open_backend
from .state.changelog import changelog_topic
from .state.recovery import recover_partition, write_checkpoint
from .tables import PartitionTables

log = logging.getLogger(__name__)

Processor = Callable[[Sequence[Decoded]], Awaitable[None]]


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
        self._changelog = changelog_topic(settings.app_id)
        self._kinds = {
            settings.topic_impressions: "impression",
            settings.topic_engagements: "engagement",
            settings.topic_predictions: "prediction",
        }
        self._order = {settings.topic_predictions: 0, settings.topic_impressions: 1, settings.topic_engagements: 2}
        self._outputs: dict[int, list[asyncio.Future[Any]]] = {}
        self._emitted: dict[int, list[tuple[str, dict[str, Any]]]] = {}
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
                await self._checkpoint_all()
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
                    lateness_ms=int(s.allowed_lateness_s * 1000), emit=self._emitter(p))
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
                    await self._checkpoint(p)
                    self.tables.pop(p).state.close()

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
            try:
                data = await self.consumer.getmany(timeout_ms=20, max_records=max_records)
            except asyncio.CancelledError:
                raise
            async with self._lock:
                if data:
                    await self._process(data)
                elif self.tables and not self.caught_up.is_set():
                    self.caught_up.set()
                if time.monotonic() - self._last_ckpt >= interval:
                    await self._checkpoint_all()

    async def _process(self, data: dict[Any, list[Any]]) -> None:
        from .metrics import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED, EVENTS_VALID, FRESHNESS_SECONDS

        kinds, order = self._kinds, self._order
        good: list[Decoded] = []
        eng_ts: list[int] = []
        n_valid = {"impression": 0, "engagement": 0, "prediction": 0}
        for tp in sorted(data, key=lambda tp: (tp.partition, order.get(tp.topic, 9))):
            msgs = data[tp]
            tables = self.tables.get(tp.partition)
            if tables is None or not msgs:
                continue
            topic, p = tp.topic, tp.partition
            kind = kinds[topic]
            EVENTS_CONSUMED.labels(topic).inc(len(msgs))
            items = []
            for m in msgs:
                if kind == "prediction":
                    try:
                        ev: Any = decode_prediction(m.value)
                    except PredictionDecodeError as exc:
                        await self._dead_letter(DeadLetter(topic, p, m.offset, m.key, m.value, exc.reason))
                        EVENTS_DEAD_LETTERED.labels(topic, "prediction").inc()
                        continue
                    if m.key is not None and m.key != ev.user_id.encode():
                        await self._dead_letter(DeadLetter(topic, p, m.offset, m.key, m.value,
                                                           "key: message key must equal user_id"))
                        continue
                    items.append((kind, m.offset, ev, m.value))
                    continue
                out = decode_message(topic, p, m.offset, m.key, m.value,
                                     Impression if kind == "impression" else Engagement, m.timestamp)
                if isinstance(out, DeadLetter):
                    if m.offset > tables.offsets.get(topic, -1):
                        await self._dead_letter(out)
                        EVENTS_DEAD_LETTERED.labels(topic, out.kind).inc()
                    continue
                items.append((kind, m.offset, out.event, m.value))
                if self.processors:
                    good.append(out)
                if kind == "engagement":
                    eng_ts.append(m.timestamp)
            # the last offset also covers dead-lettered messages at the end of the batch
            applied = tables.process(topic, items)  # re-delivered records are fenced, not counted
            if msgs[-1].offset > tables.offsets.get(topic, -1):
                tables.offsets[topic] = msgs[-1].offset
            n_valid[kind] += applied
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

    async def _dead_letter(self, dl: DeadLetter) -> None:
        self.dead_lettered += 1
        log.warning("dead-lettered %s[%d]@%d: %s", dl.topic, dl.partition, dl.offset, dl.reason)
        fut = await self.producer.send(self.settings.topic_dlq, key=dl.key, value=dl.value,
                                       headers=dl.headers(), partition=dl.partition)
        self._outputs.setdefault(dl.partition, []).append(fut)

    async def _send_emitted(self) -> None:
        topic = self.settings.topic_labeled
        send = self.producer.send
        for p, buf in self._emitted.items():
            if not buf:
                continue
            outs = self._outputs.setdefault(p, [])
            for user_id, ex in buf:
                value = json.dumps(ex, separators=(",", ":")).encode()
                outs.append(await send(topic, key=user_id.encode(), value=value, partition=p,
                                       headers=[("feedrank.example_id", ex["example_id"].encode())]))
            buf.clear()

    # -- checkpoints ---------------------------------------------------------------
    async def _checkpoint_all(self) -> None:
        self._last_ckpt = time.monotonic()
        await asyncio.gather(*(self._checkpoint(p) for p in list(self.tables)))

    async def _checkpoint(self, p: int) -> None:
        from aiokafka import TopicPartition

        tables = self.tables[p]
        outs = self._outputs.pop(p, [])
        if outs:
            await asyncio.gather(*outs)
        if not tables.dirty:
            return
        changes, meta = tables.prepare()
        meta.changelog_offset = await write_checkpoint(self.producer, self._changelog, p, changes, meta)
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
                "freshness_ms": {"p50": p50, "p99": p99}, "join": per,
                "offsets": {p: dict(t.offsets) for p, t in sorted(self.tables.items())}}
