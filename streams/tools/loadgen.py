"""The load generator: synthetic events paced into the event topics from a process of its own.

``feedrank chaos --scenarios load`` and ``feedrank bench rpc`` run it beside the
worker on the same cores, so it has to cost little. It sends through librdkafka
(``confluent-kafka``) and replays a pool of the synthetic world's events
(``EventPool``) instead of running the world live (~42 us of CPU per event).
Measured on this project's 2-core machine (embedded broker, 16 partitions,
linger 50 ms), CPU per event sent: 75 us with aiokafka and the live world, 68
with librdkafka and the live world, 10 to 14 with librdkafka and the pool
(0.10 of a core at 10,000 events/s). Feed servers keep
``streams.kafka.producer.EventProducer``; this module drives load and reports what
the broker acknowledged per partition, so that a scenario can check that
nothing was lost.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

from streams.settings import Settings
from streams.kafka.security import kafka_options

#: how long the load producer lets a partition's batch fill (when it batches). At 2,000 events/s over
#: 2 x 16 partitions, 5 ms gave ~1 record per batch, i.e. no batching at all. The embedded broker lists
#: every batch a partition holds on each fetch of it, so its CPU grows with the batches stored: at
#: 13,700 events/s, 50 ms let the worker's lag grow to 200k+ records within 10 minutes, 200 ms held it
#: under 12k (docs/reliability.md)
LOAD_LINGER_MS = 200


def cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; 0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def child_pids(pid: int | None, cmdline_has: bytes = b"") -> list[int]:
    """The processes whose parent is ``pid`` and whose command line contains ``cmdline_has``, from ``/proc``.

    A worker's children are its score process (``spawn_main``) and
    multiprocessing's resource tracker.
    """
    if pid is None:
        return []
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid
                        and cmdline_has in (d / "cmdline").read_bytes()):
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


#: event time the load producer's pool covers (``EventPool``): generated once before the load starts
POOL_S = 30.0


class EventPool:
    """The synthetic world's events generated once, then replayed in cycles as new events.

    The world costs ~42 us of CPU per event (measured on this project's 2-core machine, 200 users),
    more than librdkafka's send (~3 us): generated live, it took 0.4 of a core at 9,600 events/s on
    the machine the worker was being measured on. So the load producer draws ``n`` events from the
    world before the load starts and sends them again and again. Cycle ``k`` >= 1 moves event time
    on by ``k`` times the pool's span and appends ``.k`` to every request id (event ids start with
    their request id, so they change with it): each replayed event is a new event of a new request
    to the worker (its impressions and engagements still join), at ~1 us per event.
    """

    def __init__(self, events: Any, n: int, partitions: int) -> None:
        from aiokafka.partitioner import murmur2

        from features.events import Impression, encode_event

        part_of: dict[bytes, int] = {}
        # (0 impression / 1 engagement, key, partition, the value split around its request ids,
        #  '"' + request id, '"ts":<ts>', ts)
        self._rows: list[tuple[int, bytes, int, list[bytes], bytes, bytes, int]] = []
        for ev in itertools.islice(events, max(1, n)):
            key = ev.user_id.encode()
            p = part_of.get(key)
            if p is None:
                p = part_of[key] = (murmur2(key) & 0x7FFFFFFF) % partitions
            raw = encode_event(ev)
            rid = b'"' + ev.request_id.encode()
            self._rows.append((0 if isinstance(ev, Impression) else 1, key, p, raw.split(rid), rid,
                               b'"ts":%d' % ev.ts, ev.ts))
        if not self._rows:
            raise LoadError("the synthetic world produced no events")
        stamps = [row[-1] for row in self._rows]
        self._first_ms = min(stamps)
        self.span_ms = max(stamps) - self._first_ms + 1
        self._start_ms: int | None = None
        self._cycle_ms = float(self.span_ms)

    def pace(self, start_ms: int, rate: float) -> None:
        """Tie event time to the wall clock of a producer sending ``rate`` records/s from ``start_ms``.

        The world's event rate drifts from the one it was scaled to (``synthetic_events``): replayed
        as is at a fixed send rate, its event time ran ~15 % faster than the wall clock (5 minutes
        ahead after 36 minutes), so the engagements ran ahead of the prediction logs that ``/score``
        writes at wall-clock time, and every engagement waited for the proof that no older log was
        left to read (``streams/engine/alignment.py``). Paced, cycle ``k`` starts at ``start_ms`` + ``k``
        times the cycle's send time, and event times within a cycle are scaled to that send time.
        """
        self._start_ms = start_ms
        self._cycle_ms = len(self._rows) / rate * 1000.0

    def __len__(self) -> int:
        return len(self._rows)

    def record(self, i: int) -> tuple[int, bytes, int, bytes]:
        """The ``i``-th record to send: (0 impression / 1 engagement, key, partition, value)."""
        k, j = divmod(i, len(self._rows))
        idx, key, p, parts, rid, ts_field, ts = self._rows[j]
        if self._start_ms is None:
            if k == 0:
                return idx, key, p, rid.join(parts)
            new_ts = ts + k * self.span_ms
        else:
            new_ts = self._start_ms + int((k + (ts - self._first_ms) / self.span_ms) * self._cycle_ms)
        value = (rid + b".%d" % k if k else rid).join(parts).replace(ts_field, b'"ts":%d' % new_ts, 1)
        return idx, key, p, value


class LoadError(AssertionError):
    """The load producer could not start or had nothing to send (an ``AssertionError``, like ``ChaosError``)."""


def librdkafka_config(bootstrap: str, single: bool, linger_ms: int = LOAD_LINGER_MS,
                      compression: str = Settings.model_fields["compression"].default) -> dict[str, Any]:
    """confluent-kafka producer settings: acks from all replicas, no idempotence, batching on or off.

    ``single``: one record per batch (the embedded broker's end offsets stay exact). Idempotence stays
    off: the embedded broker forgets producer ids when it restarts (``streams.kafka.producer``).
    ``compression``: the batches' codec (``Settings.compression``).
    """
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
                            "compression.type": compression,
                            "linger.ms": 0 if single else linger_ms, "message.timeout.ms": 120_000,
                            "request.timeout.ms": 30_000, "socket.nagle.disable": True,
                            # keyed records go where every Kafka client (and streams.engine.views.partition_for) puts them
                            "partitioner": "murmur2_random"}
    if single:
        conf["batch.num.messages"] = 1
    conf.update(kafka_options("confluent"))
    return conf


def produce_waiting(producer: Any, topic: str, **kw: Any) -> None:
    """``producer.produce(topic, **kw)`` (a confluent-kafka ``Producer``), serving delivery callbacks and
    retrying while librdkafka's local queue is full (``BufferError``)."""
    while True:
        try:
            producer.produce(topic, **kw)
            return
        except BufferError:
            producer.poll(0.005)


def _load_producer_main(bootstrap: str, topics: tuple[str, str], partitions: int, users: int, seed: int,
                        world_rate: float, rate: float | None, clients: int, single: bool, linger_ms: int,
                        compression: str,
                        acked: Any, ends: Any, counters: Any, cap: Any, ready: Any, go: Any, stop: Any,
                        errors: Any) -> None:
    """Body of the load producer process: synthetic events through ``clients`` librdkafka producers.

    The events: ``POOL_S`` seconds of the world at ``world_rate``, generated before ``ready`` and
    replayed in cycles (``EventPool``). One record per batch when ``single``: the embedded broker's end offsets stay exact. Otherwise
    records are batched as feed servers would against real Kafka (``LOAD_LINGER_MS``), and ``ends``
    gets each partition's true end (the highest offset the broker acknowledged + 1), which the
    embedded broker's own end offsets are not then. Each topic-partition is written by exactly one
    client (the key's partition is computed here, murmur2 like every Kafka client): measured on the
    embedded broker, several connections appending to one partition at the same time make a consumer
    skip records now and then (4 clients sharing every partition: 4 to 7 of ~40,000 impressions per
    minute never reached the worker, although the topic held them all). Paced at ``rate`` events/s
    (None = as fast as it goes), never more than ~2 s of traffic ahead of the acknowledgements, and
    never beyond ``cap`` records in all when it is set (>= 0: the consumer's progress plus a window).
    Acked records per (topic, partition) and the sent/failed counters are published to shared memory
    every 0.1 s and once more after the final flush.
    """
    from confluent_kafka import Producer

    from streams.kafka.procutil import pdeathsig
    from features.synthetic import synthetic_events

    # a daemon process outlives a parent killed by a signal (seen: a SIGTERM'd `feedrank chaos` left its
    # producer writing to a broker that was gone): end with the parent instead
    pdeathsig()
    local = [0] * (2 * partitions)
    local_ends = [0] * (2 * partitions)
    state = {"acked": 0, "failed": 0, "sent": 0}

    def publish() -> None:
        acked[:] = local
        ends[:] = local_ends
        counters[0], counters[1] = state["sent"], state["failed"]

    def on_delivery(idx: int) -> Any:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                state["failed"] += 1
                if state["failed"] <= 3:
                    errors.put(f"send failed: {err}")
                return
            k = idx * partitions + msg.partition()
            local[k] += 1
            local_ends[k] = max(local_ends[k], msg.offset() + 1)
            state["acked"] += 1
        return done

    try:
        producers = [Producer(librdkafka_config(bootstrap, single, linger_ms, compression)) for _ in range(clients)]
        for prod in producers:  # fail early (not at the first flush) when the broker is unreachable
            prod.list_topics(timeout=30)
        callbacks = (on_delivery(0), on_delivery(1))
        pool = EventPool(synthetic_events(users, seed, world_rate), int(world_rate * POOL_S), partitions)
        ready.set()
        while not go.wait(0.05):
            if stop.is_set():
                return
        limit = int(2 * rate) if rate else 20_000
        t0 = last_pub = time.monotonic()
        if rate:
            pool.pace(int(time.time() * 1000), rate)
        i = 0
        while not stop.is_set():
            idx, key, p, value = pool.record(i)
            prod = producers[(idx * partitions + p) % clients]
            produce_waiting(prod, topics[idx], value=value, key=key, partition=p, on_delivery=callbacks[idx])
            i += 1
            state["sent"] = i
            if i % 50 == 0:
                for pr in producers:
                    pr.poll(0)
                now = time.monotonic()
                if rate:
                    ahead = t0 + i / rate - now
                    if ahead > 0:
                        time.sleep(ahead)
                while (i - state["acked"] - state["failed"] > limit or 0 <= cap.value < i) and not stop.is_set():
                    for pr in producers:
                        pr.poll(0.005)
                if now - last_pub >= 0.1:
                    publish()
                    last_pub = now
        for prod in producers:
            left = prod.flush(60)
            if left:
                errors.put(f"{left} records still unacknowledged 60 s after the load stopped")
    except BaseException as exc:  # reported by the scenario (a broker that is gone, an empty world, ...)
        errors.put(f"producer process failed: {exc!r}")
        raise
    finally:
        publish()


class LoadProducer:
    """The load producer as a separate process (the worker, this process and the broker share the cores)."""

    def __init__(self, bootstrap: str, settings: Settings, *, users: int, seed: int, world_rate: float,
                 rate: float | None, clients: int = 1, batches: bool = True,
                 linger_ms: int = LOAD_LINGER_MS) -> None:
        import multiprocessing as mp

        from streams.kafka.producer import one_record_per_batch

        ctx = mp.get_context("spawn")
        self.topics = (settings.topic_impressions, settings.topic_engagements)
        self.partitions = settings.partitions
        self.single = not batches and one_record_per_batch(settings, bootstrap)
        self.rate = rate
        self._acked = ctx.RawArray("q", 2 * self.partitions)
        self._ends = ctx.RawArray("q", 2 * self.partitions)
        self._counters = ctx.RawArray("q", 2)
        self._cap = ctx.RawValue("q", -1)
        self._ready, self._go, self._stop = ctx.Event(), ctx.Event(), ctx.Event()
        self._errors = ctx.Queue()
        self.proc = ctx.Process(target=_load_producer_main, daemon=True, args=(
            bootstrap, self.topics, self.partitions, users, seed, world_rate, rate, clients, self.single, linger_ms,
            settings.compression, self._acked, self._ends, self._counters, self._cap, self._ready, self._go, self._stop, self._errors))
        self.errors: list[str] = []

    def start(self, timeout_s: float = 300.0) -> "LoadProducer":
        """Start the process and wait until its events are generated and its clients connected."""
        self.proc.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.2):
            if not self.proc.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise LoadError(f"load producer did not get ready: {self._drain_errors()}")
        return self

    def go(self) -> None:
        self._go.set()

    def cap(self, records: int | None) -> None:
        """Send no more than ``records`` in all (None: no cap); the producer waits at the cap."""
        self._cap.value = -1 if records is None else int(records)

    def stop(self, timeout_s: float = 180.0) -> None:
        self._stop.set()
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
            self.errors.append("load producer did not stop in time (killed)")
        self._drain_errors()

    def _drain_errors(self) -> list[str]:
        import queue

        while True:
            try:
                self.errors.append(self._errors.get_nowait())
            except (queue.Empty, OSError, ValueError):
                return self.errors

    @property
    def sent(self) -> int:
        return int(self._counters[0])

    @property
    def failed(self) -> int:
        return int(self._counters[1])

    def _by_partition(self, arr: Any) -> dict[str, dict[int, int]]:
        vals = list(arr)
        n = self.partitions
        return {t: {p: vals[i * n + p] for p in range(n) if vals[i * n + p]} for i, t in enumerate(self.topics)}

    def snapshot(self) -> dict[str, dict[int, int]]:
        """Acknowledged records per topic and partition (published every 0.1 s)."""
        return self._by_partition(self._acked)

    def acked(self) -> int:
        return sum(self._acked)

    def ends(self) -> dict[str, dict[int, int]]:
        """Each partition's true end offset: its highest acknowledged offset + 1."""
        return self._by_partition(self._ends)
