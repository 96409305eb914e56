"""Fuzz both doors: every bad event dead-lettered with a reason, every bad request a 4xx, good traffic complete."""

from __future__ import annotations

import pytest

from features.events import Engagement, Impression
import time

from streams.tools.chaos.fuzz import FUZZ_BOUNDS, fuzz_events, fuzz_requests, run_fuzz
from streams.engine.ingest import DeadLetter, TimeBounds, decode_message

N_BAD, N_GOOD, N_BAD_REQ, N_GOOD_REQ, N_SLOW = 120, 120, 64, 32, 4


def test_fuzz_corpus_is_what_it_claims() -> None:
    """Offline: the contract's rules refuse every row meant bad and accept every good one."""
    rows = fuzz_events(N_BAD, N_GOOD, seed=13)
    assert len(rows) == N_BAD + N_GOOD
    cats = {r[0] for r in rows if r[4]}
    assert len(cats) == 10
    assert any(r[0] == "good: re-sent" for r in rows)
    now = int(time.time() * 1000)
    for cat, kind, key, value, meant_bad in rows:
        d = decode_message("t", 0, 0, key, value, Impression if kind == "imp" else Engagement, now,
                           TimeBounds(*FUZZ_BOUNDS))
        assert isinstance(d, DeadLetter) == meant_bad, (cat, value[:100] if value else value)
        if meant_bad:
            assert d.reason
    bodies = fuzz_requests(N_BAD_REQ, seed=13)
    assert len(bodies) == N_BAD_REQ and len({c for c, _ in bodies}) == 8


@pytest.mark.broker
@pytest.mark.slow
def test_fuzz_both_doors_counts_exact(kafka_bootstrap, tmp_path, tiny_model_dir) -> None:
    result = run_fuzz(kafka_bootstrap, tmp_path, tiny_model_dir / "models", tiny_model_dir / "calibrators",
                      bad_events=N_BAD, good_events=N_GOOD, bad_requests=N_BAD_REQ, good_requests=N_GOOD_REQ,
                      slow_requests=N_SLOW, seed=13)
    assert result["problems"] == [], result["problems"]
    assert result["bad_events"] == N_BAD and result["good_events"] == N_GOOD
    assert result["dead_lettered"] == N_BAD and result["dlq_records"] == N_BAD
    assert result["valid_counted"] == N_GOOD
    assert result["lost"] == 0 and result["wrongly_applied"] == 0
    assert result["misrouted"] > 0 and result["forwarded"] == result["misrouted"]
    assert result["bad_requests"] == N_BAD_REQ and result["bad_requests_4xx"] == N_BAD_REQ
    assert result["good_requests"] == N_GOOD_REQ and result["good_requests_200"] == N_GOOD_REQ
