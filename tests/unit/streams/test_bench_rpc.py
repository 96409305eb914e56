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


def test_out_writes_results_and_the_latency_distribution(tmp_path) -> None:
    import json

    from streams.tools.bench_rpc import write_out

    pytest.importorskip("matplotlib", reason="matplotlib is in the plots and test extras")
    runs = [{"label": "kafka: paced 50 req/s", "clients": 2, "requests": 300, "p99": 21.0,
             "_latency_ms": [8.0 + i % 13 for i in range(300)]},
            {"label": "kafka: closed loop, 4 client(s)", "clients": 4, "requests": 200, "p99": 40.0,
             "_latency_ms": [15.0 + i % 25 for i in range(200)]}]
    paths = write_out(runs, tmp_path)
    assert [p.name for p in paths] == ["results.json", "latency.svg", "latency.png"]
    assert json.loads(paths[0].read_text())["runs"][0] == {"label": "kafka: paced 50 req/s", "clients": 2,
                                                           "requests": 300, "p99": 21.0}
    svg = paths[1].read_text()
    for text in ("/score latency (ms, log scale)", "kafka: paced 50 req/s", "kafka: closed loop, 4 client(s)", "p99 = "):
        assert text in svg, text
