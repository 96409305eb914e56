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

A value is a set of ids while it is small (``IdSet``): the ids as a sorted JSON list. A user
beyond ``SMALL_IDS`` ids in one hour (a bot, a load test's 200 users at 17 events/s each) is kept
as a sorted array of 64-bit id hashes, 8 bytes an id, and the ids added since its last
encoding: a checkpoint merges those few into the array instead of sorting and encoding every
string again. Measured on the load scenario at 3,434 events/s (200 users, real Kafka): the string
sets re-encoded up to 60,000 ids per user and checkpoint, and grew the worker by ~78 MiB/min.
Two ids of one user and hour that share a 64-bit hash would count once (odds about
``n**2 / 2**65``: 1e-10 at 60,000 ids).
"""

from __future__ import annotations

from hashlib import blake2b

import numpy as np
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


#: ids of one user and hour kept as strings up to this many; beyond, as 64-bit hashes
SMALL_IDS = 512
#: the first byte of a hashed value (a JSON list starts with ``[``)
_HASHED = b"\x01"
_I8 = np.dtype("<i8")


def id_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (the same in every process, unlike ``hash``)."""
    return int.from_bytes(blake2b(event_id.encode(), digest_size=8).digest(), "little", signed=True)


class IdSet:
    """The ids of one user and hour: strings while few, else a sorted hash array and the hashes added since.

    ``add`` answers whether the id is new; the value depends only on which ids were added, never
    on their order (``encode_ids`` gives the same bytes for the same ids).
    """

    __slots__ = ("ids", "hashes", "added")

    def __init__(self, ids: set[str] | None = None, hashes: np.ndarray | None = None) -> None:
        self.ids = ids  # the strings, while there are at most SMALL_IDS
        self.hashes = hashes  # else: sorted int64 hashes as last encoded ...
        self.added: set[int] = set()  # ... and the hashes added since

    def __len__(self) -> int:
        return len(self.ids) if self.ids is not None else len(self.hashes) + len(self.added)

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; False if it was there already."""
        ids = self.ids
        if ids is not None:
            if event_id in ids:
                return False
            ids.add(event_id)
            if len(ids) > SMALL_IDS:
                self.hashes = np.sort(np.fromiter(map(id_hash, ids), dtype=_I8, count=len(ids)))
                self.ids = None
            return True
        h = id_hash(event_id)
        if self._has_hash(h):
            return False
        self.added.add(h)
        return True

    def _has_hash(self, h: int) -> bool:
        arr = self.hashes
        i = int(arr.searchsorted(h))
        return h in self.added or (i < len(arr) and arr[i] == h)

    def __contains__(self, event_id: str) -> bool:
        if self.ids is not None:
            return event_id in self.ids
        return self._has_hash(id_hash(event_id))

    def merged(self) -> np.ndarray:
        """The sorted hashes, the added ones merged in (and kept so)."""
        if self.added:
            new = np.fromiter(self.added, dtype=_I8, count=len(self.added))
            out = np.concatenate([self.hashes, new])
            out.sort(kind="stable")  # sorted runs: close to a linear merge
            self.hashes, self.added = out, set()
        return self.hashes


def encode_ids(ids: IdSet | set[str]) -> bytes:
    """A sorted JSON list of the ids, or ``_HASHED`` and the sorted hashes: the same bytes for the same ids."""
    if isinstance(ids, set):
        ids = IdSet(set(ids))
    if ids.ids is not None:
        return orjson.dumps(sorted(ids.ids))
    return _HASHED + ids.merged().tobytes()


def decode_ids(raw: bytes) -> IdSet:
    if raw[:1] == _HASHED:
        return IdSet(hashes=np.frombuffer(raw, dtype=_I8, offset=1))
    return IdSet(set(orjson.loads(raw)))


#: the record cache's codec of an id store
CODEC = (decode_ids, encode_ids)


class CounterDedup:
    """The counted event ids of one input (impressions or engagements): ``<hour>|<user>`` -> set of ids."""

    __slots__ = ("store", "cache", "state", "threshold", "_moves_at", "_hours", "_release_at")

    def __init__(self, store: StoreSpec, cache: RecordCache, state: PartitionState, wm: int, ttl: int) -> None:
        self.store, self.cache, self.state = store, cache, state
        self.threshold = 0
        self._moves_at = 0  # the smallest watermark whose dedup_threshold passes ``threshold``
        self._hours: dict[int, str] = {}  # hour -> its key prefix (``<hour>|``)
        self._release_at = 0  # the watermark from which ``_release_cold_hours`` runs next
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
            ids = IdSet(set())
        if not ids.add(event_id):
            return False
        self.cache.set(self.store, key, ids)
        return True

    def advance(self, wm: int, ttl: int) -> None:
        """Forget the ids below the new threshold: the input's (``wm``) or the retention's (``ttl``)."""
        if wm >= self._release_at:
            self._release_cold_hours(wm)
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

    def _release_cold_hours(self, wm: int) -> None:
        """Once an hour of the watermark: drop from the cache the clean values of hours before the previous one.

        They stay in the store (a late or re-sent event reads its hour back); the cache would
        otherwise hold a day of a busy user's ids, since it evicts by entry count, not size.
        """
        hour = wm // LONG_TILE_MS
        self._release_at = (hour + 1) * LONG_TILE_MS
        if hour >= 1:
            self.cache.drop_clean(self.store, f"{hour - 1:08d}|")
