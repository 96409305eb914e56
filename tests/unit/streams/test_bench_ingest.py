"""``feedrank bench ingest``'s choice of freshness rates and its goal verdicts (pure logic)."""

import argparse

from streams.tools.bench_ingest import _freshness_loads, _goals, add_arguments


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_default_run_measures_half_the_goal_then_half_the_measured_max() -> None:
    assert _freshness_loads(_args(), 37_000.0) == [("", 20_000.0), ("halfmax_", 18_500.0)]
    assert _freshness_loads(_args("--goal-rate", "30000", "--load", "0"), 37_000.0) == [("", 15_000.0)]
    assert _freshness_loads(_args("--load-rate", "2000"), 37_000.0) == [("", 2_000.0)]


def test_goal_verdicts_follow_the_figures() -> None:
    a = _args()
    met = _goals(a, {"engine_events_per_s": 40_000, "freshness_p99_ms": 49.9, "freshness_load_events_per_s": 20_000})
    assert met["goal_engine_events_per_s"].endswith(": met")
    assert met["goal_freshness_p99"].endswith(": met")
    missed = _goals(a, {"engine_events_per_s": 39_999, "freshness_p99_ms": 50.0,
                        "freshness_load_events_per_s": 20_000})
    assert missed["goal_engine_events_per_s"].endswith("NOT met")
    assert missed["goal_freshness_p99"].endswith("NOT met")
    slower = _goals(a, {"engine_events_per_s": 30_000, "freshness_p99_ms": 10.0, "freshness_load_events_per_s": 19_999})
    assert slower["goal_freshness_p99"].endswith("not measured at that rate")
    assert "goal_freshness_p99" not in _goals(a, {"engine_events_per_s": 30_000})


def test_out_writes_results_and_the_freshness_distribution(tmp_path) -> None:
    import json

    import pytest

    from streams.tools.bench_ingest import freshness_distributions, print_side_by_side, write_out

    pytest.importorskip("matplotlib", reason="matplotlib is in the plots and test extras")
    results = [{"broker": "embedded", "engine_events_per_s": 30_000,
                "_freshness_ms": {"20,000 events/s": [5.0 + i % 40 for i in range(500)]}},
               {"broker": "kafka", "engine_events_per_s": 41_000,
                "_freshness_ms": {"20,000 events/s": [2.0 + i % 9 for i in range(300)]}}]
    assert list(freshness_distributions(results)) == ["embedded, 20,000 events/s", "kafka, 20,000 events/s"]
    paths = write_out(results, tmp_path)
    assert [p.name for p in paths] == ["results.json", "freshness.svg", "freshness.png"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"][1] == {"broker": "kafka", "engine_events_per_s": 41_000}  # raw samples left out
    svg = (tmp_path / "freshness.svg").read_text()
    for text in ("freshness (ms, log scale)", "samples", "embedded, 20,000 events/s", "kafka, 20,000 events/s",
                 "p99 = "):
        assert text in svg, text
    print_side_by_side(results)  # the samples are not printed
