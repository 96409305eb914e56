"""Online/offline consistency on a real broker (issue 28): what ``/score`` served equals what the replay gives.

One worker with the tiny model, every request's inputs logged (``FEEDRANK_FEATURE_LOG_SAMPLE=1``) and the
consistency check running beside the stream (``FEEDRANK_CONSISTENCY_CHECK``); the synthetic world plays the
users in a closed loop (``feedrank simulate``'s ``Simulator``) for 60 s. Then the topics are replayed offline
(``streams.tools.consistency.check_topics``) and every feature must agree, the feedback loop apart (served
from the checkpoints, so behind event time: dated, not compared).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from features.assembly import FeatureSpec
from streams.metrics import scrape
from streams.tools.consistency import check_topics
from streams.tools.simulate import Simulator

from conftest import TINY_WORLD, wait_until

pytestmark = pytest.mark.broker


def test_served_features_equal_the_replay(settings_factory, worker_factory, tiny_model_dir: Path,
                                           kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = settings_factory(model_dir=tiny_model_dir / "models", calibrator_dir=tiny_model_dir / "calibrators",
                                consistency_check=True, feature_log_sample=1.0, attribution_window_s=150,
                                allowed_lateness_s=5)
    worker = worker_factory(settings)
    sim = Simulator(worker.url, kafka_bootstrap, settings, TINY_WORLD["users"], TINY_WORLD["items"],
                    TINY_WORLD["seed"], requests_per_s=5.0, feed_size=10, candidates=40, stats_path=None)
    stats = sim.run(60.0)
    assert stats["scored"] >= 30, stats  # 300 on a quiet box; a loaded one scores fewer

    # the check beside the stream: /metrics and /calibration (it replays 10 s behind the newest event)
    wait_until(lambda: worker.get_json("/calibration")["consistency"]["requests"] >= 20, 90,
               "the worker's consistency check to compare 20 requests")
    live = worker.get_json("/calibration")["consistency"]
    assert live["sequence"]["n"] == live["requests"]
    m = scrape(worker.url)
    assert m.value("feedrank_consistency_requests") >= 20
    assert m.has("feedrank_feature_mismatch_ratio", feature="user.user_3h:log_impressions")

    # offline, over everything the topics hold, with a wide in-flight margin for a busy CI box
    report, counts = check_topics(kafka_bootstrap, settings, in_flight_ms=10_000, progress=lambda _: None)
    data = report.to_dict()
    # a request the client timed out on and retried is scored (and logged) twice: every log is checked
    assert counts["prediction"] >= stats["scored"] and data["requests"] == counts["prediction"]
    assert data["sequence"]["n"] == data["requests"]
    assert data["features"]["hide_profile.item"]["n"] == data["requests"] * FeatureSpec().hide_len
    diverging = {k: v for k, v in report.diverging().items() if not k.startswith("feedback_loop.")}
    assert not diverging, f"served features differ from the replay's: {diverging}; " + str(
        {k: data["features"][k]["first_mismatch"] for k in diverging if k in data["features"]})
    assert data["feedback_lag_ms"]["n"] == data["requests"]
    assert 0 <= data["behind_requests"] <= data["requests"]  # logged across the score process with every input
    print(f"\nconsistency: {data['requests']} requests, {data['in_flight_requests']} with events in flight, "
          f"{data['behind_requests']} served while the tables were behind, feedback loop behind by p50 {data['feedback_lag_ms']['p50']} ms / p99 {data['feedback_lag_ms']['p99']} ms")
