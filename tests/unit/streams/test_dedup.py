"""``streams.engine.dedup``: each event id counted once per user and hour, forgotten below the threshold."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from features.tiles import LONG_TILE_MS, LONG_WINDOW_MS
from streams.engine.dedup import (CHUNK, CODEC, SMALL_IDS, CounterDedup, IdSet, chunk_hashes, chunk_key, decode_ids,
                                   dedup_threshold, encode_ids, id_hash)
from streams.engine.state import PartitionState, StateError, StoreSpec, open_backend
from streams.engine.state.record_cache import RecordCache

H = LONG_TILE_MS
T0 = 500_000 * H
STORE = StoreSpec("impression_ids_by_hour")


def _dedup() -> tuple[CounterDedup, RecordCache, PartitionState]:
    state = PartitionState(open_backend(f"memory://{uuid.uuid4().hex}", ".", "p0"), 0)
    cache = RecordCache(state, {STORE.name: CODEC})
    return CounterDedup(STORE, cache, state, wm=0, ttl=0), cache, state


def _commit(cache: RecordCache, state: PartitionState) -> None:
    snap = cache.snapshot()
    state.commit(snap.all_changes(), state.meta)
    cache.committed()


def test_an_id_counts_once_per_user_and_hour_also_after_a_checkpoint() -> None:
    d, cache, state = _dedup()
    assert d.first("u1", "e1", T0) is True
    assert d.first("u1", "e1", T0 + 5) is False  # same hour: a re-send
    assert d.first("u2", "e1", T0) is True  # another user
    assert d.first("u1", "e1", T0 + H) is True  # another hour of event time
    _commit(cache, state)
    fresh = RecordCache(state, cache.codecs)  # a reopened partition reads the stored values
    d2 = CounterDedup(STORE, fresh, state, wm=0, ttl=0)
    assert d2.first("u1", "e1", T0) is False and d2.first("u1", "e2", T0) is True
    # one value per user and hour, whatever the number of events
    assert sorted(k for k, _ in state.items(STORE)) == [f"{T0 // H:08d}|u1", f"{T0 // H:08d}|u2",
                                                        f"{T0 // H + 1:08d}|u1"]


def test_the_bytes_do_not_depend_on_the_order_of_arrival() -> None:
    ids = [f"e{i}" for i in range(20)]
    assert encode_ids(set(ids)) == encode_ids(set(reversed(ids)))
    assert decode_ids(encode_ids(set(ids))).ids == set(ids)


def test_a_moving_threshold_forgets_old_hours_of_cached_and_stored_users() -> None:
    d, cache, state = _dedup()
    d.first("stored", "old", T0)
    d.first("stored", "new", T0 + 2 * H)
    d.first("gone", "old", T0)
    _commit(cache, state)
    d.cache = cache = RecordCache(state, cache.codecs)  # nothing cached: the sweep scans the store
    d.first("cached", "old", T0 + H)
    wm = T0 + 2 * H + LONG_WINDOW_MS + LONG_TILE_MS  # threshold: T0 + 2 h
    assert dedup_threshold(wm) == T0 + 2 * H
    d.advance(wm, 0)
    assert d.first("stored", "x", T0 + H) is None  # below the threshold: not counted, not remembered
    _commit(cache, state)
    assert {k: decode_ids(v).ids for k, v in state.items(STORE)} == {f"{T0 // H + 2:08d}|stored": {"new"}}


def _stored_after(ids: list[str], checkpoint_every: int, reopen: bool = True) -> dict[str, bytes]:
    """The store after adding ``ids`` of one user and hour in order, checkpointing every so often."""
    d, cache, state = _dedup()
    for i, e in enumerate(ids):
        assert d.first("bot", e, T0 + i) is True
        if i % checkpoint_every == checkpoint_every - 1:
            _commit(cache, state)
            if reopen:  # and the partition reopened on it
                d.cache = cache = RecordCache(state, cache.codecs)
    _commit(cache, state)
    return dict(state.items(STORE))


def test_a_busy_users_ids_become_hashes_in_chunks_that_depend_on_the_order_only() -> None:
    ids = [f"e{i}" for i in range(3 * CHUNK + 100)]
    stored = _stored_after(ids, checkpoint_every=97)
    assert stored == _stored_after(ids, checkpoint_every=250, reopen=False)  # not on the checkpoints
    key = f"{T0 // H:08d}|bot"
    assert sorted(stored) == [key] + [chunk_key(key, n) for n in range(3)]
    assert all(len(stored[chunk_key(key, n)]) == 1 + 8 * CHUNK for n in range(3))  # 8 bytes an id
    head = decode_ids(stored[key])
    assert head.n_sealed == 3 and len(head.open) == 100 and head.sealed is None  # chunks read on use
    # reopened: repeats are recognised from the chunks and from the unsealed hashes
    d, cache, state = _dedup()
    state.commit(list((STORE.full_key(k), v) for k, v in stored.items()), state.meta)
    assert d.first("bot", ids[5], T0) is False and d.first("bot", ids[-1], T0) is False
    assert d.first("bot", "e-new", T0) is True and d.first("bot", "e-new", T0) is False
    assert len(cache.get(STORE, key)) == len(ids) + 1
    # another order holds the same ids, in other chunks
    shuffled = ids[::-1]
    other = _stored_after(shuffled, checkpoint_every=300)
    assert other != stored and sorted(other) == sorted(stored)
    whole = np.sort(np.concatenate([chunk_hashes(stored[chunk_key(key, n)]) for n in range(3)]))
    assert whole.tolist() == sorted(id_hash(e) for e in ids[:3 * CHUNK])


def test_a_checkpoint_writes_a_busy_users_new_ids_not_the_whole_hour() -> None:
    d, cache, state = _dedup()
    for i in range(5 * CHUNK):
        d.first("bot", f"e{i}", T0 + i)
    _commit(cache, state)
    d.first("bot", "e-next", T0)
    snap = cache.snapshot()
    changes = snap.all_changes()
    assert len(changes) == 1 and len(changes[0][1]) == 5 + 8 * 1  # the hour value: count + 1 hash
    state.commit(changes, state.meta)
    cache.committed()
    # a sealed chunk is written once, as bytes, and leaves the cache when written
    for i in range(CHUNK):
        d.first("bot", f"f{i}", T0 + i)
    key = chunk_key(f"{T0 // H:08d}|bot", 5)
    assert isinstance(cache.peek(STORE, key), bytes)
    _commit(cache, state)
    assert not cache.is_cached(STORE, key) and state.get(STORE.full_key(key)) is not None


def test_the_single_value_layout_of_hashes_still_reads_and_goes_on_in_chunks() -> None:
    d, cache, state = _dedup()
    ids = [f"e{i}" for i in range(CHUNK + 10)]
    legacy = b"\x01" + np.sort(np.array([id_hash(e) for e in ids], dtype="<i8")).tobytes()
    key = f"{T0 // H:08d}|bot"
    state.commit([(STORE.full_key(key), legacy)], state.meta)
    assert d.first("bot", "e3", T0) is False
    assert d.first("bot", "new", T0) is True  # past CHUNK unsealed hashes: sealed at once
    _commit(cache, state)
    assert decode_ids(state.get(STORE.full_key(key))).n_sealed == 1
    assert state.get(STORE.full_key(chunk_key(key, 0))) is not None


def test_a_missing_chunk_is_a_state_error_naming_the_key() -> None:
    d, cache, state = _dedup()
    key = f"{T0 // H:08d}|bot"
    state.commit([(STORE.full_key(key), encode_ids(IdSet(open_={1, 2}, n_sealed=1)))], state.meta)
    with pytest.raises(StateError, match=r"chunk 0 of .*bot"):
        d.first("bot", "x", T0)


def test_the_ids_of_an_hour_no_longer_written_leave_the_cache_but_not_the_store() -> None:
    d, cache, state = _dedup()
    for i in range(SMALL_IDS + 10):
        d.first("bot", f"e{i}", T0 + i)
    d.first("u1", "x", T0)
    d.advance(T0 + 1, 0)
    _commit(cache, state)
    key = f"{T0 // H:08d}|bot"
    assert cache.is_cached(STORE, key)
    d.advance(T0 + H + 5, 0)  # the next hour: the previous one may still get late events
    assert cache.is_cached(STORE, key)
    d.first("bot", "e-late", T0 + 9)  # written again: dirty, so it stays through the next move
    d.advance(T0 + 2 * H + 5, 0)
    assert cache.is_cached(STORE, key)
    _commit(cache, state)
    d.advance(T0 + 3 * H + 5, 0)  # two hours on, written: dropped from the cache
    assert not cache.is_cached(STORE, key) and not cache.is_cached(STORE, f"{T0 // H:08d}|u1")
    assert d.first("bot", "e3", T0 + 3) is False and d.first("bot", "e-late", T0 + 9) is False  # read back
    assert d.first("u1", "x", T0) is False


def test_values_of_a_checkpoint_in_flight_are_not_dropped() -> None:
    d, cache, state = _dedup()
    d.first("u1", "a", T0)
    snap = cache.snapshot()
    snap.serialize()  # encoded, not yet in the store
    assert cache.drop_clean(STORE, f"{T0 // H + 1:08d}|") == 0
    state.commit(snap.all_changes(), state.meta)
    cache.committed()
    assert cache.drop_clean(STORE, f"{T0 // H + 1:08d}|") == 1
    assert d.first("u1", "a", T0) is False
