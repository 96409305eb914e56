"""Online calibration in the stream: learn from labeled impressions, publish, hot-swap.

Every worker tails two one-partition topics: ``calibrators`` (compacted
snapshots, key = model version) to hot-swap its serving calibrators without a
restart, and ``calibration-drift`` for ``GET /calibration`` and the metrics.

One worker trains: the one whose table engine owns partition 0 (leadership
rides on the consumer group's assignment, so failover is a rebalance). The
trainer reads every partition of ``labeled-impressions``, drops repeats of an
``example_id`` (the label join is at-least-once after a crash), folds each
batch into FTRL calibrators and a drift monitor, and every
``calibration_snapshot_s`` of event time publishes a snapshot that carries the
FTRL state and the input offsets it covers. A new trainer resumes from the
latest snapshot and those offsets, so a takeover neither loses nor repeats the
updates the snapshot holds. The snapshot also carries the drift monitor's
windows and alert states, so a restarted trainer goes on publishing the drift
records the old one would have, instead of starting from empty windows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import OrderedDict
from typing import Any, Callable

import mode
import numpy as np
import orjson

from streams.kafka.security import kafka_options

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "feedrank.calibrator-snapshot/1"


def encode_snapshot(calset, online_state: bytes, offsets: dict[int, int], drift: dict | None = None) -> bytes:
    return json.dumps({"format": SNAPSHOT_FORMAT, "set": calset.to_dict(),
                       "online": base64.b64encode(online_state).decode(),
                       "offsets": {str(p): o for p, o in offsets.items()},
                       "drift": drift}, separators=(",", ":")).encode()


def decode_snapshot(raw: bytes):
    """(CalibratorSet, online state bytes, offsets, drift monitor state or None) of a snapshot record."""
    from scorer.calibration.calset import CalibratorSet

    d = json.loads(raw)
    if d.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"unknown snapshot format {d.get('format')!r}")
    return (CalibratorSet.from_dict(d["set"]), base64.b64decode(d["online"]),
            {int(p): int(o) for p, o in d["offsets"].items()}, d.get("drift"))


class SeenIds:
    """A bounded set of recent ids (oldest forgotten first), ~100 bytes an id.

    Repeats of a labeled example come from a worker re-processing the records
    after its last checkpoint (seconds of input), so a window of the last
    ``capacity`` ids is enough; ids are kept as 64-bit hashes (a false repeat
    among 100k ids: ~3e-10).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[int, None] = OrderedDict()

    def add(self, key: str) -> bool:
        """True when ``key`` is new."""
        h = hash(key)
        if h in self._ids:
            return False
        self._ids[h] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._ids)


class CalibrationLoop(mode.Service):
    """Tails calibrators and drift on every worker; trains on the leader."""

    def __init__(self, settings, bootstrap: str, serving, is_leader: Callable[[], bool], **kw: Any) -> None:
        super().__init__(**kw)
        self.settings = settings
        self.bootstrap = bootstrap
        self.serving = serving
        self.is_leader = is_leader
        self.latest_snapshot: bytes | None = None
        self.trained = 0
        self.duplicates = 0
        self.bad_records = 0
        self._producer: Any = None
        self._tail: Any = None

    async def on_start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, max_batch_size=1, linger_ms=0,
                                          max_request_size=8 << 20, acks="all",
                                          **kafka_options("aiokafka", self.settings))
        await self._producer.start()
        self._tail = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                      fetch_max_bytes=16 << 20, max_partition_fetch_bytes=16 << 20,
                                      **kafka_options("aiokafka", self.settings))
        await self._tail.start()
        tps = [TopicPartition(self.settings.topic_calibrators, 0), TopicPartition(self.settings.topic_drift, 0)]
        self._tail.assign(tps)
        await self._tail.seek_to_beginning(*tps)
        self.add_future(self._tail_loop())
        self.add_future(self._leader_loop())
        self.add_future(self._model_watch_loop())

    async def on_stop(self) -> None:
        for client in (self._tail, self._producer):
            if client is not None:
                await client.stop()

    # -- every worker ----------------------------------------------------------------
    async def _tail_loop(self) -> None:
        s = self.settings
        while not self.should_stop:
            batch = await self._tail.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for r in records:
                    try:
                        if tp.topic == s.topic_calibrators:
                            if r.key is None or r.key.decode() != self.serving.model_version:
                                continue
                            calset, _online, _offsets, _drift = decode_snapshot(r.value)
                            self.latest_snapshot = r.value
                            self.serving.install_calibrators(calset)
                        else:
                            self.serving.set_drift(json.loads(r.value))
                    except Exception as exc:  # a bad record is skipped, never fatal
                        self.bad_records += 1
                        log.warning("skipping bad %s record at offset %d: %s", tp.topic, r.offset, exc)

    async def _model_watch_loop(self) -> None:
        """Pick up a new ``<model_dir>/latest`` without a restart (checked every few seconds)."""
        loop = asyncio.get_running_loop()
        while not self.should_stop:
            await asyncio.sleep(self.settings.model_check_interval_s)
            try:
                if await loop.run_in_executor(None, self.serving.reload):
                    self.latest_snapshot = None  # snapshots of the previous model do not apply
            except Exception:
                log.exception("model reload failed; still serving %s", self.serving.model_version)

    # -- the leader ------------------------------------------------------------------
    async def _leader_loop(self) -> None:
        while not self.should_stop:
            if self.is_leader() and self.serving.scorer is not None:
                try:
                    await self._train()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("calibration trainer failed; restarting from the latest snapshot")
            await asyncio.sleep(1.0)

    async def _train(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from scorer.calibration.online import OnlineCalibration
        from scorer.calibration.records import batch_from_records
        from scorer.drift import AlertConfig, DriftMonitor

        s = self.settings
        await asyncio.sleep(1.0)  # let the tail catch up with the latest snapshot
        model_version = self.serving.model_version
        saved, offsets, drift = None, {}, None
        if self.latest_snapshot is not None:
            calset, saved, offsets, drift = decode_snapshot(self.latest_snapshot)
            self.serving.install_calibrators(calset)
        online = OnlineCalibration.resume_or_start(saved, self.serving.holder.current)
        online.snapshot_interval_ms = int(s.calibration_snapshot_s * 1000)
        monitor = DriftMonitor(alert=AlertConfig(), publish_interval_ms=int(s.drift_interval_s * 1000),
                               model_version=model_version, calibrator_version=online.version)
        if drift is not None:
            monitor.restore(drift)
        seen = SeenIds()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    max_partition_fetch_bytes=4 << 20, **kafka_options("aiokafka", s))
        await consumer.start()
        try:
            tps = [TopicPartition(s.topic_labeled, p) for p in range(s.partitions)]
            consumer.assign(tps)
            for tp in tps:
                if tp.partition in offsets:
                    consumer.seek(tp, offsets[tp.partition] + 1)
                else:
                    await consumer.seek_to_beginning(tp)
            log.info("calibration trainer started for model %s at offsets %s", model_version, offsets)
            while not self.should_stop and self.is_leader() and self.serving.model_version == model_version:
                data = await consumer.getmany(timeout_ms=500, max_records=5000)
                records = []
                for tp, msgs in data.items():
                    for m in msgs:
                        offsets[tp.partition] = m.offset
                        try:
                            rec = orjson.loads(m.value)  # 5 us a record against json's 33 (1 KB examples)
                            key = str(rec["example_id"])
                        except (ValueError, TypeError, KeyError):
                            self.bad_records += 1
                            continue
                        if seen.add(key):
                            records.append(rec)
                        else:
                            self.duplicates += 1
                if not records:
                    continue
                batch, _stats = batch_from_records(records, model_version)
                if len(batch.y) == 0:
                    continue
                online.update(batch.X, batch.y, batch.mask, batch.ts)
                served = batch.extras.get("served") if batch.extras else None
                if served is not None:
                    monitor.observe(batch.ts, served, batch.y, batch.mask)
                self.trained += len(batch.y)
                wm = int(np.max(batch.ts))
                # the drift record first, then the snapshot holding the monitor's state after it: a crash
                # between the two re-publishes that record from the previous snapshot, never skips one
                record = monitor.maybe_record(wm)
                if record is not None:
                    await self._producer.send_and_wait(s.topic_drift, key=model_version.encode(),
                                                       value=json.dumps(record).encode())
                if online.due(wm):
                    calset = online.snapshot()
                    monitor.calibrator_version = calset.version
                    value = encode_snapshot(calset, online.to_bytes(), offsets, monitor.to_state())
                    await self._producer.send_and_wait(s.topic_calibrators, key=model_version.encode(), value=value)
        finally:
            await consumer.stop()

