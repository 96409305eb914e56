"""``streams.engine.dedup``: each event id counted once per user and hour, forgotten below the threshold."""

from __future__ import annotations

import uuid

from features.tiles import LONG_TILE_MS, LONG_WINDOW_MS
from streams.engine.dedup import CODEC, CounterDedup, decode_ids, dedup_threshold, encode_ids
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
    assert decode_ids(encode_ids(set(ids))) == set(ids)


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
    assert {k: decode_ids(v) for k, v in state.items(STORE)} == {f"{T0 // H + 2:08d}|stored": {"new"}}
