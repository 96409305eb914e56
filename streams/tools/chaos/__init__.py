"""``feedrank chaos``: crashes, rebalances, a broker outage, bad input and sustained load.

Each scenario runs real ``feedrank worker`` subprocesses against a broker,
prints what it did and what it found, and returns a result dict whose
``problems`` list is empty when every property held:

- ``crash`` (``crash.run_crash``): SIGKILL a worker at random points while events
  stream, several times; after the last restart every table equals the from-scratch
  recomputation (``streams.tools.recompute``) and ``labeled-impressions`` holds each
  impression exactly once after dedup by ``example_id`` (raw re-emits counted).
- ``rebalance`` (``rebalance.run_rebalance``): two workers; SIGKILL one; the survivor
  takes its partitions, restores their state and serves ``/score`` for every user;
  the dead one comes back and partitions move again without loss.
- ``outage`` (``outage.run_outage``): a private embedded broker stopped for
  ``--outage-s`` and restarted on the same port (memory storage: every topic is
  gone); the producers must recover, the running worker must detect the broker
  reset, keep its state, re-seed the changelog and process new events, stop on
  SIGTERM in time, and a worker with no local state must restore everything from
  the re-seeded changelog. See docs/reliability.md.
- ``fuzz`` (``fuzz.run_fuzz``): bad events on both event topics and bad requests on
  ``/score``, interleaved with good ones: every bad event dead-lettered with a
  reason, every bad request answered 4xx, every good one processed.
- ``load`` (``load.run_load``, ``load.measure_max_rate``): steady events at 80% of the
  maximum sustained rate (measured first on this box, or ``--max-rate``) plus
  ``/score`` traffic for ``--minutes``; prints RSS, RocksDB memory and size and lag
  over time; checks nothing is lost and that memory, disk and lag stay bounded.

``common`` holds what several scenarios share (workers as subprocesses, waits, the
paced producer, the recomputation checks); ``cli`` the command (``register``, ``run``).
The tests (``tests/test_reliability_*.py``) call the same functions with
small streams. Run: ``feedrank chaos`` or ``python -m streams.tools.chaos``.
"""

from streams.tools.chaos.common import (ROOT, ChaosError, PacedProducer, Worker, machine_load, make_settings,
                                        score_body, settings_env, wait_until)
from streams.tools.chaos.crash import run_crash
from streams.tools.chaos.rebalance import run_rebalance
from streams.tools.chaos.fuzz import fuzz_events, fuzz_requests, raw_post, run_fuzz
from streams.tools.chaos.outage import py_spy_dump, run_outage
from streams.tools.chaos.load import (EMBEDDED_PARTITION_BATCHES, LOAD_PARTITIONS, LOAD_SCENARIO_LINGER_MS,
                                      MAX_RATE_LAG_WINDOW, _end_offsets, measure_max_rate, rocksdb_memory_mb,
                                      run_load)
from streams.tools.chaos.cli import SCENARIOS, add_arguments, main, register, run

__all__ = [
    "ROOT", "SCENARIOS", "ChaosError", "PacedProducer", "Worker", "machine_load", "make_settings", "score_body",
    "settings_env", "wait_until", "run_crash", "run_rebalance", "fuzz_events", "fuzz_requests", "raw_post",
    "run_fuzz", "py_spy_dump", "run_outage", "EMBEDDED_PARTITION_BATCHES", "LOAD_PARTITIONS",
    "LOAD_SCENARIO_LINGER_MS", "MAX_RATE_LAG_WINDOW", "_end_offsets", "measure_max_rate", "rocksdb_memory_mb",
    "run_load", "add_arguments", "main", "register", "run",
]
