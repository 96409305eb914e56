"""Bounded state: event-time user retention (sweep + insertion check) and the record cache's in-flight snapshot.

Pure (no broker): ``PartitionTables`` over memory backends. The retention is deterministic: any
interleaving of the inputs (and any batch boundaries) gives byte-identical tables.
"""

from __future__ import annotations

import random
import uuid

from features.events import Engagement, Impression, encode_event
from streams.engine.state import PartitionState, StoreSpec, open_backend
from streams.engine.state.record_cache import RecordCache
from streams.engine.tables import ALL_STORES, USER_COUNTERS, USER_SEQUENCES, PartitionTables, retention_threshold

T0 = 1_764_000_000_000
H = 3_600_000


def _stream(seed: int = 3) -> list[tuple[str, object]]:
    """Users active early only (silent later), users active throughout; ~6 hours of event time."""
    rng = random.Random(seed)
    out: list[tuple[str, object]] = []
    n = 0
    for step in range(600):
        t = T0 + step * 36_000  # 6 h
        users = [f"early{i}" for i in range(5)] if step < 100 else []
        users += [f"live{i}" for i in range(5)]
        u = rng.choice(users)
        n += 1
        out.append(("impression", Impression(event_id=f"m{n}", user_id=u, item_id=f"i{n}", request_id=f"r{n}", ts=t,
                                             surface="home", position=0, item_type="organic", country="US",
                                             gender="f", app_type="ios", device_type="phone")))
        if rng.random() < 0.6:
            out.append(("engagement", Engagement(event_id=f"g{n}", user_id=u, item_id=f"i{n}", request_id=f"r{n}",
                                                 ts=t + rng.randrange(0, 40_000), action="click")))
    return out


def _run(records: list[tuple[str, object]], order: str, seed: int = 0) -> tuple[dict, PartitionTables]:
    state = PartitionState(open_backend(f"memory://{uuid.uuid4().hex}", ".", "p0"), 0)
    tables = PartitionTables(state, seq_len=8, window_ms=60_000, lateness_ms=5_000, retention_ms=2 * H)
    by_kind = {k: [(i, ev) for i, (kk, ev) in enumerate(x for x in records if x[0] == k)]
               for k in ("impression", "engagement")}
    topics = {"impression": "imp", "engagement": "eng"}
    feed = {k: [(k, i, ev, encode_event(ev)) for i, ev in v] for k, v in by_kind.items()}  # type: ignore[arg-type]
    if order == "sequential":
        for k in ("impression", "engagement"):
            tables.process(topics[k], feed[k])
    else:  # random interleaving in random batches, checkpoints in between
        rng = random.Random(seed)
        pos = dict.fromkeys(feed, 0)
        while any(pos[k] < len(feed[k]) for k in feed):
            k = rng.choice([k for k in feed if pos[k] < len(feed[k])])
            n = rng.randint(1, 40)
            tables.process(topics[k], feed[k][pos[k]:pos[k] + n])
            pos[k] += n
            if rng.random() < 0.2:
                tables.checkpoint_local()
    tables.checkpoint_local()
    dump = {s.name: dict(state.items(s)) for s in ALL_STORES}
    return dump, tables


def test_silent_users_are_evicted_and_old_entries_dropped() -> None:
    dump, tables = _run(_stream(), "sequential")
    ttl = retention_threshold(tables.join.wm_eng, 2 * H)
    assert ttl > T0 + 2 * H and tables.sweeps >= 1
    users = set(dump[USER_COUNTERS.name]) | set(dump[USER_SEQUENCES.name])
    assert users and not any(u.startswith("early") for u in users)  # silent for > retention: gone
    assert {f"live{i}" for i in range(5)} <= users
    from features.seqcodec import decode
    from features.tiles import UserCounters

    for blob in dump[USER_SEQUENCES.name].values():
        seq = decode(blob, 8)
        assert len(seq) <= 8 and min(seq.ts) >= ttl
    for blob in dump[USER_COUNTERS.name].values():
        c = UserCounters.decode(blob)
        assert min(list(c.short) + list(c.long)) >= ttl
    assert tables.stats()["swept_users"] >= 5


def test_retention_gives_the_same_tables_for_any_interleaving() -> None:
    records = _stream()
    want, _ = _run(records, "sequential")
    for seed in range(4):
        got, _ = _run(records, "interleaved", seed)
        assert got == want, f"interleaving {seed} differs"


def test_record_cache_snapshot_freezes_values_while_processing_goes_on() -> None:
    from features.seqcodec import ActionSequence
    from features.seqcodec import decode as decode_seq

    S = StoreSpec("user_sequences")
    state = PartitionState(open_backend(f"memory://{uuid.uuid4().hex}", ".", "p0"), 0)
    codecs = {S.name: (lambda b: decode_seq(b, 8), lambda s: s.encode())}
    cache = RecordCache(state, codecs, max_entries=1)
    seq = ActionSequence(8)
    seq.add(event_id="a", item_id="x", action="click", ts=T0, surface="", item_type="organic")
    cache.set(S, "u", seq)
    cache.set(StoreSpec("raw"), "k", b"v1")
    snap = cache.snapshot()
    # processing goes on: an in-place mutation after the snapshot must not leak into it
    s2 = cache.get(S, "u")
    s2.add(event_id="b", item_id="y", action="click", ts=T0 + 1, surface="", item_type="organic")
    cache.set(S, "u", s2)
    cache.set(StoreSpec("raw"), "k", b"v2")
    changes = dict(snap.all_changes())
    assert len(decode_seq(changes[S.full_key("u")], 8)) == 1 and changes[StoreSpec("raw").full_key("k")] == b"v1"
    state.commit(list(changes.items()), state.meta)
    cache.committed()  # over max_entries: clean entries evicted, the dirty ones stay
    assert len(cache.get(S, "u")) == 2 and cache.get(StoreSpec("raw"), "k") == b"v2"
    snap2 = cache.snapshot()
    assert len(decode_seq(dict(snap2.all_changes())[S.full_key("u")], 8)) == 2


def test_pending_impressions_of_the_per_impression_layout_move_into_their_requests() -> None:
    """State written before the join kept one value per request opens as if the new code had written it."""
    import struct

    from features.labels import join_key
    from streams.engine.tables import LEGACY_PENDING_IMPRESSIONS, PENDING_REQUESTS

    imps = [Impression(event_id=f"m{i}", user_id=f"u{i % 2}", item_id=f"i{i}", request_id=f"r{i % 3}",
                       ts=T0 + i, surface="home", position=i, item_type="organic", country="DE", gender="m",
                       app_type="ios", device_type="phone") for i in range(9)]
    want, fresh = _run([("impression", ev) for ev in imps], "sequential")
    name = uuid.uuid4().hex
    state = PartitionState(open_backend(f"memory://{name}", ".", "p0"), 0)
    old = [(LEGACY_PENDING_IMPRESSIONS.full_key(join_key(ev.user_id, ev.item_id, ev.request_id)),
            struct.pack("<Bq2s1s", 0, ev.ts, b"DE", b"m") + encode_event(ev)) for ev in imps]
    state.commit(old, state.meta)
    tables = PartitionTables(state, seq_len=8, window_ms=60_000, lateness_ms=5_000, retention_ms=2 * H)
    assert tables.join.open_deadlines() == fresh.join.open_deadlines() == 9
    tables.checkpoint_local()
    assert dict(state.items(PENDING_REQUESTS)) == want[PENDING_REQUESTS.name] and len(want[PENDING_REQUESTS.name]) == 6
    assert dict(state.items(LEGACY_PENDING_IMPRESSIONS)) == {}
    out: list[str] = []
    tables.join.emit = lambda user, ex: out.append(ex["example_id"])
    tables.process("eng", [("engagement", 0, Engagement(event_id="g", user_id="u0", item_id="x", request_id="y",
                                                         ts=T0 + 10 * 60_000, action="click"), b"")])
    assert sorted(out) == sorted(ev.event_id for ev in imps)
