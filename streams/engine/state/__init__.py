"""feedrank's own state layer (Quix Streams / Kafka Streams shape).

- ``backend``: byte-level key-value backends chosen by URL (``memory://``,
  ``rocksdb://``); one DB per (app, partition).
- ``partition``: one partition's stores (key prefixes in one DB, so a single
  WriteBatch covers every store plus the metadata) and its metadata (source
  offsets = the processing fence, changelog position, outbox).
- ``record_cache``: the partition's cache with read-your-own-writes that
  coalesces updates per key into one write per checkpoint.
- ``changelog``: the changelog record format, checkpoint markers and the
  replay that applies only complete checkpoints.
"""

from streams.engine.state.backend import Backend, MemoryBackend, RocksDBBackend, configure_rocksdb, open_backend, rocksdb_memory
from streams.engine.state.exceptions import BackendURLError, StateError, StoreClosedError, TransactionStateError
from streams.engine.state.partition import Meta, PartitionState, StoreSpec
from streams.engine.state.record_cache import CacheKV, RecordCache, Snapshot

__all__ = [
    "Backend",
    "BackendURLError",
    "MemoryBackend",
    "Meta",
    "PartitionState",
    "CacheKV",
    "RecordCache",
    "RocksDBBackend",
    "Snapshot",
    "StateError",
    "StoreClosedError",
    "StoreSpec",
    "TransactionStateError",
    "configure_rocksdb",
    "open_backend",
    "rocksdb_memory",
]
