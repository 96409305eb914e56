"""Records that arrive on another partition than the one feedrank routes their user to.

feedrank keeps a user's state on partition ``murmur2(user_id) % partitions`` (Kafka's Java
partitioner, ``streams.engine.views.partition_for``); reads and ``/score`` routing look there.
A producer on librdkafka's default partitioner (CRC32: confluent-kafka, most Python and Go
clients) or one that picks partitions itself sends some users elsewhere. Such a record is
forwarded, as Kafka Streams and Faust's ``group_by`` do, through an internal repartition topic
(``<app_id>-repartition-<input>``, co-partitioned with the inputs) to the right partition, whose
engine applies it exactly once:

- the forward is an output of the origin partition: its checkpoint commits the origin offset only
  once the forward is acknowledged (a crash re-sends it);
- the forwarded record keeps the original key, value and timestamp, and carries its origin
  (topic, partition, offset) in headers;
- the target keeps, per origin partition, the highest origin offset it applied (``OriginFence``,
  stored with its checkpoint): records of one origin partition reach a target in origin order,
  so a re-sent forward is at or below the fence and is skipped.
"""

from __future__ import annotations

from typing import Iterable

ORIGIN_TOPIC = "feedrank.origin.topic"
ORIGIN_PARTITION = "feedrank.origin.partition"
ORIGIN_OFFSET = "feedrank.origin.offset"


def origin_headers(topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [(ORIGIN_TOPIC, topic.encode()), (ORIGIN_PARTITION, str(partition).encode()),
            (ORIGIN_OFFSET, str(offset).encode())]


def origin_of(headers: Iterable[tuple[str, bytes]] | None) -> tuple[str, int] | None:
    """(``topic:partition`` of the origin, origin offset) from a forwarded record's headers, or None."""
    h = {k: v for k, v in headers or ()}
    try:
        return f"{h[ORIGIN_TOPIC].decode()}:{int(h[ORIGIN_PARTITION])}", int(h[ORIGIN_OFFSET])
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def forward_problem(headers: Iterable[tuple[str, bytes]] | None, user_partition: int,
                    partition: int) -> tuple[tuple[str, int] | None, str | None]:
    """(origin, None) for a well-formed forward read on its user's ``partition``, else (None, why not)."""
    origin = origin_of(headers)
    if origin is None:
        return None, "repartition: no origin headers (only feedrank's engine writes its repartition topics)"
    if user_partition != partition:
        return None, f"repartition: the user belongs to partition {user_partition}, not {partition}"
    return origin, None


class OriginFence:
    """Per origin partition, the highest origin offset applied on this partition (checkpointed)."""

    __slots__ = ("fences", "skipped")

    def __init__(self, fences: dict[str, int] | None = None) -> None:
        self.fences: dict[str, int] = dict(fences or {})
        self.skipped = 0

    def admit(self, origin: str, offset: int) -> bool:
        """True the first time this origin offset arrives (and records it); False for a re-sent forward."""
        if offset <= self.fences.get(origin, -1):
            self.skipped += 1
            return False
        self.fences[origin] = offset
        return True


class Router:
    """``partition_for`` with a bounded cache (the murmur2 hash is pure Python: ~µs per call)."""

    __slots__ = ("partitions", "_cache")

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._cache: dict[str, int] = {}

    def __call__(self, user_id: str) -> int:
        p = self._cache.get(user_id)
        if p is None:
            from streams.engine.views import partition_for

            if len(self._cache) >= 1_000_000:
                self._cache.clear()
            p = self._cache[user_id] = partition_for(user_id, self.partitions)
        return p


__all__ = ["OriginFence", "Router", "forward_problem", "origin_headers", "origin_of"]

