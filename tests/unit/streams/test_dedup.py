"""``streams.engine.dedup``: each event id counted once per user and hour, forgotten below the threshold."""

from __future__ import annotations

import uuid

from features.tiles import LONG_TILE_MS, LONG_WINDOW_MS
from streams.engine.dedup import CODEC, SMALL_IDS, CounterDedup, IdSet, decode_ids, dedup_threshold, encode_ids
from streams.engine.state import PartitionState, StoreSpec, open_backend
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


def _added_in_order(ids: list[str], checkpoint_every: int) -> bytes:
    s = IdSet(set())
    for i, e in enumerate(ids):
        assert s.add(e) is True
        if i % checkpoint_every == checkpoint_every - 1:
            s = decode_ids(encode_ids(s))  # a checkpoint, and the partition reopened on it
    return encode_ids(s)


def test_a_busy_users_ids_become_hashes_and_still_count_once_whatever_the_order() -> None:
    ids = [f"e{i}" for i in range(3 * SMALL_IDS)]
    forward = _added_in_order(ids, checkpoint_every=97)
    backward = _added_in_order(ids[::-1], checkpoint_every=250)
    assert forward == backward  # the same bytes for the same ids
    assert len(forward) == 1 + 8 * len(ids)  # 8 bytes an id, not the ids' JSON
    s = decode_ids(forward)
    assert len(s) == len(ids) and all(e in s for e in ids) and "e-other" not in s
    assert s.add(ids[5]) is False and s.add(ids[-1]) is False  # repeats, from the stored hashes
    assert s.add("e-new") is True and s.add("e-new") is False  # a repeat of an id added since
    assert "e-new" in decode_ids(encode_ids(s))


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
