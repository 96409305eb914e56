"""Event-time alignment of a partition's engagements with its prediction logs and impressions.

The engagements of a partition are applied only while they are no more than
``A + L`` ahead of the partition's prediction logs and impressions (or that
input has nothing more to read), so a window closes at the same engagement and
finds the same log as in a from-scratch recomputation, whatever the consumer
fetched first. Held engagements wait in a per-partition queue; the consumer
pauses that topic-partition when the queue is long and resumes it when it
drains. A mixin of ``TableEngine``: it reads ``self.tables``, ``self._held``,
``self.consumer`` and the engine's counters.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from streams.engine.tables import PartitionTables

log = logging.getLogger(__name__)


#: held engagements of one partition above which its engagement input is paused / below which resumed
HOLD_PAUSE = 20_000
HOLD_RESUME = 5_000
#: a held queue that makes no progress this long is released anyway (a predictions input that
#: never reports its end would otherwise stall the partition)
HOLD_MAX_WAIT_S = 10.0
#: a fetch response must be this much newer than a held engagement to prove the predictions input
#: has nothing older left (margin for clock skew between producers and this worker) ...
EXHAUSTED_MARGIN_MS = 1000
#: ... plus the recent delivery delay (``DeliveryDelay``), up to this much
MAX_DELIVERY_MARGIN_MS = 60_000
#: how long an observed delivery delay keeps counting
DELIVERY_DELAY_HOLD_S = 60.0
#: after an input partition could not be fetched, its producers (which buffered meanwhile) must show
#: they are back, with a record stamped this long after the gap ended (clock skew), before the
#: partition can be taken as having nothing older left
RECOVERY_STAMP_MARGIN_MS = EXHAUSTED_MARGIN_MS
#: delivery delays above this are logged (at INFO, when they raise the margin)
LOG_DELIVERY_DELAY_MS = 2000
#: held engagements wait this long at most (from the gap's start) for a lead input that cannot be
#: fetched (no leader, broker away) or whose producers have not shown they are back, before they are
#: released anyway; a partition that gets no new record by then is taken as idle
MAX_UNAVAILABLE_WAIT_S = MAX_DELIVERY_MARGIN_MS / 1000.0


class DeliveryDelay:
    """A recent upper bound of how late records reach the broker after their producer stamped them.

    The alignment's proof that an input has nothing older left assumes a record produced before an
    engagement was appended within a margin after it. Producers buffer and retry while a broker is
    away, then deliver seconds late, and not in their send order across partitions (measured on real
    Kafka: a node SIGKILLed and restarted; the engagements of the buffer landed before its prediction
    logs, which then missed their windows). So the margin grows by the largest delay seen in the last
    ``DELIVERY_DELAY_HOLD_S``: of records appended since the previous fetch response of their
    partition (``_observe_delivery``; older records read by a consumer that is catching up are lag,
    not delivery delay, and are not counted), and of partitions that could not be fetched for a
    while (``_watch_fetch_gaps``).
    """

    __slots__ = ("_peak_ms", "_at")

    def __init__(self) -> None:
        self._peak_ms = 0.0
        self._at = 0.0

    def observe(self, delay_ms: float, now: float) -> bool:
        """Count a delay seen now; True when it is the largest of the last ``DELIVERY_DELAY_HOLD_S``."""
        if delay_ms >= self.current_ms(now):
            self._peak_ms, self._at = min(float(delay_ms), MAX_DELIVERY_MARGIN_MS), now
            return True
        return False

    def current_ms(self, now: float) -> float:
        return self._peak_ms if now - self._at < DELIVERY_DELAY_HOLD_S else 0.0


class Held:
    """Engagements of one partition read but not yet applied (event-time alignment)."""

    __slots__ = ("items", "since", "paused")

    def __init__(self) -> None:
        # (offset, item or None for a dead-lettered record, producer timestamp ms)
        self.items: deque[tuple[int, Any, int]] = deque()
        self.since = 0.0  # monotonic time the head started waiting (0 = not waiting)
        self.paused = False


#: an input partition whose fetches have not succeeded for this long (beyond the fetch wait), while the
#: consumer had nothing of it to hand out, is unavailable (no leader, broker away)
FETCH_GAP_MS = 1500


class AlignmentMixin:
    """The alignment part of ``streams.engine.engine.TableEngine``."""

    def _observe_delivery(self, tp: Any, msgs: list[Any]) -> None:
        """Feed ``delivery_delay`` with the records appended since the previous fetch response of ``tp``.

        Those were appended between that response and this one, so this response's time minus their
        producer timestamp bounds their delivery delay; older records (a consumer catching up) are lag.
        """
        recovering = self._recovering
        if recovering and tp in recovering and max(m.timestamp for m in msgs) >= recovering[tp][1]:
            del recovering[tp]  # its producers are back: everything they buffered is appended before this
        seen, hw = self.consumer.last_poll_timestamp(tp), self.consumer.highwater(tp)
        prev = self._last_fetch.get(tp)
        if seen is not None and hw is not None:
            self._last_fetch[tp] = (hw, seen)
        if prev is None or seen is None:
            return
        prev_hw = prev[0]
        worst = 0
        for m in reversed(msgs):
            if m.offset < prev_hw:
                break
            worst = max(worst, seen - m.timestamp)
        if worst > 0 and self.delivery_delay.observe(worst, time.monotonic()) and worst > LOG_DELIVERY_DELAY_MS:
            log.info("%s[%d]: records reached the broker up to %.1fs after their producer stamped them (a producer "
                     "buffered through an outage or a leader change): engagements wait that much longer",
                     tp.topic, tp.partition, worst / 1000.0)

    def _watch_fetch_gaps(self, data: dict[Any, list[Any]]) -> None:
        """After a poll: note input partitions that cannot be fetched, and how long they could not.

        While a partition is unavailable its producers buffer, and deliver late once it is back: its
        gap feeds ``delivery_delay`` when it is fetched again (measured on real Kafka: a 3-node cluster
        whose predictions leader was SIGKILLed: the engagements, led elsewhere, went on arriving while
        the logs produced before them waited ~9 s for a new leader, and missed their windows).
        """
        consumer = self.consumer
        if consumer is None:
            return
        now_ms = time.time() * 1000.0
        stale_after = self._fetch_max_wait_ms() + FETCH_GAP_MS
        paused = consumer.paused()
        gaps = self._fetch_gaps
        for tp in consumer.assignment():
            seen = consumer.last_poll_timestamp(tp)
            if seen is None:
                continue
            since = gaps.get(tp)
            if since is None:
                if tp not in data and tp not in paused and now_ms - seen > stale_after:
                    gaps[tp] = seen  # fetches of it stopped succeeding at ``seen``
            elif seen > since:  # fetched again
                del gaps[tp]
                self._recovering[tp] = (since, seen + RECOVERY_STAMP_MARGIN_MS)
                self.delivery_delay.observe(seen - since, time.monotonic())
                log.info("%s[%d] could not be fetched for %.1fs (no leader or broker away); until a record stamped "
                         "after that is read, its producers may still hold older ones", tp.topic, tp.partition,
                         (seen - since) / 1000.0)
        recovering = self._recovering
        if recovering:
            assigned = consumer.assignment()
            for tp, (since, _after) in list(recovering.items()):
                if tp not in assigned:
                    del recovering[tp]
                elif now_ms - since > MAX_UNAVAILABLE_WAIT_S * 1000.0:
                    del recovering[tp]
                    log.info("%s[%d]: no record stamped since it could be fetched again; taken as idle",
                             tp.topic, tp.partition)

    def _unavailable_s(self, p: int, leads: Any) -> float:
        """How long ago the fetch gap began of the partition ``p`` of a ``leads`` topic that is still in one,
        or whose producers have not yet shown they are back (0: none).

        A lead input that cannot be fetched (its leader gone, a new one not yet elected: about
        ``broker.session.timeout.ms``, 9 s by default, on KRaft) has not said it has nothing more: its
        records wait on the broker or in its producers' buffers, and the producers find the new leader
        on their own schedule (metadata refresh, reconnect back-off): measured on a 3-node cluster, a
        node SIGKILLed, fetches of its partitions gone 8.1 to 10.2 s, and records stamped during the gap
        delivered up to 23.6 s after their stamp. Releasing the held engagements meanwhile closed their
        windows before their impressions were read, and the prediction logs of those requests expired
        first (16 to 163 labeled examples without their log in 3 of 3 runs before this wait).
        """
        from aiokafka import TopicPartition

        gaps, recovering = self._fetch_gaps, self._recovering
        if not gaps and not recovering:
            return 0.0
        now_ms = time.time() * 1000.0
        opened = []
        for tp in (TopicPartition(t, p) for t, _wm in leads):
            if tp in gaps:
                opened.append(gaps[tp])
            elif tp in recovering:
                opened.append(recovering[tp][0])
        return max(((now_ms - since) / 1000.0 for since in opened), default=0.0)

    def _exhausted(self, topic: str, p: int, tables: PartitionTables, since_ms: int) -> bool:
        """Everything on partition ``p`` of ``topic`` that was produced before ``since_ms`` is applied.

        True when the applied prediction offset reached the high watermark of a
        fetch response that came back at least ``EXHAUSTED_MARGIN_MS`` plus the
        recent delivery delay after ``since_ms`` (the producer timestamp of the
        held engagement): an older response may predate predictions that were
        produced before it.
        """
        from aiokafka import TopicPartition

        tp = TopicPartition(topic, p)
        if tp in self._fetch_gaps or tp in self._recovering:
            return False  # its producers may still hold records they stamped before ``since_ms``
        hw = self.consumer.highwater(tp)
        seen = self.consumer.last_poll_timestamp(tp)
        margin = EXHAUSTED_MARGIN_MS + self.delivery_delay.current_ms(time.monotonic())
        if hw is None or seen is None or seen < since_ms + margin:
            return False
        return tables.offsets.get(topic, -1) + 1 >= hw

    def _release(self, p: int, limit: int = 1 << 62) -> tuple[int, bool]:
        """Apply up to ``limit`` held engagements of ``p`` that the other inputs allow.

        Returns how many were applied and whether the limit stopped it (more may be releasable).
        """
        held = self._held.get(p)
        tables = self.tables.get(p)
        if held is None or tables is None or not held.items:
            return 0, False
        q = held.items
        topic = self.settings.topic_engagements
        # an engagement may close the windows of impressions up to A + L before it, and a log
        # expires 2A + L after its request: both inputs must have been read that far
        leads = ((self.settings.topic_predictions, tables.wm_pred), (self.settings.topic_impressions, tables.join.wm_imp))
        limits = [wm + self._align_ms for _t, wm in leads]
        batch: list[Any] = []
        eng_ts: list[int] = []
        last = -1
        while q and len(batch) < limit:
            off, item, ts_ms = q[0]
            if item is not None and item[2].ts > min(limits):
                for i, (lead_topic, _wm) in enumerate(leads):
                    if item[2].ts > limits[i] and self._exhausted(lead_topic, p, tables, ts_ms):
                        limits[i] = 1 << 62  # nothing older left to read on that input
                if item[2].ts > min(limits):
                    now = time.monotonic()
                    if not held.since:
                        held.since = now
                    # a partition that could not be fetched lately may still deliver: wait as long as the margin
                    patience = max(HOLD_MAX_WAIT_S,
                                   (EXHAUSTED_MARGIN_MS + self.delivery_delay.current_ms(now)) / 1000.0 + 1.0)
                    if now - held.since < patience or 0.0 < self._unavailable_s(p, leads) < MAX_UNAVAILABLE_WAIT_S:
                        break
                    self.held_releases_forced += 1
                    log.warning("partition %d: engagements held %.0fs for predictions/impressions that do not "
                                "come; releasing %d", p, now - held.since, len(q))
                    limits = [1 << 62]  # everything held now
            q.popleft()
            held.since = 0.0
            last = off
            if item is not None:
                batch.append(item)
                eng_ts.append(ts_ms)
        applied = tables.process(topic, batch) if batch else 0
        if last > tables.offsets.get(topic, -1):
            tables.offsets[topic] = last
        if eng_ts:  # visible from here on (read-your-own-writes through the record cache)
            from streams.metrics import FRESHNESS_SECONDS

            now_ms = time.time() * 1000.0
            fresh = [now_ms - t for t in eng_ts]
            self.freshness.add_many(fresh)
            FRESHNESS_SECONDS.observe(max(fresh) / 1000.0)
        if not held.paused and len(q) > HOLD_PAUSE:
            self._pause(p)
        elif held.paused and len(q) < HOLD_RESUME:
            self._resume(p)
        return applied, bool(q) and len(batch) >= limit

    def _quarantine(self, p: int) -> None:
        """Pause ``p``'s inputs until the watch has compared their topic ids (``_verify_input_ids``)."""
        self._verify_ids.setdefault(p, time.monotonic())
        tps = [tp for tp in self.consumer.assignment() if tp.partition == p]
        if tps:
            self.consumer.pause(*tps)
        self._watch_wake.set()

    def _unquarantine(self, p: int) -> None:
        if self._verify_ids.pop(p, None) is None:
            return
        held = self._held.get(p)
        tps = [tp for tp in self.consumer.assignment() if tp.partition == p
               and not (tp.topic == self.settings.topic_engagements and held is not None and held.paused)]
        if tps:
            self.consumer.resume(*tps)

    def _pause(self, p: int) -> None:
        from aiokafka import TopicPartition

        self.consumer.pause(TopicPartition(self.settings.topic_engagements, p))
        self._held[p].paused = True

    def _resume(self, p: int) -> None:
        from aiokafka import TopicPartition

        tp = TopicPartition(self.settings.topic_engagements, p)
        if tp in self.consumer.assignment() and p not in self._verify_ids:  # (else ``_unquarantine`` resumes it)
            self.consumer.resume(tp)
        if p in self._held:
            self._held[p].paused = False
