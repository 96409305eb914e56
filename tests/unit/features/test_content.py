"""Item content embeddings: the catalogue's vectors, the model's table by hashed bucket, graceful unknowns."""

from __future__ import annotations

import numpy as np
import pytest

from features.content import content_table
from features.state import stable_hash
from features.world import World, WorldParams


def test_content_carries_the_topic_through_noise() -> None:
    w = World(seed=4, n_users=10, n_items=2000)
    ids, vec = w.catalogue_content()
    assert len(ids) == 2000 and vec.shape == (2000, w.p.content_dim) and vec.dtype == np.float32
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    main = w.item_topic.argmax(1)
    sim = vec @ vec.T
    same = main[:, None] == main[None, :]
    off = ~np.eye(len(ids), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.3
    # it is a noisy view: not the topic vector itself, and more noise blurs it
    blurred = World(seed=4, n_users=10, n_items=2000, params=WorldParams(content_noise=3.0)).item_content
    sim_b = blurred @ blurred.T
    assert sim_b[same & off].mean() - sim_b[~same].mean() < sim[same & off].mean() - sim[~same].mean()


def test_content_leaves_the_rest_of_the_world_unchanged() -> None:
    a = World(seed=5, n_users=50, n_items=300)
    b = World(seed=5, n_users=50, n_items=300, params=WorldParams(content_noise=0.9, content_dim=8))
    assert np.array_equal(a.item_topic, b.item_topic) and np.array_equal(a.user_unwanted, b.user_unwanted)
    ra, rb = a.new_request(), b.new_request()
    assert [c.item_id for c in ra.candidates] == [c.item_id for c in rb.candidates]
    assert not np.allclose(a.item_content[:, :8], b.item_content)


def test_table_by_hashed_bucket_with_flag_and_zero_for_unknown() -> None:
    ids = ["i1", "i2", "i3"]
    vec = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    buckets = 97
    t = content_table(ids, vec, buckets)
    assert t.shape == (buckets, 3) and t.dtype == np.float32
    for i, v in zip(ids, vec):
        b = stable_hash(i, buckets - 1) + 1  # the bucket assembly gives seq_item / cand_item
        assert np.allclose(t[b, :2], v) and t[b, 2] == 1.0
    assert t[0].sum() == 0.0  # padding
    unknown = stable_hash("i999", buckets - 1) + 1
    assert unknown not in {stable_hash(i, buckets - 1) + 1 for i in ids}
    assert np.all(t[unknown] == 0.0)  # an unknown item: zero vector, flag 0
    assert int(t[:, 2].sum()) == 3


def test_colliding_items_share_their_mean() -> None:
    buckets = 3  # two non-padding buckets: four items must collide
    ids = ["a", "b", "c", "d"]
    vec = np.eye(4)
    t = content_table(ids, vec, buckets)
    b = np.array([stable_hash(i, buckets - 1) + 1 for i in ids])
    for k in set(b.tolist()):
        assert np.allclose(t[k, :4], vec[b == k].mean(0)) and t[k, 4] == 1.0
    with pytest.raises(ValueError, match="3 item ids but 4"):
        content_table(ids[:3], vec, buckets)
