"""Byte-level key-value backends, chosen from a URL (as Faust's ``store=``).

``memory://`` gives a private dict; ``memory://NAME`` a process-wide dict that
survives close/reopen (pure tests of recovery); ``rocksdb://`` a rocksdict DB
under the directory the caller names (``rocksdb:///abs/dir`` overrides it).
Writes go through ``write`` only: one atomic batch of puts and deletes.

RocksDB memory is bounded per process, not per DB: a worker opens one DB per
partition, and RocksDB's defaults (a 32 MiB block cache of its own and up to
two 64 MiB memtables each, index and filter blocks held outside any cache)
let four DBs take ~640 MiB before counting the index blocks of every SST
file (measured in the load scenario: 183 MB of memtables and 106 MB of block
cache within 5 minutes). Every DB of a process shares one LRU block cache
(half of ``FEEDRANK_ROCKSDB_MEMORY_MB``, index and filter blocks included)
and one write-buffer budget (the other half: a write that finds all DBs'
memtables together over it flushes its DB; a DB's memtable is at most 8 MiB,
so idle DBs hold at most that each). ``rocksdb_memory()`` reports what they
hold; ``/metrics`` exports it as ``feedrank_rocksdb_memory_bytes``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable, Iterator

from streams.engine.state.exceptions import BackendURLError, StoreClosedError

log = logging.getLogger(__name__)

#: a batch: (key, value) with value None = delete
Batch = Iterable[tuple[bytes, bytes | None]]


class Backend(ABC):
    """A sorted byte map with atomic batch writes."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Items whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def write(self, batch: Batch) -> None:
        """Apply every put/delete of ``batch`` atomically."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def destroy(self) -> None:
        """Close and delete all data."""


class MemoryBackend(Backend):
    """A dict; ``memory://NAME`` instances with the same name share their data."""

    _shared: dict[str, dict[bytes, bytes]] = {}

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._data: dict[bytes, bytes] | None = self._shared.setdefault(name, {}) if name else {}

    def _d(self) -> dict[bytes, bytes]:
        if self._data is None:
            raise StoreClosedError(f"memory store {self.name!r} is closed")
        return self._data

    def get(self, key: bytes) -> bytes | None:
        return self._d().get(key)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        d = self._d()
        for k in sorted(k for k in d if k.startswith(prefix)):
            yield k, d[k]

    def write(self, batch: Batch) -> None:
        d = self._d()
        for k, v in batch:
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v

    def close(self) -> None:
        self._data = None

    def destroy(self) -> None:
        if self.name:
            self._shared.pop(self.name, None)
        self._data = None


#: per-DB memtable size (at most; 1/8 of the write-buffer budget when that is smaller) and count: a DB
#: holds at most WRITE_BUFFER_NUMBER of them (one being written, the others waiting for their flush),
#: and the process-wide write-buffer budget flushes earlier
WRITE_BUFFER_BYTES = 8 << 20
WRITE_BUFFER_NUMBER = 3
#: open SST files per DB (their index and filter blocks live in the shared block cache)
MAX_OPEN_FILES = 256
#: RocksDB's info LOG files kept per DB (a new one on every open; default 1000)
KEEP_LOG_FILES = 3
#: the budget until ``configure_rocksdb`` names one (the worker passes its ``rocksdb_memory_mb`` setting)
DEFAULT_MEMORY_MB = 128


class RocksDBResources:
    """The process-wide RocksDB memory budget: one block cache and one write-buffer manager."""

    def __init__(self, memory_mb: int) -> None:
        from rocksdict import Cache, WriteBufferManager

        self.memory_mb = memory_mb
        total = max(int(memory_mb), 8) << 20
        self.cache_bytes = total // 2
        self.write_buffer_bytes = total - self.cache_bytes
        # one memtable per DB is at most 1/8 of the budget: the budget's flush is triggered by a write and
        # flushes the DB written to, so idle DBs keep theirs (at most #DBs x this much)
        self.memtable_bytes = max(1 << 20, min(WRITE_BUFFER_BYTES, self.write_buffer_bytes // 8))
        self.cache = Cache(self.cache_bytes)
        self.write_buffers = WriteBufferManager(self.write_buffer_bytes, False)  # flush, never stall writes

    def options(self) -> Any:
        """Options of one DB (raw mode) that draw on this budget."""
        from rocksdict import BlockBasedOptions, Options

        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_cache_index_and_filter_blocks(True)  # charged to the cache, not held per open file
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_bloom_filter(10, False)  # point lookups of the join mostly miss: skip SST files fast
        opts.set_block_based_table_factory(table)
        opts.set_write_buffer_manager(self.write_buffers)
        opts.set_write_buffer_size(self.memtable_bytes)
        opts.set_max_write_buffer_number(WRITE_BUFFER_NUMBER)
        opts.set_max_open_files(MAX_OPEN_FILES)
        opts.set_keep_log_file_num(KEEP_LOG_FILES)
        return opts


_resources: RocksDBResources | None = None
_resources_lock = threading.Lock()
_open_dbs: "weakref.WeakSet[RocksDBBackend]" = weakref.WeakSet()


def configure_rocksdb(memory_mb: int) -> RocksDBResources:
    """Set this process's RocksDB memory budget (MiB) for the DBs opened from now on."""
    global _resources
    with _resources_lock:
        _resources = RocksDBResources(memory_mb)
        return _resources


def rocksdb_resources() -> RocksDBResources:
    """The process's budget (``DEFAULT_MEMORY_MB`` until ``configure_rocksdb`` sets one)."""
    global _resources
    with _resources_lock:
        if _resources is None:
            _resources = RocksDBResources(DEFAULT_MEMORY_MB)
        return _resources


#: RocksDB properties summed over the open DBs by ``rocksdb_memory``
_MEMTABLES = "rocksdb.size-all-mem-tables"
_TABLE_READERS = "rocksdb.estimate-table-readers-mem"


def rocksdb_memory() -> dict[str, int]:
    """Native memory of this process's RocksDB (bytes): memtables, block cache, table readers; and open DBs."""
    res = _resources
    out = {"memtables": 0, "block_cache": res.cache.get_usage() if res is not None else 0, "table_readers": 0,
           "dbs": 0}
    for b in list(_open_dbs):
        db = b._db
        if db is None:
            continue
        try:
            out["memtables"] += int(db.property_int_value(_MEMTABLES) or 0)
            out["table_readers"] += int(db.property_int_value(_TABLE_READERS) or 0)
            out["dbs"] += 1
        except Exception:  # closed meanwhile
            continue
    return out


class RocksDBMemoryCollector:
    """A Prometheus collector of ``rocksdb_memory`` (the caller registers it in its registry)."""

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import GaugeMetricFamily

        mem = rocksdb_memory()
        g = GaugeMetricFamily("feedrank_rocksdb_memory_bytes",
                              "Native memory of the process's RocksDB DBs (shared block cache, memtables, "
                              "table readers outside the cache)", labels=["component"])
        for k in ("memtables", "block_cache", "table_readers"):
            g.add_metric([k], mem[k])
        yield g
        res = _resources
        if res is not None:
            yield GaugeMetricFamily("feedrank_rocksdb_memory_budget_bytes",
                                    "Block cache capacity + write-buffer budget of the process",
                                    value=res.cache_bytes + res.write_buffer_bytes)

    def describe(self):  # type: ignore[no-untyped-def]
        return []


class RocksDBBackend(Backend):
    """One rocksdict DB in raw (bytes) mode; a batch is one RocksDB WriteBatch.

    Its block cache and memtable budget are the process's (``rocksdb_resources``).
    """

    def __init__(self, path: Path, resources: RocksDBResources | None = None) -> None:
        from rocksdict import Rdict

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.resources = resources or rocksdb_resources()
        self._db: Rdict | None = Rdict(str(self.path), self.resources.options())
        _open_dbs.add(self)

    def _d(self):  # noqa: ANN202 - rocksdict has no stubs
        if self._db is None:
            raise StoreClosedError(f"RocksDB store {self.path} is closed")
        return self._db

    def get(self, key: bytes) -> bytes | None:
        return self._d().get(key)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        for k, v in self._d().items(from_key=prefix):
            if not k.startswith(prefix):
                break
            yield k, v

    def write(self, batch: Batch) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        for k, v in batch:
            if v is None:
                wb.delete(k)
            else:
                wb.put(k, v)
        self._d().write(wb)

    def close(self) -> None:
        db, self._db = self._db, None
        _open_dbs.discard(self)
        if db is not None:
            db.close()

    def destroy(self) -> None:
        from rocksdict import Rdict

        self.close()
        Rdict.destroy(str(self.path), self.resources.options())


def open_backend(url: str, base_dir: Path | str, name: str) -> Backend:
    """Open the backend named by ``url`` for the store ``name`` (e.g. ``p3``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise BackendURLError(f"state backend URL {url!r} needs a scheme: memory:// or rocksdb://")
    if scheme == "memory":
        return MemoryBackend(f"{rest}/{name}" if rest else "")
    if scheme == "rocksdb":
        base = Path(rest) if rest else Path(base_dir)
        return RocksDBBackend(base / f"{name}.rocksdb")
    raise BackendURLError(f"unknown state backend {scheme!r} in {url!r}; use memory:// or rocksdb://")
