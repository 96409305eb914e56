"""A minimal Faust app with a changelog-backed counter table, for recovery tests.

Run: python tests/apps/counter_app.py worker   (env: KAFKA_BOOTSTRAP_SERVERS,
COUNTER_APP_ID, COUNTER_TOPIC, COUNTER_DATADIR, COUNTER_WEB_PORT, COUNTER_SINGLE)
GET /sum answers {"sum": ..., "keys": ..., "recovered": bool}.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streams.app import create_app  # noqa: E402
from streams.settings import Settings  # noqa: E402

settings = Settings(
    app_id=os.environ["COUNTER_APP_ID"],
    data_dir=Path(os.environ["COUNTER_DATADIR"]),
    web_port=int(os.environ["COUNTER_WEB_PORT"]),
    partitions=2,
)
app = create_app(settings, os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                 single_record_batches=os.environ.get("COUNTER_SINGLE", "1") == "1")
topic = app.topic(os.environ["COUNTER_TOPIC"], key_type=str, value_type=str, partitions=2)
counts = app.Table("counts", default=int, partitions=2)


@app.agent(topic)
async def count(stream):
    async for key, _ in stream.items():
        counts[key] += 1


@app.page("/sum")
async def total(web, request):
    recovered = app.tables.recovery.completed.is_set()
    return web.json({"sum": sum(counts.values()) if recovered else -1, "keys": len(counts),
                     "recovered": recovered})


if __name__ == "__main__":
    app.main()
