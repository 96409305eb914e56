"""Real Apache Kafka going away under a worker: a single node restarted on its data, and a 3-node failover
(replication 3, min.insync.replicas 2, acks=all) with /score called throughout."""

from __future__ import annotations

import pytest

from streams.kafka.apache_kafka import available
from streams.tools.chaos.broker_restart import run_broker_restart

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.long]

_ok, _why = available()
needs_kafka = pytest.mark.skipif(not _ok, reason=f"no local Apache Kafka: {_why}")


def _exact(result: dict) -> None:
    assert result["problems"] == []
    assert result["records_accounted"] == result["records_in"]
    assert result["tables_equal_recomputation"]
    assert result["labeled_duplicates_after_dedup"] == 0 and result["labeled_missing"] == 0
    assert result["labeled_distinct"] == result["labeled_expected"] > 0


@needs_kafka
def test_a_killed_and_restarted_broker_loses_and_double_counts_nothing(tmp_path) -> None:
    result = run_broker_restart(tmp_path, brokers=1, restarts=1, down_s=3.0, users=80, requests=800, seed=21)
    _exact(result)
    assert len(result["outages"]) == 1


@needs_kafka
def test_a_three_node_cluster_survives_a_node_sigkill_under_load_and_keeps_scoring(tmp_path, tiny_model_dir) -> None:
    result = run_broker_restart(tmp_path, brokers=3, restarts=1, down_s=5.0, users=80, requests=800, seed=22,
                                model_dir=tiny_model_dir / "models", calibrator_dir=tiny_model_dir / "calibrators",
                                score_rps=10.0)
    _exact(result)
    assert result["score_ok"] > 0 and result["score_failed"] == 0
