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
as 64-bit id hashes, 8 bytes an id, in chunks written once: every ``CHUNK`` new hashes are sealed
into a sorted chunk under ``<hour>|<user>|<n>`` (``|`` is no id character), and the user's hour
value keeps only the chunk count and the hashes since the last chunk. A checkpoint so writes at
most ``CHUNK`` hashes per busy user, not the whole hour. Measured on the load scenario (200 users,
real Kafka): re-encoding every string at each checkpoint grew the worker by ~78 MiB/min at
3,434 events/s; one hashed value per hour, rewritten whole, grew RocksDB by 8.1 MiB/min and took
the worker from 0.73 to 1.0 cores within each hour. Which ids a chunk holds depends on the input's
order only (the count at which it is sealed), so the recomputation writes the same chunks. Two ids
of one user and hour that share a 64-bit hash would count once (odds about ``n**2 / 2**65``: 1e-10
at 60,000 ids).
"""

from __future__ import annotations

from hashlib import blake2b

import numpy as np
import orjson

from features.tiles import LONG_TILE_MS, LONG_WINDOW_MS

from streams.engine.state import PartitionState, RecordCache, StateError, StoreSpec


def dedup_threshold(wm: int) -> int:
    """Event time below which an input's events no longer count in the counters, nor are remembered.

    The counters' longest window (1 day) plus its tile behind that input's own watermark, down to the
    hour: nothing older is in any window read at the watermark.
    """
    t = wm - LONG_WINDOW_MS - LONG_TILE_MS
    return t // LONG_TILE_MS * LONG_TILE_MS if t > 0 else 0


#: ids of one user and hour kept as strings up to this many; beyond, as 64-bit hashes
SMALL_IDS = 512
#: hashes per sealed chunk (8 KiB)
CHUNK = 1024
#: the first byte of a sealed chunk (a sorted hash array; a JSON list starts with ``[``); an hour
#: value of this form (the single-value layout of 2026-12-07) reads as unsealed hashes
_HASHED = b"\x01"
#: the first byte of a chunked hour value: the chunk count (4 bytes) and the sorted unsealed hashes
_CHUNKED = b"\x02"
_I8 = np.dtype("<i8")
_EMPTY = np.zeros(0, dtype=_I8)


def id_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (the same in every process, unlike ``hash``)."""
    return int.from_bytes(blake2b(event_id.encode(), digest_size=8).digest(), "little", signed=True)


def _sorted(hashes: set[int]) -> np.ndarray:
    return np.sort(np.fromiter(hashes, dtype=_I8, count=len(hashes)))


def chunk_key(key: str, n: int) -> str:
    """The key of the ``n``-th sealed chunk of the hour value under ``key``."""
    return f"{key}|{n:05d}"


class IdSet:
    """The ids of one user and hour: strings while few, else unsealed hashes and the sealed chunks' hashes.

    ``add`` answers whether the id is new. ``sealed`` (the hashes of the ``n_sealed`` chunks,
    sorted) lives in memory only: None when decoded, until ``CounterDedup`` reads the chunks.
    """

    __slots__ = ("ids", "open", "n_sealed", "sealed")

    def __init__(self, ids: set[str] | None = None, open_: set[int] | None = None, n_sealed: int = 0,
                 sealed: np.ndarray | None = _EMPTY) -> None:
        self.ids = ids  # the strings, while there are at most SMALL_IDS
        self.open = open_ if open_ is not None else set()  # else: the hashes since the last chunk ...
        self.n_sealed = n_sealed  # ... how many chunks are sealed ...
        self.sealed = sealed  # ... and their hashes, merged and sorted (None: not read yet)

    def __len__(self) -> int:
        if self.ids is not None:
            return len(self.ids)
        return len(self.open) + len(self._sealed())

    def _sealed(self) -> np.ndarray:
        if self.sealed is None:
            raise ValueError("the sealed chunks of this id set were not read (CounterDedup reads them)")
        return self.sealed

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; False if it was there already."""
        ids = self.ids
        if ids is not None:
            if event_id in ids:
                return False
            ids.add(event_id)
            if len(ids) > SMALL_IDS:
                self.open = set(map(id_hash, ids))
                self.ids = None
            return True
        h = id_hash(event_id)
        if self._has_hash(h):
            return False
        self.open.add(h)
        return True

    def _has_hash(self, h: int) -> bool:
        if h in self.open:
            return True
        arr = self._sealed()
        i = int(arr.searchsorted(h))
        return i < len(arr) and arr[i] == h

    def __contains__(self, event_id: str) -> bool:
        if self.ids is not None:
            return event_id in self.ids
        return self._has_hash(id_hash(event_id))

    @property
    def full(self) -> bool:
        """Enough unsealed hashes for a chunk."""
        return self.ids is None and len(self.open) >= CHUNK

    def seal(self) -> bytes:
        """The unsealed hashes as the next chunk's bytes; they join ``sealed``, the count goes up by one."""
        chunk = _sorted(self.open)
        merged = np.concatenate([self._sealed(), chunk])
        merged.sort(kind="stable")  # two sorted runs: close to a linear merge
        self.sealed, self.open = merged, set()
        self.n_sealed += 1
        return _HASHED + chunk.tobytes()


def encode_ids(ids: IdSet | set[str]) -> bytes:
    """A sorted JSON list of the ids, or the chunk count and the sorted unsealed hashes: the same bytes for the same state."""
    if isinstance(ids, set):
        ids = IdSet(set(ids))
    if ids.ids is not None:
        return orjson.dumps(sorted(ids.ids))
    return _CHUNKED + ids.n_sealed.to_bytes(4, "little") + _sorted(ids.open).tobytes()


def decode_ids(raw: bytes) -> IdSet:
    head = raw[:1]
    if head == _CHUNKED:
        n = int.from_bytes(raw[1:5], "little")
        return IdSet(open_=set(np.frombuffer(raw, dtype=_I8, offset=5).tolist()), n_sealed=n,
                     sealed=None if n else _EMPTY)
    if head == _HASHED:
        return IdSet(open_=set(chunk_hashes(raw).tolist()))
    return IdSet(set(orjson.loads(raw)))


def chunk_hashes(raw: bytes) -> np.ndarray:
    """The sorted hashes of a sealed chunk's bytes."""
    if raw[:1] != _HASHED:
        raise ValueError(f"not a sealed chunk of ids (first byte {raw[:1]!r})")
    return np.frombuffer(raw, dtype=_I8, offset=1)


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
        elif ids.sealed is None:
            ids.sealed = self._read_sealed(key, ids.n_sealed)
        if not ids.add(event_id):
            return False
        if ids.full:
            self.cache.set(self.store, chunk_key(key, ids.n_sealed), ids.seal())  # written once, as bytes
        self.cache.set(self.store, key, ids)
        return True

    def _read_sealed(self, key: str, n: int) -> np.ndarray:
        """The hashes of the ``n`` sealed chunks of ``key``, merged (read once per load of the hour value)."""
        parts = []
        for i in range(n):
            raw = self.cache.peek(self.store, chunk_key(key, i))
            if raw is None:
                raise StateError(f"store {self.store.name}: chunk {i} of {key!r} is missing; its hour value "
                                 f"counts {n} chunks (restore the partition's state from its changelog)")
            parts.append(chunk_hashes(raw))  # (a chunk is only ever cached as its bytes: never read through get)
        out = np.concatenate(parts)
        out.sort(kind="stable")
        return out

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
