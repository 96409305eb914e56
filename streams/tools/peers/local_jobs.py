"""The jobs of ``bench peers`` that run in feedrank's own environment: raw aiokafka and feedrank's engine.

``python -m streams.tools.peers.local_jobs <raw|feedrank> '<json args>'`` prints ``PEER_RESULT {...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any, Callable


def _result(events: int, t0: float, c0: float) -> dict[str, Any]:
    return {"events": events, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


async def consume_raw(bootstrap: str, topics: list[str], n: int) -> dict[str, Any]:
    """A bare aiokafka consumer reading ``n`` records of ``topics`` from the beginning: fetch only, no decoding,
    no state. Events, wall and process CPU seconds from the first fetched record to the last."""
    from aiokafka import AIOKafkaConsumer

    from streams.kafka.security import kafka_options

    c = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4().hex[:8]}",
                         auto_offset_reset="earliest", enable_auto_commit=False, **kafka_options("aiokafka"))
    await c.start()
    got, t0, c0 = 0, 0.0, 0.0
    try:
        while got < n:
            data = await c.getmany(timeout_ms=500, max_records=10_000)
            if data and not t0:
                t0, c0 = time.perf_counter(), time.process_time()
            got += sum(len(v) for v in data.values())
        return _result(got, t0, c0)
    finally:
        await c.stop()


async def run_engine(settings: Any, bootstrap: str, n: int,
                     on_first: Callable[[], None] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """feedrank's ``TableEngine`` on its full job until it has taken ``n`` records: events, wall and process CPU
    seconds from its first applied record (``on_first`` runs then), and the engine's stats."""
    from streams.engine.engine import TableEngine
    from streams.serving.loopmon import tune_runtime

    tune_runtime()  # as in a worker
    engine = TableEngine(settings, bootstrap)
    await engine.start()
    t0, c0 = 0.0, 0.0
    try:
        while engine.processed + engine.dead_lettered < n:
            if not t0 and engine.processed:
                t0, c0 = time.perf_counter(), time.process_time()
                if on_first is not None:
                    on_first()
            await asyncio.sleep(0.002)
        return _result(engine.processed + engine.dead_lettered, t0, c0), engine.stats()
    finally:
        await engine.stop()


async def raw(args: dict[str, Any]) -> dict[str, Any]:
    """The raw peer: ``consume_raw`` over the three inputs."""
    return await consume_raw(args["bootstrap"], args["topics"], args["events"])


async def feedrank(args: dict[str, Any]) -> dict[str, Any]:
    """The feedrank peer: ``run_engine`` (every table, the join, checkpoints, changelog, outputs)."""
    from streams.settings import Settings

    out, stats = await run_engine(Settings(**json.loads(args["settings"])), args["bootstrap"], args["events"])
    out.update(checkpoints=stats["checkpoints"], dead_lettered=stats["dead_lettered"],
               labeled_examples=sum(j["labeled_examples"] for j in stats["join"].values()))
    return out


def main(argv: list[str]) -> int:
    job = {"raw": raw, "feedrank": feedrank}[argv[1]]
    out = asyncio.run(job(json.loads(argv[2])))
    print("PEER_RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
