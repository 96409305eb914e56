"""The per-checkpoint transaction: a write cache with read-your-own-writes.

Every update between two checkpoints lands in the cache (decoded objects,
not bytes: a user's sequence is decoded once per checkpoint however many of
its events arrive). ``prepare`` serializes each changed key once: that is the
coalescing that keeps changelog traffic at one record per changed key per
checkpoint. Lifecycle: started -> prepared -> committed | failed.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

from .exceptions import TransactionStateError
from .partition import PartitionState, StoreSpec

_DELETED = object()


class TxState(enum.Enum):
    STARTED = "started"
    PREPARED = "prepared"
    COMMITTED = "committed"
    FAILED = "failed"


Codec = tuple[Callable[[bytes], Any], Callable[[Any], bytes]]
_RAW: Codec = (lambda b: b, lambda v: v)


class Transaction:
    """Cached reads and buffered writes over one ``PartitionState``."""

    def __init__(self, state: PartitionState, codecs: dict[str, Codec] | None = None) -> None:
        self.state = state
        self.codecs = codecs or {}
        self._cache: dict[bytes, Any] = {}
        self._dirty: dict[bytes, str] = {}  # full key -> store name
        self.status = TxState.STARTED

    def _check_open(self) -> None:
        if self.status is not TxState.STARTED:
            raise TransactionStateError(f"transaction is {self.status.value}; start a new one to write")

    def get(self, store: StoreSpec, key: str, default: Any = None) -> Any:
        fk = store.full_key(key)
        cache = self._cache
        if fk in cache:
            v = cache[fk]
            return default if v is _DELETED else v
        raw = self.state.get(fk)
        if raw is None:
            return default
        v = self.codecs.get(store.name, _RAW)[0](raw)
        cache[fk] = v
        return v

    def set(self, store: StoreSpec, key: str, value: Any) -> None:
        """Store ``value`` (an object of the store's codec; mutate-then-set is fine)."""
        self._check_open()
        fk = store.full_key(key)
        self._cache[fk] = value
        self._dirty[fk] = store.name

    def delete(self, store: StoreSpec, key: str) -> None:
        self._check_open()
        fk = store.full_key(key)
        self._cache[fk] = _DELETED
        self._dirty[fk] = store.name

    @property
    def changed(self) -> int:
        return len(self._dirty)

    def prepare(self) -> list[tuple[bytes, bytes | None]]:
        """Serialize every changed key once: ``[(full_key, bytes or None=delete)]``."""
        self._check_open()
        out: list[tuple[bytes, bytes | None]] = []
        for fk, store in self._dirty.items():
            v = self._cache[fk]
            out.append((fk, None if v is _DELETED else self.codecs.get(store, _RAW)[1](v)))
        self.status = TxState.PREPARED
        return out

    def mark_committed(self) -> None:
        if self.status is not TxState.PREPARED:
            raise TransactionStateError(f"commit of a {self.status.value} transaction; prepare it first")
        self.status = TxState.COMMITTED

    def mark_failed(self) -> None:
        self.status = TxState.FAILED


class TxKV:
    """A ``features.labels.KV`` view of one raw-bytes store of a transaction."""

    __slots__ = ("tx", "store")

    def __init__(self, tx_ref: Callable[[], Transaction], store: StoreSpec) -> None:
        self.tx = tx_ref
        self.store = store

    def get(self, key: str) -> bytes | None:
        return self.tx().get(self.store, key)

    def put(self, key: str, value: bytes) -> None:
        self.tx().set(self.store, key, value)

    def delete(self, key: str) -> None:
        self.tx().delete(self.store, key)
