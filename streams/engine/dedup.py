"""Which event ids of one input the counters have counted: one value per user and hour, coalesced per checkpoint.

The counters count each event (its id within the hour of its ``ts``) once within their horizon: a
producer's retry or a replay of an old event counts once, whether or not it is still in the user's
sequence. The ids of one user and one hour of event time are one value (a set, cached decoded by the
record cache) under the key ``<hour>|<user>``: a user's events between two checkpoints cost one store
read and one changelog record per hour they fall in, not one RocksDB key (a read that misses, a write)
and one changelog record per event, as the earlier layout (``<hour>|<user>|<event id>``) did. A value
holds one hour of one user, so its size is bounded by that user's rate, not by the horizon.

An event older than ``dedup_threshold`` of its input's watermark counts in no window read at the
watermark, so it is neither counted nor remembered (nor one older than the user-state retention
threshold). Keys start with the hour, so when the threshold moves the hours below it are deleted by a
scan from the start of the store. The values depend on that input's order only (sets encode sorted),
so the tables equal the from-scratch recomputation for any interleaving of the inputs.
"""

from __future__ import annotations

import orjson

from features.tiles import LONG_TILE_MS, LONG_WINDOW_MS

from streams.engine.state import PartitionState, RecordCache, StoreSpec


def dedup_threshold(wm: int) -> int:
    """Event time below which an input's events no longer count in the counters, nor are remembered.

    The counters' longest window (1 day) plus its tile behind that input's own watermark, down to the
    hour: nothing older is in any window read at the watermark.
    """
    t = wm - LONG_WINDOW_MS - LONG_TILE_MS
    return t // LONG_TILE_MS * LONG_TILE_MS if t > 0 else 0


def encode_ids(ids: set[str]) -> bytes:
    """A JSON list of the ids, sorted: the same bytes for the same set."""
    return orjson.dumps(sorted(ids))


def decode_ids(raw: bytes) -> set[str]:
    return set(orjson.loads(raw))


#: the record cache's codec of an id store
CODEC = (decode_ids, encode_ids)


class CounterDedup:
    """The counted event ids of one input (impressions or engagements): ``<hour>|<user>`` -> set of ids."""

    __slots__ = ("store", "cache", "state", "threshold", "_moves_at", "_hours")

    def __init__(self, store: StoreSpec, cache: RecordCache, state: PartitionState, wm: int, ttl: int) -> None:
        self.store, self.cache, self.state = store, cache, state
        self.threshold = 0
        self._moves_at = 0  # the smallest watermark whose dedup_threshold passes ``threshold``
        self._hours: dict[int, str] = {}  # hour -> its key prefix (``<hour>|``)
        self._set_threshold(max(dedup_threshold(wm), ttl))

    def _set_threshold(self, t: int) -> None:
        self.threshold = t
        self._moves_at = t + LONG_WINDOW_MS + 2 * LONG_TILE_MS
        self._hours = {h: p for h, p in self._hours.items() if h * LONG_TILE_MS >= t}

    def first(self, user_id: str, event_id: str, ts: int) -> bool | None:
        """True the first time (and remembers it), False for a repeat, None when too old to count."""
        if ts < self.threshold:
            return None
        hour = ts // LONG_TILE_MS
        prefix = self._hours.get(hour)
        if prefix is None:
            prefix = self._hours[hour] = f"{hour:08d}|"
        key = prefix + user_id
        ids = self.cache.get(self.store, key)  # (a get first: it freezes an in-flight checkpoint's bytes)
        if ids is None:
            ids = set()
        elif event_id in ids:
            return False
        ids.add(event_id)
        self.cache.set(self.store, key, ids)
        return True

    def advance(self, wm: int, ttl: int) -> None:
        """Forget the ids below the new threshold: the input's (``wm``) or the retention's (``ttl``)."""
        if wm < self._moves_at and ttl <= self.threshold:  # (called for every event: the cheap check first)
            return
        new = max(dedup_threshold(wm), ttl)
        if new <= self.threshold:
            return
        self._set_threshold(new)
        below = f"{new // LONG_TILE_MS:08d}|"
        old = [k for k, v in self.cache.cached_items(self.store) if v is not None and k < below]
        for k, _ in self.state.items(self.store):
            if k >= below:
                break
            old.append(k)
        for k in set(old):
            self.cache.delete(self.store, k)
