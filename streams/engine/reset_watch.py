"""Broker-reset watch: topic ids, input high watermarks and changelog ends against the stored state.

Detects a broker that lost data this worker's state depends on (a changelog
that ends below the local marker, an input re-created or ending below the
stored offset) and applies ``on_broker_reset`` (reseed or fail); see
``streams.kafka.broker_reset`` for the rules. A mixin of ``TableEngine``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka.errors import KafkaError

from streams.kafka.broker_reset import classify_out_of_range, consequence, fail_advice
from streams.engine.state import PartitionState
from streams.engine.state.exceptions import BrokerResetError, ChangelogError, ChangelogResetError, TopologyError
from streams.engine.state.recovery import TOPIC_IDS, recover_partition, reseed_changelog, reseed_pending
from streams.kafka.security import kafka_options

log = logging.getLogger(__name__)


#: how often the inputs' high watermarks are compared with the stored offsets (broker reset detection)
WATCH_INTERVAL_S = 0.5


#: how long a partition assignment or a changelog reset waits for the topic ids while the broker is not ready
TOPIC_IDS_PATIENCE_S = 15.0


class ResetWatchMixin:
    """The reset watch part of ``streams.engine.engine.TableEngine``."""

    def _check_topology(self, assigned: Any) -> None:
        """Every input must have the configured partition count (co-partitioning; one state per partition)."""
        want = self.settings.partitions
        for topic in self._kinds:
            parts = self.consumer.partitions_for_topic(topic)
            if parts and len(parts) != want:
                raise TopologyError(
                    f"input topic {topic} has {len(parts)} partitions but FEEDRANK_PARTITIONS={want}: it was "
                    "probably auto-created (an embedded broker restarted empty and a client touched the topic "
                    "before `feedrank topics` / a worker start re-created it). Stop its producers, delete the "
                    f"topic and re-create it with {want} partitions (`ensure_topics`), then restart the worker")
        beyond = sorted({tp.partition for tp in assigned if tp.partition >= want})
        if beyond:
            raise TopologyError(f"assigned partitions {beyond} but FEEDRANK_PARTITIONS={want}")

    def _broker_reset(self, what: str, p: int, detail: str) -> None:
        """Count and report a broker reset of ``what`` on partition ``p``; raises under ``on_broker_reset=fail``."""
        from streams.metrics import BROKER_RESETS

        action = self.settings.on_broker_reset
        BROKER_RESETS.labels(what, action).inc()
        self.broker_resets += 1
        if action == "fail":
            raise BrokerResetError(f"broker reset on partition {p}: {detail}. {fail_advice(self.settings.app_id)}")
        log.warning("BROKER RESET on partition %d: %s. FEEDRANK_ON_BROKER_RESET=reseed: %s", p, detail,
                    consequence(what))

    async def _topic_ids_patiently(self, topics: list[str]) -> dict[str, str]:
        """``_topic_ids`` waiting up to ``TOPIC_IDS_PATIENCE_S`` while the broker is not ready."""
        return await self._topic_ids(topics, patience_s=TOPIC_IDS_PATIENCE_S)

    async def _topic_ids(self, topics: list[str], patience_s: float = 0.0) -> dict[str, str]:
        """Current topic ids (KIP-516; real Kafka 2.8+ and tansu have them); {} when unavailable.

        A failed describe (the broker just came back and its node is not ready yet) is retried for up to
        ``patience_s``: without the ids, an input re-created and refilled past the stored offset would look
        processed.
        """
        deadline = time.monotonic() + patience_s
        pause = 0.25
        while True:
            ids, err = await self._describe_ids(topics)
            if err is None or time.monotonic() + pause > deadline:
                if err is not None:
                    log.info("topic ids unavailable (%s); re-created topics are found by their offsets only", err)
                return ids
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def _describe_ids(self, topics: list[str]) -> tuple[dict[str, str], str | None]:
        """One describe: (topic -> id, None), or ({}, the error)."""

        def describe() -> dict[str, str]:
            from kafka.admin import KafkaAdminClient

            with self._admin_lock:
                if self._admin is None:
                    self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000,
                                                     **kafka_options("kafka-python"))
                described = self._admin.describe_topics(topics)
            return {d["name"]: str(d["topic_id"]) for d in described
                    if not d.get("error_code") and d.get("topic_id") and d.get("name")}

        try:
            return await asyncio.wait_for(asyncio.to_thread(describe), 15.0), None
        except Exception as exc:
            return {}, f"{type(exc).__name__}: {exc}"

    def _recreated_topics(self, state: PartitionState) -> dict[str, str]:
        """Topics whose id differs from the one ``state``'s offsets / changelog marker refer to: topic -> new id."""
        stored = state.meta.extra.get(TOPIC_IDS) or {}
        out = {}
        for topic, now in self._ids.items():
            was = stored.get(topic)
            if was and was != now and (topic == self._changelog or topic in state.meta.offsets):
                out[topic] = now
        return out

    async def _recover(self, p: int, state: PartitionState, changelog_recreated: bool = False) -> None:
        """Recover ``p`` from its changelog; a changelog the broker lost is re-seeded (or fails)."""
        if changelog_recreated:
            self._broker_reset("changelog", p, f"changelog {self._changelog} was re-created (topic id "
                                               f"{self._ids.get(self._changelog)}, not the one this partition's "
                                               "state wrote to)")
            await self._reseed(p, state)
            return
        try:
            # a broker error (e.g. the embedded broker's colliding produces to a re-created topic) is retried:
            # recovery writes a new fence each time and resumes from the last checkpoint it committed
            await self._retrying(f"partition {p}: recovery from {self._changelog}",
                                 lambda: recover_partition(state, self.producer, self.bootstrap, self._changelog),
                                 KafkaError)
        except ChangelogResetError as exc:
            self._broker_reset("changelog", p, str(exc))
            await self._reseed(p, state)
            return
        if reseed_pending(state):
            log.warning("partition %d: finishing a re-seed of %s that was interrupted", p, self._changelog)
            await self._reseed(p, state)

    async def _reseed(self, p: int, state: PartitionState) -> None:
        t0 = time.monotonic()
        ids = dict(state.meta.extra.get(TOPIC_IDS) or {})
        if self._changelog in self._ids:  # the marker now refers to the current changelog (inputs: unchanged)
            ids[self._changelog] = self._ids[self._changelog]
            self._part_ids.setdefault(p, {})[self._changelog] = self._ids[self._changelog]
        n = await self._retrying(f"partition {p}: re-seeding the changelog",
                                 lambda: reseed_changelog(state, self.producer, self._changelog,
                                                          extra={TOPIC_IDS: ids}), ChangelogError)
        self._reset_seen.add(p)
        self._quarantine(p)
        log.warning("partition %d: re-seeded the changelog %s from the local state: %d keys in %.1fs (marker at "
                    "offset %d); a later recovery restores the whole state from it", p, self._changelog, n,
                    time.monotonic() - t0, state.meta.changelog_offset)

    async def _watch_inputs(self) -> None:
        """Find re-created inputs: by topic id after a proven reset, else by the fetch high watermark falling to
        or below the stored offset (``InputWatch``)."""
        while not self.should_stop:
            try:
                await asyncio.wait_for(self._watch_wake.wait(), WATCH_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
            self._watch_wake.clear()
            if self._fatal is not None or not self.tables:
                continue
            try:
                await self._verify_input_ids()
                async with self._lock:
                    now = time.monotonic()
                    for tp in list(self.consumer.assignment()):
                        tables = self.tables.get(tp.partition)
                        if tables is None:
                            continue
                        stored = tables.offsets.get(tp.topic)
                        hw = self.consumer.highwater(tp)
                        if self._inputs.observe(tp, stored, hw, now, proven=tp.partition in self._reset_seen):
                            await self._reset_input(
                                tp, f"input {tp.topic}[{tp.partition}] ends at offset {hw} (high watermark of "
                                    f"the latest fetch) but this partition's state has processed it up to offset "
                                    f"{stored}: the topic was re-created or truncated")
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self._set_fatal(exc, "input watch")

    async def _verify_input_ids(self) -> None:
        """For the partitions in ``_verify_ids``: an input whose topic id is not the one its stored offset refers
        to was re-created, possibly refilled past that offset already; read it from its start. While an input
        this partition has read has no id yet (the describe failed, or the topic is not re-created yet on a
        broker that has ids), the partition stays paused and this runs again on the next tick, for up to
        ``TOPIC_IDS_PATIENCE_S``; then it resumes with a WARNING, on the offset signals alone."""
        todo = set(self._verify_ids)
        if not todo:
            return
        ids, err = await self._describe_ids(sorted(self._kinds))
        has_ids = err is not None or bool(ids)  # False: a broker without topic ids (nothing to wait for)
        async with self._lock:
            for p in sorted(todo):
                tables = self.tables.get(p)
                if tables is None or p not in self._verify_ids:
                    self._unquarantine(p)
                    continue
                tps = sorted(tp for tp in self.consumer.assignment() if tp.partition == p)
                unknown = [tp.topic for tp in tps if has_ids and tables.offsets.get(tp.topic) is not None
                           and not ids.get(tp.topic)]
                if unknown and time.monotonic() - self._verify_ids[p] < TOPIC_IDS_PATIENCE_S:
                    continue  # next tick
                for tp in tps:
                    was, now = self._part_ids.get(p, {}).get(tp.topic), ids.get(tp.topic)
                    if not (was and now and was != now):
                        continue
                    if tables.offsets.get(tp.topic) is None:
                        self._part_ids[p][tp.topic] = now  # nothing read from it yet: nothing to redo
                    else:
                        await self._reset_input(
                            tp, f"input {tp.topic} was re-created (topic id {now}, not {was} that this partition's "
                                f"stored offset {tables.offsets.get(tp.topic)} refers to)", topic_id=now)
                if unknown:
                    log.warning("partition %d: no topic id for %s after %.0fs (%s); resuming, a re-created input is "
                                "found by its offsets only", p, unknown, TOPIC_IDS_PATIENCE_S, err or "topic absent")
                self._unquarantine(p)

    async def _reset_input(self, tp: Any, detail: str, topic_id: str | None = None) -> None:
        """Forget the stored offset of input ``tp`` (a new topic, whose id is read unless given) and read it
        from its start."""
        self._broker_reset("input", tp.partition, detail)
        tables = self.tables[tp.partition]
        tables.offsets.pop(tp.topic, None)  # the next checkpoint stores the new topic's offsets
        ids = self._part_ids.setdefault(tp.partition, {})
        now = topic_id or (await self._topic_ids([tp.topic])).get(tp.topic)
        if now:
            ids[tp.topic] = now
        else:  # unknown: record none rather than the old topic's
            ids.pop(tp.topic, None)
        self._inputs.forget(tp)
        if tp.topic == self.settings.topic_engagements:
            held = self._held.get(tp.partition)
            if held is not None:
                dropped = len(held.items)
                held.items.clear()
                held.since = 0.0
                if held.paused:
                    self._resume(tp.partition)
                if dropped:
                    log.warning("partition %d: dropped %d held engagements of the old topic", tp.partition, dropped)
        await self.consumer.seek_to_beginning(tp)

    async def _out_of_range(self, exc: BaseException) -> None:
        """The broker says a position is out of range (real Kafka): retention, or a truncated/re-created log."""
        from streams.metrics import BROKER_RESETS

        positions = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        async with self._lock:
            for tp, pos in positions.items():
                tables = self.tables.get(tp.partition)
                if tables is None or tp not in self.consumer.assignment():
                    continue
                try:
                    start = (await asyncio.wait_for(self.consumer.beginning_offsets([tp]), 10.0))[tp]
                except Exception as err:  # broker unreachable: the next fetch raises again
                    log.warning("offset %d of %s is out of range; its log start is unknown yet (%s)", pos, tp, err)
                    continue
                if classify_out_of_range(pos, start) == "retention":
                    BROKER_RESETS.labels("retention", "skip").inc()
                    log.warning("input %s[%d]: offset %d is below the log start %d: records %d..%d were deleted by "
                                "retention before this worker read them; continuing at %d", tp.topic, tp.partition,
                                pos, start, pos, start - 1, start)
                    self.consumer.seek(tp, start)
                else:
                    await self._reset_input(
                        tp, f"input {tp.topic}[{tp.partition}]: the broker answers offset {pos} (after the stored "
                            f"offset {tables.offsets.get(tp.topic)}) with OFFSET_OUT_OF_RANGE: the log was "
                            "truncated or re-created")
