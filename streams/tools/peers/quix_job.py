"""Quix Streams on the per-user job: a counter and the last 256 event ids per user, one stateful step.

Standalone (stdlib and quixstreams only): ``python quix_job.py '<json args>'``. The three input
topics are concatenated into one dataframe, so each user has one state (RocksDB, changelog on),
as feedrank's user tables do. Prints ``PEER_RESULT {...}`` when it has processed ``events``.
"""

from __future__ import annotations

import json
import logging
import sys
import time


def main(argv: list[str]) -> int:
    args = json.loads(argv[1])
    from quixstreams import Application

    n_target = int(args["events"])
    app = Application(
        broker_address=args["bootstrap"],
        consumer_group=args["group"],
        auto_offset_reset="earliest",
        state_dir=args["state_dir"],
        commit_interval=float(args.get("commit_interval", 1.0)),
        use_changelog_topics=True,
        loglevel="WARNING",
    )
    topics = [app.topic(t, key_deserializer="str", value_deserializer="json") for t in args["topics"]]
    sdf = app.dataframe(topics[0])
    for t in topics[1:]:
        sdf = sdf.concat(app.dataframe(t))
    seen = {"n": 0, "t0": 0.0, "c0": 0.0, "t1": 0.0, "c1": 0.0}

    def step(value: dict, state) -> None:  # type: ignore[no-untyped-def]
        if seen["n"] == 0:
            seen["t0"], seen["c0"] = time.perf_counter(), time.process_time()
        state.set("n", state.get("n", 0) + 1)
        ids = state.get("ids") or []
        ids.append(value.get("event_id") or value.get("request_id"))
        if len(ids) > 256:
            del ids[:-256]
        state.set("ids", ids)
        seen["n"] += 1
        if seen["n"] == n_target:
            seen["t1"], seen["c1"] = time.perf_counter(), time.process_time()
            app.stop()

    sdf.update(step, stateful=True)
    app.run()
    if not seen["t1"]:
        seen["t1"], seen["c1"] = time.perf_counter(), time.process_time()
    print("PEER_RESULT " + json.dumps({"events": seen["n"], "wall_s": seen["t1"] - seen["t0"],
                                       "cpu_s": seen["c1"] - seen["c0"]}), flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv))
