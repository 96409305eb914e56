"""The online/offline consistency check, running beside the stream (``FEEDRANK_CONSISTENCY_CHECK``).

On the worker that trains the calibrators (the owner of partition 0, as ``calibration_loop``), a thread
tails the impressions, engagements and prediction logs from the beginning with a consumer of its own (no
group: it commits nothing and moves no partition), and feeds them to ``scorer.consistency.ConsistencyChecker``.
Records are replayed in event-time order once the newest event time seen is ``hold_ms`` past them (records
of one partition arrive in order; the hold covers the spread between partitions and producers). Every
``publish_s`` the report goes to ``Serving.set_consistency``: ``GET /metrics``
(``feedrank_feature_mismatch_ratio{feature}``, ``feedrank_feature_relative_error``) and ``GET /calibration``.

A thread rather than the event loop: the replay is Python work per event (about the events' decoding again)
and must not hold up ``/score`` or the table engine.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import mode

from scorer.consistency import ConsistencyChecker, decode_record
from streams.kafka.security import kafka_options

log = logging.getLogger(__name__)


class ConsistencyMonitor(mode.Service):
    def __init__(self, settings: Any, bootstrap: str, serving: Any, is_leader: Callable[[], bool],
                 hold_ms: int = 10_000, publish_s: float = 10.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.settings = settings
        self.bootstrap = bootstrap
        self.serving = serving
        self.is_leader = is_leader
        self.hold_ms = hold_ms
        self.publish_s = publish_s
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    async def on_start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="consistency", daemon=True)
        self._thread.start()

    async def on_stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._halt.is_set() and not self.is_leader():
            self._halt.wait(1.0)
        if self._halt.is_set():
            return
        try:
            self._follow()
        except Exception:  # a broken check must not take the worker down: say so and stop checking
            log.exception("consistency check stopped")

    def _follow(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        s = self.settings
        kinds = {s.topic_impressions: "impression", s.topic_engagements: "engagement",
                 s.topic_predictions: "prediction"}
        c = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                          **kafka_options("kafka-python", s))
        tps = [TopicPartition(t, p) for t in kinds for p in sorted(c.partitions_for_topic(t) or ())]
        c.assign(tps)
        c.seek_to_beginning()
        checker = ConsistencyChecker(int(s.attribution_window_s * 1000), int(s.allowed_lateness_s * 1000))
        log.info("consistency check: following %d partitions of %s", len(tps), ", ".join(kinds))
        newest, last_publish = 0, time.monotonic()
        try:
            while not self._halt.is_set():
                for tp, records in c.poll(timeout_ms=500, max_records=5000).items():
                    kind = kinds[tp.topic]
                    for r in records:
                        rec = decode_record(kind, r.value)
                        if rec is not None:
                            checker.add(kind, rec)
                            newest = max(newest, rec.ts)
                checker.release(newest - self.hold_ms)
                if time.monotonic() - last_publish >= self.publish_s:
                    last_publish = time.monotonic()
                    self.serving.set_consistency(checker.report.to_dict())
        finally:
            c.close()


__all__ = ["ConsistencyMonitor"]
