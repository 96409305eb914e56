"""Event ingestion: decode each message, dead-letter the bad, hand on the good.

Bad messages are data: ``decode_message`` returns either a ``Decoded`` event or
a ``DeadLetter`` carrying the original key and value bytes, the source
topic/partition/offset and the reason. The dead-letter record keeps the
original bytes as its value and puts the rest in headers (Kafka Connect's
convention), so a replay tool can re-send it unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from features.events import Engagement, Event, EventDecodeError, Impression, decode_event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A valid event and where it came from."""

    event: Event
    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # broker/producer timestamp of the message


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that failed to decode or validate."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str

    @property
    def kind(self) -> str:
        """A short class of the reason for metrics (``not JSON``, ``ts``, ...)."""
        head = self.reason.split(":", 1)[0].strip()
        return head.split(".", 1)[0][:32] or "invalid"

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("feedrank.error", self.reason.encode("utf-8", "replace")[:1024]),
            ("feedrank.source.topic", self.topic.encode()),
            ("feedrank.source.partition", str(self.partition).encode()),
            ("feedrank.source.offset", str(self.offset).encode()),
            ("feedrank.dead_lettered_at_ms", str(int(time.time() * 1000)).encode()),
        ]


def decode_message(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                   expect: type[Impression] | type[Engagement] | None, timestamp_ms: int = 0,
                   ) -> Decoded | DeadLetter:
    """Decode one message of an event topic; never raises for bad input."""
    try:
        event = decode_event(value, expect)
    except EventDecodeError as exc:
        return DeadLetter(topic, partition, offset, key, value, exc.reason)
    except Exception as exc:  # defensive: a validator bug must not kill the worker
        return DeadLetter(topic, partition, offset, key, value, f"decoder error: {type(exc).__name__}: {exc}")
    if key is not None and key != event.user_id.encode():
        return DeadLetter(topic, partition, offset, key, value,
                          "key: message key must equal user_id (co-partitioning by user)")
    return Decoded(event, topic, partition, offset, timestamp_ms)


#: A stage that receives every decoded batch (tables, joins, metrics).
Processor = Callable[[Sequence[Decoded]], Awaitable[None]]


def install_ingest(app, settings, processors: list[Processor], *, batch_max: int = 2000,
                   batch_within_s: float = 0.01):
    """Register the ingest agent on ``app``: decode, dead-letter, process.

    Returns the dead-letter topic (for tests). Offsets of bad messages are
    committed like any other: a dead-lettered message is handled, not retried.
    """
    from .metrics import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED, EVENTS_VALID

    expect = {settings.topic_impressions: Impression, settings.topic_engagements: Engagement}
    source = app.topic(settings.topic_impressions, settings.topic_engagements,
                       key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                       partitions=settings.partitions)
    dlq = app.topic(settings.topic_dlq, key_type=bytes, value_type=bytes, key_serializer="raw",
                    value_serializer="raw", partitions=settings.partitions)

    @app.agent(source, name="feedrank.ingest")
    async def ingest(stream):  # pragma: no cover - exercised by broker tests
        async for events in stream.take_events(batch_max, within=batch_within_s):
            good: list[Decoded] = []
            for ev in events:
                msg = ev.message
                EVENTS_CONSUMED.labels(msg.topic).inc()
                ts_ms = int((msg.timestamp or 0) * 1000)
                out = decode_message(msg.topic, msg.partition, msg.offset, msg.key, msg.value,
                                     expect.get(msg.topic), ts_ms)
                if isinstance(out, DeadLetter):
                    EVENTS_DEAD_LETTERED.labels(msg.topic, out.kind).inc()
                    log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, out.reason)
                    await dlq.send(key=out.key, value=out.value, headers=out.headers(), partition=msg.partition)
                else:
                    EVENTS_VALID.labels(out.event.kind).inc()
                    good.append(out)
            for process in processors:
                await process(good)

    return dlq
