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
