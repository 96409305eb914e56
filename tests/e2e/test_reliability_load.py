"""A one-minute version of ``feedrank chaos --scenarios load`` (the full run: 10 minutes, docs/reliability.md).

Asserted: every event delivered is accounted for (per partition, acknowledged records = the true
end offset, the highest acknowledged offset + 1, = the worker's stored offsets: the producer
batches, so the embedded broker's own end offsets are not exact; valid + dead-lettered = events +
/score's prediction logs), /score never fails, the lag
drains and stays under 30 s of traffic, and RocksDB's native memory stays within the process
budget. The RSS slope is printed, not asserted: a minute is mostly warm-up (the full run checks it).
"""

from __future__ import annotations

import pytest

from streams.tools.chaos.load import run_load
from streams.settings import Settings

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.long]


def test_one_minute_of_load_loses_nothing_and_bounds_rocksdb(kafka_bootstrap, tmp_path, tiny_model_dir) -> None:
    lines: list[str] = []
    result = run_load(kafka_bootstrap, tmp_path, tiny_model_dir / "models", tiny_model_dir / "calibrators",
                      minutes=1.0, max_rate=1000.0, score_rps=5.0, sample_s=5.0, check_bounds=False,
                      min_rate_fraction=0.5, seed=5, echo=lines.append)
    print("\n".join(lines))
    assert result["problems"] == [], result["problems"]
    assert result["events_acked"] > 20_000
    assert result["producer_batches"] is True
    assert result["events_acked"] == result["accounted"] == result["true_end_offsets"] == result["events_sent"]
    assert result["valid"] + result["dead_lettered"] == result["events_acked"] + result["prediction_logs"]
    assert result["score_ok"] > 0 and result["score_failed"] == 0
    budget_mb = Settings().rocksdb_memory_mb
    mem = [s["rocksdb_mem_mb"] for s in result["samples"] if s["rocksdb_mem_mb"] is not None]
    assert mem and max(mem) <= budget_mb * 1.25, mem
