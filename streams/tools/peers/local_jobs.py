"""The jobs of ``bench peers`` that run in feedrank's own environment: raw aiokafka and feedrank's engine.

``python -m streams.tools.peers.local_jobs <raw|feedrank> '<json args>'`` prints ``PEER_RESULT {...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any


def _result(events: int, t0: float, c0: float) -> dict[str, Any]:
    return {"events": events, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


async def raw(args: dict[str, Any]) -> dict[str, Any]:
    """A bare aiokafka consumer over the three inputs: fetch only, no decoding, no state."""
    from aiokafka import AIOKafkaConsumer

    from streams.kafka.security import kafka_options

    c = AIOKafkaConsumer(*args["topics"], bootstrap_servers=args["bootstrap"],
                         group_id=f"raw-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest",
                         enable_auto_commit=False, **kafka_options("aiokafka"))
    await c.start()
    got, t0, c0 = 0, 0.0, 0.0
    try:
        while got < args["events"]:
            data = await c.getmany(timeout_ms=500, max_records=10_000)
            if data and not t0:
                t0, c0 = time.perf_counter(), time.process_time()
            got += sum(len(v) for v in data.values())
        return _result(got, t0, c0)
    finally:
        await c.stop()


async def feedrank(args: dict[str, Any]) -> dict[str, Any]:
    """feedrank's ``TableEngine`` on its full job (every table, the join, checkpoints, changelog, outputs)."""
    from streams.engine.engine import TableEngine
    from streams.serving.loopmon import tune_runtime
    from streams.settings import Settings

    tune_runtime()  # as in a worker
    settings = Settings(**json.loads(args["settings"]))
    engine = TableEngine(settings, args["bootstrap"])
    await engine.start()
    n, t0, c0 = args["events"], 0.0, 0.0
    try:
        while engine.processed + engine.dead_lettered < n:
            if not t0 and engine.processed:
                t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.sleep(0.002)
        out = _result(engine.processed + engine.dead_lettered, t0, c0)
        stats = engine.stats()
        out.update(checkpoints=stats["checkpoints"], dead_lettered=stats["dead_lettered"],
                   labeled_examples=sum(j["labeled_examples"] for j in stats["join"].values()))
        return out
    finally:
        await engine.stop()


def main(argv: list[str]) -> int:
    job = {"raw": raw, "feedrank": feedrank}[argv[1]]
    out = asyncio.run(job(json.loads(argv[2])))
    print("PEER_RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
