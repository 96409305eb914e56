"""faust-streaming on one table write per event: a per-user counter (RocksDB store, changelog on).

``python -m streams.tools.peers.faust_job '<json args>'`` prints ``PEER_RESULT {...}`` once its
agent has counted ``events`` records, then stops its worker. Faust is the slowest peer by far
(its per-message hand-off from consumer to stream), so the bench caps its input.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time


def main(argv: list[str]) -> int:
    import faust

    from streams.app import faust_broker_url
    from streams.kafka.security import kafka_options

    args = json.loads(argv[1])
    n_target = int(args["events"])
    app = faust.App(args["app_id"], broker=faust_broker_url(args["bootstrap"]), store="rocksdb://",
                    datadir=args["state_dir"], topic_partitions=args["partitions"], topic_replication_factor=1,
                    consumer_auto_offset_reset="earliest", processing_guarantee="at_least_once",
                    broker_commit_interval=1.0, web_enabled=False, stream_wait_empty=False,
                    **kafka_options("faust"))
    topic = app.topic(args["topic"], key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw", partitions=args["partitions"])
    counts = app.Table("counts", default=int, partitions=args["partitions"])
    seen = {"n": 0, "t0": 0.0, "c0": 0.0}

    @app.agent(topic)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for key, _value in stream.items():
            if seen["n"] == 0:
                seen["t0"], seen["c0"] = time.perf_counter(), time.process_time()
            counts[key] += 1
            seen["n"] += 1
            if seen["n"] == n_target:
                out = {"events": seen["n"], "wall_s": time.perf_counter() - seen["t0"],
                       "cpu_s": time.process_time() - seen["c0"]}
                print("PEER_RESULT " + json.dumps(out), flush=True)
                os.kill(os.getpid(), signal.SIGTERM)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv))
