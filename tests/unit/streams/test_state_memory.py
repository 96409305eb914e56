"""Memory of the state layer stays bounded: RocksDB by one process-wide budget, the record cache by what it keeps.

The load scenario (``feedrank chaos --scenarios load``, docs/reliability.md) measured both as the
causes of a worker's RSS growing from 343 to 1,272 MiB in 10 minutes: RocksDB on default options
(per DB a 32 MiB block cache and up to two 64 MiB memtables) and a record cache that held every
impression and prediction log (~120 KB each) of the attribution window as Python bytes.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

import streams.engine.state.backend as backend
from streams.engine.state import PartitionState, RecordCache, StoreSpec, configure_rocksdb, open_backend, rocksdb_memory

RAW = StoreSpec("pending_impressions")
SEQ = StoreSpec("user_sequences")


@pytest.fixture
def small_budget():
    saved = backend._resources
    res = configure_rocksdb(16)  # 8 MiB block cache + 8 MiB of memtables for every DB of the process
    try:
        yield res
    finally:
        backend._resources = saved


def test_rocksdb_memory_of_all_dbs_stays_within_the_process_budget(tmp_path, small_budget) -> None:
    dbs = [open_backend("rocksdb://", tmp_path, f"p{p}") for p in range(4)]
    try:
        for rnd in range(6):  # 4 DBs x 6 x 4 MiB = 96 MiB written, 6x the budget
            for db in dbs:
                db.write([(f"{rnd}-{i}".encode(), os.urandom(2048)) for i in range(2048)])
        for db in dbs:  # reads fill the block cache (data, index and filter blocks)
            for i in range(0, 2048, 7):
                assert db.get(f"0-{i}".encode()) is not None
        # memtables: one budget for all DBs (RocksDB's default would be up to 4 x 2 x 64 MiB, and would
        # hold all 96 MiB here). The budget flushes and never stalls writes, so on a busy box the
        # background flushes can trail the writes for a moment (21 MiB seen under load 3): give them
        # a few seconds to land, then the memtables must be within the budget.
        deadline = time.monotonic() + 10.0
        mem = rocksdb_memory()
        while mem["memtables"] > small_budget.write_buffer_bytes * 1.25 and time.monotonic() < deadline:
            time.sleep(0.1)
            mem = rocksdb_memory()
        assert mem["dbs"] == 4
        assert mem["memtables"] <= small_budget.write_buffer_bytes * 1.25, mem
        assert mem["block_cache"] <= small_budget.cache_bytes * 1.05, mem
        assert mem["table_readers"] <= 1 << 20, mem  # index/filter blocks live in the cache
    finally:
        for db in dbs:
            db.destroy()
    assert rocksdb_memory()["dbs"] == 0


def test_record_cache_keeps_raw_values_only_until_their_checkpoint_is_committed() -> None:
    from features.seqcodec import ActionSequence
    from features.seqcodec import decode as decode_seq

    state = PartitionState(open_backend(f"memory://{uuid.uuid4().hex}", ".", "p0"), 0)
    codecs = {SEQ.name: (lambda b: decode_seq(b, 8), lambda s: s.encode())}
    cache = RecordCache(state, codecs, max_entries=1_000_000)
    seq = ActionSequence(8)
    seq.add(event_id="a", item_id="x", action="click", ts=1_764_000_000_000, surface="", item_type="organic")
    cache.set(SEQ, "u", seq)
    for i in range(100):
        cache.set(RAW, f"k{i}", b"x" * 1000)
    cache.delete(RAW, "gone")
    snap = cache.snapshot()
    cache.set(RAW, "k0", b"newer")  # written again while the checkpoint is in flight: stays (dirty)
    assert cache.get(RAW, "k1") == b"x" * 1000  # read-your-own-writes while in flight
    state.commit(snap.all_changes(), state.meta)
    cache.committed()
    assert cache.is_cached(SEQ, "u")  # decoded objects stay: they save decoding
    assert cache.is_cached(RAW, "k0") and cache.get(RAW, "k0") == b"newer"
    assert not cache.is_cached(RAW, "k1") and not cache.is_cached(RAW, "gone")
    assert cache.get(RAW, "k1") == b"x" * 1000 and cache.get(RAW, "gone") is None  # from the store
    assert cache.is_cached(RAW, "k1")  # a raw read is kept until the next commit...
    snap = cache.snapshot()
    state.commit(snap.all_changes(), state.meta)
    cache.committed()
    assert not cache.is_cached(RAW, "k1") and not cache.is_cached(RAW, "k0")  # ...and no longer
    assert cache.get(RAW, "k0") == b"newer"
    assert len(cache._cache) == 2  # u and the k0 just read


def test_record_cache_failed_checkpoint_keeps_its_raw_values() -> None:
    state = PartitionState(open_backend(f"memory://{uuid.uuid4().hex}", ".", "p0"), 0)
    cache = RecordCache(state, {}, max_entries=1_000_000)
    cache.set(RAW, "k", b"v")
    cache.snapshot()
    cache.failed()  # not in the store: must stay cached and dirty
    assert cache.get(RAW, "k") == b"v" and cache.changed == 1
    snap = cache.snapshot()
    state.commit(snap.all_changes(), state.meta)
    cache.committed()
    assert not cache.is_cached(RAW, "k") and cache.get(RAW, "k") == b"v"
