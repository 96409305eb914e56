"""``feedrank chaos --scenarios crash``: a worker SIGKILLed at random points, repeatedly, while events stream
ends with every table equal to the from-scratch recomputation and each impression labeled exactly once.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any, Callable

from streams.tools.chaos.common import (ChaosError, PacedProducer, Worker, _caught_up, _Out, _verdict,
                                        check_against_recomputation, make_settings, wait_until)


def run_crash(bootstrap: str, work: Path, *, kills: int = 3, users: int = 200, requests: int = 3000,
              seed: int = 0, stream_s: float | None = None, echo: Callable[[str], None] | None = None,
              ) -> dict[str, Any]:
    """SIGKILL a worker ``kills`` times at random points while events stream; check recomputation equality."""
    from streams.tools.recompute import read_inputs, scenario
    from streams.kafka.topics import ensure_topics, topic_specs

    out = _Out(echo)
    rng = random.Random(seed)
    settings = make_settings(work, bootstrap, sequence_len=16, checkpoint_interval_s=0.1,
                             attribution_window_s=60.0, allowed_lateness_s=5.0)
    ensure_topics(bootstrap, topic_specs(settings))
    events, preds = scenario(n_users=users, n_requests=requests, seed=seed, bot_impressions=2600)  # (chunked ids)
    total = len(events) + len(preds)
    stream_s = stream_s or 20.0 * kills  # each restart takes ~15 s (group session timeout 10 s)
    rate = len(events) / stream_s
    out(f"[crash] {len(events)} events + {len(preds)} prediction logs over ~{stream_s:.0f}s ({rate:,.0f}/s), "
        f"{kills} SIGKILLs at random points; app {settings.app_id}")
    producer = PacedProducer(bootstrap, settings, events, preds, rate)
    producer.start()
    kill_log = []
    for k in range(kills):
        w = Worker(settings, work / "log" / f"{settings.app_id}-crash.log", f"worker#{k}").start()
        try:
            # kill while it processes; if the stream is over and it has caught up, kill it idle anyway
            wait_until(lambda: w.stats()["processed"] > 0 or (
                not producer.is_alive() and _caught_up(w.stats(), producer.counts, range(settings.partitions))),
                180, "the worker to process events", detail=lambda: w.log_tail(600))
            delay = rng.uniform(0.2, 3.0)
            time.sleep(delay)
            try:
                processed = int(w.stats()["processed"])
            except OSError:
                processed = -1
            streaming = producer.is_alive()
        finally:
            w.kill()
        kill_log.append({"after_s": round(delay, 2), "processed_by_this_process": processed,
                         "producer_running": streaming, "exit": w.proc.returncode if w.proc else None})
        out(f"  kill {k + 1}: SIGKILL {delay:.2f}s into processing, this process had processed {processed} "
            f"records, producer {'still streaming' if streaming else 'done'}, exit code {kill_log[-1]['exit']}")
    producer.join(timeout=300)
    problems: list[str] = []
    if producer.error is not None or producer.is_alive():
        raise ChaosError(f"producer failed: {producer.error!r}")
    produced = sum(sum(v.values()) for v in producer.counts.values())
    if produced != total:
        problems.append(f"producer acked {produced} of {total} records")
    w = Worker(settings, work / "log" / f"{settings.app_id}-crash.log", "worker#final").start()
    try:
        waited = wait_until(lambda: _caught_up(w.stats(), producer.counts, range(settings.partitions)), 240,
                            "the restarted worker to catch up", detail=w.log_tail)
        out(f"  restarted after kill {kills}: caught up in {waited:.1f}s")
    finally:
        w.stop()
    if w.proc is not None and w.proc.returncode not in (0, -signal.SIGTERM):
        problems.append(f"graceful stop exited with {w.proc.returncode}")
    figures, checked = check_against_recomputation(bootstrap, settings,
                                                   read_inputs(bootstrap, settings, producer.counts), total, out)
    problems += checked
    result = {"scenario": "crash", "kills_survived": kills, "records_in": total, "events_in": len(events),
              "kills": kill_log, **figures, "problems": problems}
    accounted = figures["records_accounted"]
    out(f"  records in {total} (events {len(events)}), accounted for by the stored offsets {accounted}; "
        f"tables equal the recomputation: {result['tables_equal_recomputation']}")
    _verdict(out, "crash", problems)
    return result
