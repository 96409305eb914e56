"""How far a worker's tables are behind their inputs when a request reads them (``lag_behind``): logged with
the sampled model inputs, so the consistency check tells a backlog's in-flight events from a divergence."""

from __future__ import annotations

from streams.engine.engine import lag_behind

NOW = 1_764_000_000_000


def test_an_input_read_to_its_end_is_not_behind() -> None:
    assert lag_behind([(100, NOW - 30_000, 100)], NOW) == 0  # old newest record, but nothing newer at the broker
    assert lag_behind([], NOW) == 0


def test_an_input_with_newer_records_at_the_broker_is_behind_by_its_newest_record_age() -> None:
    assert lag_behind([(100, NOW - 30_000, 250)], NOW) == 30_000


def test_the_most_behind_input_counts_and_unknown_high_watermarks_do_not() -> None:
    inputs = [(10, NOW - 2_000, 20), (50, NOW - 45_000, 51), (7, NOW - 90_000, None), (3, 0, 9)]
    assert lag_behind(inputs, NOW) == 45_000
