"""One contract suite over every state backend (memory://, rocksdb://)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from streams.engine.state import (
    BackendURLError,
    Meta,
    PartitionState,
    StoreClosedError,
    RecordCache,
    StoreSpec,
    TransactionStateError,
    open_backend,
)
from streams.engine.state.changelog import ChangelogReplay, FENCE_KEY, MARKER_KEY

S = StoreSpec("s")
T = StoreSpec("t")


@pytest.fixture(params=["memory", "rocksdb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"memory://{uuid.uuid4().hex}" if request.param == "memory" else f"rocksdb://{tmp_path}"


def test_batch_write_get_and_prefix_iteration(url: str, tmp_path: Path) -> None:
    b = open_backend(url, tmp_path, "p0")
    b.write([(b"s\x01a", b"1"), (b"s\x01b", b"2"), (b"t\x01a", b"3"), (b"s\x01c", b"x")])
    b.write([(b"s\x01c", None)])
    assert b.get(b"s\x01a") == b"1" and b.get(b"s\x01c") is None
    assert list(b.items(b"s\x01")) == [(b"s\x01a", b"1"), (b"s\x01b", b"2")]
    b.close()
    with pytest.raises(StoreClosedError):
        b.get(b"s\x01a")


def test_commit_is_atomic_with_meta_and_survives_reopen(url: str, tmp_path: Path) -> None:
    st = PartitionState(open_backend(url, tmp_path, "p1"), 1)
    assert st.meta.offsets == {} and st.meta.changelog_offset == -1
    cache = RecordCache(st)
    cache.set(S, "k", b"v1")
    cache.set(T, "k", b"w")
    assert cache.get(S, "k") == b"v1"  # read your own writes
    assert st.get(S.full_key("k")) is None  # nothing visible in the store yet
    snap = cache.snapshot()
    with pytest.raises(TransactionStateError):
        cache.snapshot()  # one checkpoint in flight at a time
    st.commit(snap.all_changes(), Meta(offsets={"in": 41}, ckpt=1, changelog_offset=7))
    cache.committed()
    st.close()
    st2 = PartitionState(open_backend(url, tmp_path, "p1"), 1)
    assert st2.meta.offsets == {"in": 41} and st2.meta.ckpt == 1 and st2.meta.changelog_offset == 7
    assert dict(st2.items(S)) == {"k": b"v1"}
    cache2 = RecordCache(st2)
    cache2.delete(S, "k")
    assert cache2.get(S, "k") is None
    st2.commit(cache2.snapshot().all_changes(), Meta(offsets={"in": 42}, ckpt=2))
    assert dict(st2.items(S)) == {} and dict(st2.items(T)) == {"k": b"w"}
    st2.close()


def test_record_cache_coalesces_updates_per_key(url: str, tmp_path: Path) -> None:
    st = PartitionState(open_backend(url, tmp_path, "p2"), 2)
    cache = RecordCache(st)
    for i in range(100):
        cache.set(S, f"k{i % 3}", str(i).encode())
    changes = cache.snapshot().all_changes()
    assert len(changes) == 3
    assert dict(changes)[S.full_key("k0")] == b"99"


def test_replay_applies_only_checkpoints_with_a_marker(url: str, tmp_path: Path) -> None:
    st = PartitionState(open_backend(url, tmp_path, "p3"), 3)
    recs = [
        (0, S.full_key("a"), b"1"),
        (1, MARKER_KEY, Meta(offsets={"in": 10}, ckpt=1).encode()),
        (2, S.full_key("a"), b"2"),
        (3, FENCE_KEY, b"tok"),
        (4, S.full_key("b"), b"3"),
        (5, MARKER_KEY, Meta(offsets={"in": 20}, ckpt=2).encode()),
        (6, S.full_key("a"), b"half"),  # the worker died while writing checkpoint 3
        (7, S.full_key("c"), b"half"),
    ]
    replay = ChangelogReplay()
    for cp in replay.feed_all(recs):
        st.commit(cp.changes, cp.meta)
    assert dict(st.items(S)) == {"a": b"2", "b": b"3"}
    assert st.meta.offsets == {"in": 20} and st.meta.changelog_offset == 5
    assert replay.tail_keys() == [S.full_key("a"), S.full_key("c")]
    assert replay.fences == [b"tok"]


def test_backend_urls() -> None:
    with pytest.raises(BackendURLError):
        open_backend("redis://x", ".", "p")
    with pytest.raises(BackendURLError):
        open_backend("memory", ".", "p")
