"""Repeated SIGKILLs mid-stream: every table equals the recomputation, each impression labeled once."""

from __future__ import annotations

import pytest

from streams.tools.chaos.crash import run_crash

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_repeated_sigkills_keep_every_table_equal_to_the_recomputation(kafka_bootstrap, tmp_path) -> None:
    result = run_crash(kafka_bootstrap, tmp_path, kills=2, users=100, requests=1000, seed=11, stream_s=20.0)
    assert result["problems"] == [], result["problems"]
    assert result["kills_survived"] == 2
    assert all(k["exit"] == -9 for k in result["kills"])  # really SIGKILLed, no graceful path
    assert result["records_accounted"] == result["records_in"]
    assert result["tables_equal_recomputation"]
    # exactly once after dedup by example_id, none missing; raw re-emits are allowed (at-least-once topic)
    assert result["labeled_duplicates_after_dedup"] == 0
    assert result["labeled_missing"] == 0
    assert result["labeled_distinct"] == result["labeled_expected"] > 0
    assert result["labeled_raw_records"] == result["labeled_distinct"] + result["labeled_raw_re_emits"]
