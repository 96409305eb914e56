"""Two workers: kill one, the survivor takes over and serves every user; bring it back, nothing lost."""

from __future__ import annotations

import pytest

from streams.tools.chaos.rebalance import run_rebalance

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.long]


def test_survivor_takes_over_serves_every_user_and_partitions_move_back(kafka_bootstrap, tmp_path,
                                                                        tiny_model_dir) -> None:
    result = run_rebalance(kafka_bootstrap, tmp_path, tiny_model_dir / "models", tiny_model_dir / "calibrators",
                           users=30, requests=250, partitions=4, seed=12)
    assert result["problems"] == [], result["problems"]
    users = result["users"]
    assert result["users_on_killed_worker"] > 0
    # every user, those of the dead worker's partitions included, served by the survivor with the same state
    assert result["served_after_takeover"] == users
    assert result["restored_after_takeover"] == users
    assert result["served_after_return"] == users
    assert result["labeled_duplicates_after_dedup"] == 0 and result["labeled_missing"] == 0
    assert result["labeled_distinct"] == result["labeled_expected"] > 0
