"""`feedrank bench rpc` argument parsing (the benchmark itself prints numbers; it is not timed in tests)."""

from __future__ import annotations

import pytest

from streams.tools.bench_rpc import _clients


def test_clients_lists_the_closed_loops_and_empty_means_paced_only() -> None:
    assert _clients("1,2,4") == [1, 2, 4]
    assert _clients(" 2 , 8 ") == [2, 8]
    assert _clients("") == []
    with pytest.raises(SystemExit, match="comma-separated client counts"):
        _clients("1,two")
    with pytest.raises(SystemExit, match="at least 1"):
        _clients("0,2")


def test_worker_side_reads_the_worker_histograms_from_a_scrape() -> None:
    from streams.metrics import SCORE_STAGE_SECONDS, parse_text, render
    from streams.tools.bench_rpc import _worker_side

    before = parse_text(render().decode())
    SCORE_STAGE_SECONDS.labels("score").observe(0.004)
    w = _worker_side(before, parse_text(render().decode()))
    assert w["stages"].split("  ")[1].split("/")[3] == "5"  # the score stage's p99 bucket bound, ms
    assert w["score_p99"] == "-"  # nothing observed in between
