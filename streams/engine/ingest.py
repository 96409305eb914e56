"""Event ingestion: decode each message, dead-letter the bad, hand on the good.

The table engine (``streams.engine.engine``) calls ``decode_message`` for
every record of the event topics. Bad messages are data: ``decode_message`` returns either a ``Decoded`` event or
a ``DeadLetter`` carrying the original key and value bytes, the source
topic/partition/offset and the reason. The dead-letter record keeps the
original bytes as its value and puts the rest in headers (Kafka Connect's
convention), so a replay tool can re-send it unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

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


#: why a record whose key is not its user_id is dead-lettered
KEY_RULE = "key: message key must equal user_id (co-partitioning by user)"
#: why a record without a key is dead-lettered
KEY_MISSING = "key_missing: the message has no key (null or empty); the key must be the event's user_id"


def key_problem(key: bytes | None, user_id: str) -> str | None:
    """Why ``key`` breaks the key rule (null, empty, or not ``user_id``), or None: the one key rule."""
    if not key:
        return KEY_MISSING
    if key != user_id.encode():
        return KEY_RULE
    return None


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """How far an event's ``ts`` may be from its record's timestamp: the event-time rule.

    The record timestamp is the producer's wall clock when it sent the record (Kafka's CreateTime;
    the broker's when the topic uses LogAppendTime). It is stored in the log, so the decision is the
    same on every replay and in the from-scratch recomputation. An event more than ``future_ms``
    ahead of it, or more than ``age_ms`` behind it, is dead-lettered and never moves a watermark:
    one record can push a partition's event time at most ``future_ms`` past its producer's clock.
    Records without a timestamp (-1, pre-0.10 formats) are not checked.
    """

    future_ms: int
    age_ms: int

    @classmethod
    def of(cls, settings: Any) -> "TimeBounds":
        age = settings.max_event_age_s if settings.max_event_age_s is not None else settings.user_retention_s
        return cls(int(settings.max_event_future_s * 1000), int(age * 1000))

    def problem(self, ts: int, record_ts: int) -> str | None:
        """Why ``ts`` is out of bounds for a record stamped ``record_ts``, or None."""
        if record_ts <= 0:
            return None
        if ts > record_ts + self.future_ms:
            return (f"ts_future: event time {ts} is {(ts - record_ts) / 1000:.0f}s ahead of the record's timestamp "
                    f"{record_ts} (FEEDRANK_MAX_EVENT_FUTURE_S={self.future_ms / 1000:g}): check the producer's clock")
        if ts < record_ts - self.age_ms:
            return (f"ts_too_old: event time {ts} is {(record_ts - ts) / 1000:.0f}s behind the record's timestamp "
                    f"{record_ts} (FEEDRANK_MAX_EVENT_AGE_S={self.age_ms / 1000:g}): older than the state keeps")
        return None


#: no time check (pure tests of other rules)
NO_TIME_BOUNDS = TimeBounds(1 << 62, 1 << 62)


def breaks_rules(key: bytes | None, event: Any, timestamp_ms: int, bounds: TimeBounds) -> str | None:
    """Why a decoded event breaks the key rule or the event-time rule, or None."""
    return key_problem(key, event.user_id) or bounds.problem(event.ts, timestamp_ms)


def admit(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, event: Any,
          timestamp_ms: int, bounds: TimeBounds) -> Decoded | DeadLetter:
    """The key rule and the event-time rule on a decoded event: the one place both are applied."""
    why = breaks_rules(key, event, timestamp_ms, bounds)
    if why is not None:
        return DeadLetter(topic, partition, offset, key, value, why)
    return Decoded(event, topic, partition, offset, timestamp_ms)


def decode_message(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                   expect: type[Impression] | type[Engagement] | None, timestamp_ms: int = 0,
                   bounds: TimeBounds = NO_TIME_BOUNDS) -> Decoded | DeadLetter:
    """Decode one message of an event topic and apply the rules; never raises for bad input."""
    try:
        event = decode_event(value, expect)
    except EventDecodeError as exc:
        return DeadLetter(topic, partition, offset, key, value, exc.reason)
    except Exception as exc:  # defensive: a validator bug must not kill the worker
        return DeadLetter(topic, partition, offset, key, value, f"decoder error: {type(exc).__name__}: {exc}")
    return admit(topic, partition, offset, key, value, event, timestamp_ms, bounds)
