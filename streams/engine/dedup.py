"""Which event ids of one input the counters have counted: one value per user, coalesced per checkpoint.

The counters count each event (its id within the hour of its ``ts``) once within their horizon: a
producer's retry or a replay of an old event counts once, whether or not it is still in the user's
sequence. Each user's ids live in one value of the input's store (``SeenIds``: hour -> ids), cached
decoded by the record cache, so a user's events between two checkpoints cost one store read and one
changelog record, not one RocksDB key (a read that misses, a write) and one changelog record per
event, as the earlier layout (``<hour>|<user>|<event id>``) did.

An event older than ``dedup_threshold`` of its input's watermark counts in no window read at the
watermark, so it is neither counted nor remembered (nor one older than the user-state retention
threshold). When the threshold moves, every user's hours below it are dropped (a sweep that reads
only the 4-byte header of stored values it need not change): the values depend on that input's
order only, so the tables equal the from-scratch recomputation for any interleaving of the inputs.
"""

from __future__ import annotations

import struct

import orjson

from features.tiles import LONG_TILE_MS, LONG_WINDOW_MS

from streams.engine.state import PartitionState, RecordCache, StoreSpec

_HEAD = struct.Struct(">I")  # the oldest hour held, so a sweep can skip a stored value without decoding it


def dedup_threshold(wm: int) -> int:
    """Event time below which an input's events no longer count in the counters, nor are remembered.

    The counters' longest window (1 day) plus its tile behind that input's own watermark, down to the
    hour: nothing older is in any window read at the watermark.
    """
    t = wm - LONG_WINDOW_MS - LONG_TILE_MS
    return t // LONG_TILE_MS * LONG_TILE_MS if t > 0 else 0


class SeenIds:
    """One user's counted event ids of one input, by hour of their event time."""

    __slots__ = ("hours",)

    def __init__(self, hours: dict[int, set[str]] | None = None) -> None:
        self.hours: dict[int, set[str]] = hours if hours is not None else {}

    def add(self, hour: int, event_id: str) -> bool:
        """True if new (now remembered), False if counted before."""
        ids = self.hours.get(hour)
        if ids is None:
            self.hours[hour] = {event_id}
            return True
        if event_id in ids:
            return False
        ids.add(event_id)
        return True

    def drop_before(self, hour: int) -> bool:
        """Forget the hours below ``hour``; True if any was dropped."""
        old = [h for h in self.hours if h < hour]
        for h in old:
            del self.hours[h]
        return bool(old)

    def __len__(self) -> int:
        return len(self.hours)

    def encode(self) -> bytes:
        """Oldest hour (4 bytes) + JSON ``[[hour, [ids sorted]], ...]`` by hour: the same bytes for the same sets."""
        hours = sorted(self.hours)
        return _HEAD.pack(hours[0] if hours else 0) + orjson.dumps([[h, sorted(self.hours[h])] for h in hours])

    @classmethod
    def decode(cls, raw: bytes) -> "SeenIds":
        return cls({h: set(ids) for h, ids in orjson.loads(raw[_HEAD.size:])})


def oldest_hour(raw: bytes) -> int:
    """The oldest hour of an encoded ``SeenIds``, without decoding it."""
    return int(_HEAD.unpack_from(raw)[0])


class CounterDedup:
    """The counted event ids of one input (impressions or engagements): a ``SeenIds`` per user."""

    __slots__ = ("store", "cache", "state", "threshold")

    def __init__(self, store: StoreSpec, cache: RecordCache, state: PartitionState, wm: int, ttl: int) -> None:
        self.store, self.cache, self.state = store, cache, state
        self.threshold = max(dedup_threshold(wm), ttl)

    def first(self, user_id: str, event_id: str, ts: int) -> bool | None:
        """True the first time (and remembers it), False for a repeat, None when too old to count."""
        if ts < self.threshold:
            return None
        seen = self.cache.get(self.store, user_id)  # (a get first: it freezes an in-flight checkpoint's bytes)
        if seen is None:
            seen = SeenIds()
        if not seen.add(ts // LONG_TILE_MS, event_id):
            return False
        self.cache.set(self.store, user_id, seen)
        return True

    def advance(self, wm: int, ttl: int) -> None:
        """Forget the ids below the new threshold: the input's (``wm``) or the retention's (``ttl``)."""
        new = max(dedup_threshold(wm), ttl)
        if new <= self.threshold:
            return
        self.threshold = new
        below = new // LONG_TILE_MS
        cache, store = self.cache, self.store
        touched = [k for k, v in cache.cached_items(store) if v is not None and v.hours and min(v.hours) < below]
        touched += [k for k, raw in self.state.items(store)
                    if not cache.is_cached(store, k) and oldest_hour(raw) < below]
        for k in touched:
            seen = cache.get(store, k)
            if seen is None or not seen.drop_before(below):
                continue
            if len(seen):
                cache.set(store, k, seen)
            else:
                cache.delete(store, k)
