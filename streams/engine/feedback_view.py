"""The global feedback-loop view: every worker reads every partition's deltas.

Each partition's tables pre-aggregate the feedback loop and ship one delta per
segment per checkpoint to ``feedback-deltas`` (key = segment). This service,
started in every worker, reads all partitions of that topic from the
beginning (the topic's retention bounds the replay) with a group-less
consumer and sums the deltas into a ``features.tiles.FeedbackView``; the
view's (origin, checkpoint) fence makes re-shipped deltas count once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import mode

from features.tiles import FeedbackView

from streams.settings import Settings
from streams.kafka.security import kafka_options

log = logging.getLogger(__name__)


class FeedbackViewService(mode.Service):
    """Consumes ``feedback-deltas`` into a process-local global view."""

    def __init__(self, settings: Settings, bootstrap: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.settings = settings
        self.bootstrap = bootstrap
        self.view = FeedbackView(settings.feedback_window_min, grace_min=max(1, int(settings.allowed_lateness_s // 60) + 1))
        self.consumer: Any = None
        self.bad = 0

    async def on_start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        topic = self.settings.topic_feedback_deltas
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                         enable_auto_commit=False, auto_offset_reset="earliest",
                                         **kafka_options("aiokafka", self.settings))
        await self.consumer.start()
        parts = self.consumer.partitions_for_topic(topic)
        for _ in range(100):
            if parts:
                break
            await asyncio.sleep(0.1)
            await self.consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
            parts = self.consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts or ())]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self.add_future(self._run())

    async def on_stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def _run(self) -> None:
        n = 0
        while not self.should_stop:
            data = await self.consumer.getmany(timeout_ms=50, max_records=5000)
            for msgs in data.values():
                for m in msgs:
                    try:
                        self.view.apply_json(json.loads(m.value))
                    except (ValueError, KeyError, TypeError) as exc:
                        self.bad += 1
                        log.warning("bad feedback delta at %s[%d]@%d: %s", m.topic, m.partition, m.offset, exc)
                    n += 1
            if n >= 10_000:
                self.view.expire()
                n = 0
