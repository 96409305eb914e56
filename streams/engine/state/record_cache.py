"""A partition's record cache: read-your-own-writes, one write per changed key per checkpoint.

Every update between two checkpoints lands in the cache (decoded objects,
not bytes: a user's sequence is decoded once however many of its events
arrive). ``snapshot`` hands the changed keys to a checkpoint, which
serializes each once: that is the coalescing that keeps changelog traffic at
one record per changed key per checkpoint. Lifecycle of a snapshot: taken ->
``committed`` | ``failed``; one in flight at a time.
"""

from __future__ import annotations

from typing import Any, Callable

from streams.engine.state.exceptions import TransactionStateError
from streams.engine.state.partition import PartitionState, StoreSpec

_DELETED = object()
_MISSING = object()


Codec = tuple[Callable[[bytes], Any], Callable[[Any], bytes]]
_RAW: Codec = (lambda b: b, lambda v: v)


class CacheKV:
    """A ``features.labels.KV`` view of one raw-bytes store of a record cache."""

    __slots__ = ("cache", "store")

    def __init__(self, cache: "RecordCache", store: StoreSpec) -> None:
        self.cache = cache
        self.store = store

    def get(self, key: str) -> bytes | None:
        return self.cache.get(self.store, key)

    def put(self, key: str, value: bytes) -> None:
        self.cache.set(self.store, key, value)

    def delete(self, key: str) -> None:
        self.cache.delete(self.store, key)


class Snapshot:
    """The changes of one checkpoint, frozen at ``RecordCache.snapshot`` time.

    Values of raw stores (bytes) and deletes are final at once; decoded objects
    (sequences, counters) are serialized later, in chunks, while processing goes
    on: the cache serializes an object first if processing asks for it before
    it was (every in-place mutation starts with a ``get``), so the checkpoint
    holds exactly the values of the moment it was taken.
    """

    __slots__ = ("changes", "_pending", "_codecs")

    def __init__(self, changes: list[tuple[bytes, bytes | None]], pending: dict[bytes, tuple[str, Any]],
                 codecs: dict[str, Codec]) -> None:
        self.changes = changes
        self._pending = pending
        self._codecs = codecs

    def __len__(self) -> int:
        return len(self.changes) + len(self._pending)

    @property
    def done(self) -> bool:
        return not self._pending

    def _take(self, fk: bytes) -> None:
        item = self._pending.pop(fk, None)
        if item is not None:
            self.changes.append((fk, self._codecs[item[0]][1](item[1])))

    def serialize(self, limit: int | None = None) -> bool:
        """Serialize up to ``limit`` pending values (all when None); True when none is left."""
        pending, codecs, out = self._pending, self._codecs, self.changes
        n = 0
        while pending and (limit is None or n < limit):
            fk, (store, obj) = pending.popitem()
            out.append((fk, codecs[store][1](obj)))
            n += 1
        return not pending

    def all_changes(self) -> list[tuple[bytes, bytes | None]]:
        self.serialize()
        return self.changes


class RecordCache:
    """A partition's record cache: read-your-own-writes across checkpoints (Kafka Streams' shape).

    It lives as long as the partition: decoded values
    stay cached after a checkpoint (a hot user's sequence is decoded once, not
    once per checkpoint), ``snapshot`` hands the changed keys to a checkpoint
    without stopping writes, and ``committed`` (after the checkpoint is in the
    local store) evicts clean entries when the cache holds more than
    ``max_entries``. One snapshot may be in flight at a time: entries of an
    unfinished checkpoint are never evicted, so a cache miss always reads the
    store's latest committed value.

    A value set as ``bytes`` is taken as encoded (in any store): it is written as it is and
    treated like a raw value below (the dedup's sealed chunks of ids, written once).

    Raw values (stores without a codec: impressions waiting for their window,
    orphan engagements, prediction logs of tens of KB) and deletes are kept
    only until the checkpoint that wrote them is committed, and raw values read
    from the store only until the next commit: they are written once and read
    about once more, so keeping them saves no decoding, and it used to hold
    every impression and log of the window (and a key per closed one) in
    Python memory until ``max_entries`` was reached (measured: +315 MiB in 4
    minutes of the load scenario).
    """

    def __init__(self, state: PartitionState, codecs: dict[str, Codec] | None = None,
                 max_entries: int = 200_000) -> None:
        self.state = state
        self.codecs = codecs or {}
        self.max_entries = max_entries
        self._cache: dict[bytes, Any] = {}
        self._dirty: dict[bytes, str] = {}
        self._snap: Snapshot | None = None
        #: clean raw/deleted entries to drop at the next commit; those of the in-flight snapshot
        self._evict_next: list[bytes] = []
        self._evict_snap: list[bytes] = []

    def get(self, store: StoreSpec, key: str, default: Any = None) -> Any:
        fk = store.prefix + key.encode()
        cache = self._cache
        v = cache.get(fk, _MISSING)
        if v is not _MISSING:
            snap = self._snap
            if snap is not None and fk in snap._pending:
                snap._take(fk)  # about to be mutated in place: freeze the checkpoint's bytes first
            return default if v is _DELETED else v
        raw = self.state.get(fk)
        if raw is None:
            return default
        codec = self.codecs.get(store.name)
        if codec is None:
            self._evict_next.append(fk)  # a raw read: kept until the next commit only
            cache[fk] = raw
            return raw
        v = codec[0](raw)
        cache[fk] = v
        return v

    def peek(self, store: StoreSpec, key: str) -> Any:
        """The cached value (as cached: decoded or bytes), else the stored bytes, without caching them; None if absent."""
        fk = store.prefix + key.encode()
        v = self._cache.get(fk, _MISSING)
        if v is _MISSING:
            return self.state.get(fk)
        return None if v is _DELETED else v

    def set(self, store: StoreSpec, key: str, value: Any) -> None:
        fk = store.prefix + key.encode()
        self._cache[fk] = value
        self._dirty[fk] = store.name

    def delete(self, store: StoreSpec, key: str) -> None:
        fk = store.prefix + key.encode()
        self._cache[fk] = _DELETED
        self._dirty[fk] = store.name

    def cached_items(self, store: StoreSpec) -> list[tuple[str, Any]]:
        """(key, value or None if deleted) of the cached entries of ``store``."""
        p = store.prefix
        n = len(p)
        return [(fk[n:].decode(), None if v is _DELETED else v) for fk, v in self._cache.items() if fk.startswith(p)]

    def drop_clean(self, store: StoreSpec, below: str) -> int:
        """Forget the cached values of ``store`` whose keys sort below ``below`` and that are written already.

        Dirty values and those of an in-flight checkpoint (not in the store yet) stay; a later
        ``get`` reads the store. Returns how many were dropped.
        """
        p = store.prefix
        limit = p + below.encode()
        dirty, snap = self._dirty, self._snap
        unwritten = set(snap._pending).union(fk for fk, _v in snap.changes) if snap is not None else set()
        cache = self._cache
        drop = [fk for fk in cache if fk.startswith(p) and fk < limit and fk not in dirty and fk not in unwritten]
        for fk in drop:
            del cache[fk]
        return len(drop)

    def is_cached(self, store: StoreSpec, key: str) -> bool:
        return store.prefix + key.encode() in self._cache

    @property
    def changed(self) -> int:
        return len(self._dirty)

    @property
    def in_flight(self) -> bool:
        return self._snap is not None

    def snapshot(self) -> Snapshot:
        """Take the changed keys for a checkpoint; writes go on into the next one."""
        if self._snap is not None:
            raise TransactionStateError("a checkpoint is still in flight; commit it before taking another")
        changes: list[tuple[bytes, bytes | None]] = []
        pending: dict[bytes, tuple[str, Any]] = {}
        cache, codecs = self._cache, self.codecs
        evict = self._evict_snap = []
        for fk, store in self._dirty.items():
            v = cache[fk]
            if v is _DELETED:
                changes.append((fk, None))
                evict.append(fk)
            elif store in codecs and type(v) is not bytes:  # (bytes in a codec store: encoded already)
                pending[fk] = (store, v)
            else:
                changes.append((fk, v))
                evict.append(fk)
        self._dirty = {}
        self._snap = Snapshot(changes, pending, codecs)
        return self._snap

    def committed(self) -> None:
        """The in-flight snapshot is in the local store: forget it and evict what is clean and not worth keeping.

        Raw values and deletes of that snapshot, and raw values read since the
        last commit, leave the cache unless written again meanwhile (dirty);
        all clean entries leave when the cache holds more than ``max_entries``.
        """
        self._snap = None
        cache, dirty = self._cache, self._dirty
        evict, self._evict_snap = self._evict_snap, []
        reads, self._evict_next = self._evict_next, []
        if len(cache) > self.max_entries:
            self._cache = {fk: v for fk, v in cache.items() if fk in dirty}
            return
        for keys in (evict, reads):
            for fk in keys:
                if fk not in dirty:
                    v = cache.get(fk, _MISSING)
                    if v is _DELETED or type(v) is bytes:
                        del cache[fk]

    def failed(self) -> None:
        """The in-flight checkpoint did not make it: its keys are dirty again (written next time)."""
        snap, self._snap = self._snap, None
        self._evict_snap = []
        if snap is not None:
            for fk, _v in snap.changes:
                self._dirty.setdefault(fk, fk.partition(b"\x01")[0].decode())
            for fk, (store, _obj) in snap._pending.items():
                self._dirty.setdefault(fk, store)
