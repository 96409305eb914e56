"""The score path's torch thread pick, and the top-k order that replaces sorting every candidate."""

from __future__ import annotations

import os

import numpy as np
import pytest

from scorer.service import top_k_order
from scorer.threads import MAX_AUTO_THREADS, pick_score_threads, usable_cores


@pytest.mark.parametrize("cores, want", [(1, 1), (2, 1), (3, 2), (4, 3), (16, MAX_AUTO_THREADS)])
def test_auto_leaves_a_core_to_the_worker_within_bounds(cores: int, want: int) -> None:
    assert pick_score_threads(0, cores=cores) == want


def test_a_setting_overrides_the_pick() -> None:
    assert pick_score_threads(3, cores=2) == 3


def test_usable_cores_follow_affinity_and_the_cgroup_quota(tmp_path) -> None:
    affinity = len(os.sched_getaffinity(0))
    none = tmp_path / "missing"
    assert usable_cores(none) == affinity
    unlimited = tmp_path / "cpu.max"
    unlimited.write_text("max 100000\n")
    assert usable_cores(unlimited) == affinity
    quota = tmp_path / "cpu.max.q"
    quota.write_text("150000 100000\n")  # 1.5 cores: one usable whole core
    assert usable_cores(quota) == 1


def test_the_pick_follows_affinity_when_it_is_narrowed() -> None:
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cores() == 1 and pick_score_threads(0) == 1
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.parametrize("seed", range(30))
def test_top_k_equals_a_stable_sort_of_every_candidate(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 600))
    u = rng.normal(size=n)
    if seed % 3 == 0:  # many ties
        u = np.round(u, 1)
    if seed % 5 == 0:
        u[rng.integers(0, n, size=max(1, n // 10))] = -np.inf
    for k in {1, min(n, 25), n, max(1, n // 2)}:
        np.testing.assert_array_equal(top_k_order(u, k), np.argsort(-u, kind="stable")[:k])


def test_the_count_in_use_is_on_metrics() -> None:
    from streams.metrics import render
    from streams.serving.serving import publish_score_threads
    from streams.settings import Settings

    picked = publish_score_threads(Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"))
    assert picked == pick_score_threads(0)
    assert f'feedrank_score_threads{{source="usable_cores"}} {float(picked)}' in render().decode()
    assert publish_score_threads(Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", score_threads=3)) == 3
    text = render().decode()
    assert 'feedrank_score_threads{source="setting"} 3.0' in text and "usable_cores" not in text.split(
        "feedrank_score_threads")[-1]
