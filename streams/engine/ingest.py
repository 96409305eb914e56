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


def key_breaks_rule(key: bytes | None, user_id: str) -> bool:
    """True when ``key`` is set and is not ``user_id``: the one rule that keeps a user's events on one partition."""
    return key is not None and key != user_id.encode()


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
    if key_breaks_rule(key, event.user_id):
        return DeadLetter(topic, partition, offset, key, value, KEY_RULE)
    return Decoded(event, topic, partition, offset, timestamp_ms)
