"""Held engagements and an input partition that cannot be fetched (no leader, broker away).

Pure logic of ``streams.engine.alignment.AlignmentMixin``: the consumer here is a stand-in that
answers the three questions the alignment asks of aiokafka (high watermark, time of the last fetch
response, assignment); the broker-level behaviour is proven by the 3-node failover e2e test.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from aiokafka import TopicPartition

from streams.engine.alignment import (HOLD_MAX_WAIT_S, MAX_UNAVAILABLE_WAIT_S, RECOVERY_STAMP_MARGIN_MS,
                                      AlignmentMixin, DeliveryDelay, Held)
from streams.engine.freshness import FreshnessLog

ENG, PRED, IMP = "engagements", "predictions", "impressions"
ALIGN_MS = 65_000


class _Consumer:
    def __init__(self, now_ms: float) -> None:
        self.tps = [TopicPartition(t, 0) for t in (ENG, PRED, IMP)]
        self.fetched = {tp: now_ms for tp in self.tps}
        self.hw = {tp: 10 for tp in self.tps}

    def highwater(self, tp):
        return self.hw[tp]

    def last_poll_timestamp(self, tp):
        return self.fetched[tp]

    def assignment(self):
        return set(self.tps)

    def paused(self):
        return set()


class _Tables:
    def __init__(self) -> None:
        self.wm_pred = 1_000_000
        self.join = SimpleNamespace(wm_imp=1_000_000)
        self.offsets = {PRED: 4, IMP: 4}  # behind the high watermark (10): not exhausted
        self.applied: list = []

    def process(self, topic, batch):
        self.applied += batch
        return len(batch)


class _Engine(AlignmentMixin):
    def __init__(self) -> None:
        now_ms = time.time() * 1000.0
        self.settings = SimpleNamespace(topic_engagements=ENG, topic_predictions=PRED, topic_impressions=IMP)
        self.consumer = _Consumer(now_ms)
        self.tables = {0: _Tables()}
        self._held = {0: Held()}
        self._align_ms = ALIGN_MS
        self._fetch_gaps: dict = {}
        self._recovering: dict = {}
        self._last_fetch: dict = {}
        self._verify_ids: dict = {}
        self.delivery_delay = DeliveryDelay()
        self.freshness = FreshnessLog()
        self.held_releases_forced = 0

    def _fetch_max_wait_ms(self) -> int:
        return 500

    def hold(self, n: int, waiting_s: float) -> None:
        """``n`` engagements beyond what the inputs allow, the head waiting ``waiting_s`` already."""
        held = self._held[0]
        now_ms = int(time.time() * 1000)
        for i in range(n):
            held.items.append((i, (None, None, SimpleNamespace(ts=1_000_000 + ALIGN_MS + 1 + i)), now_ms))
        held.since = time.monotonic() - waiting_s


def _cut_off(engine: _Engine, topic: str, for_s: float) -> None:
    """The last fetch response of ``topic``[0] came ``for_s`` ago, and a poll has seen it missing since."""
    engine.consumer.fetched[TopicPartition(topic, 0)] = time.time() * 1000.0 - for_s * 1000.0
    engine._watch_fetch_gaps({})


def test_engagements_are_not_forced_past_an_input_that_cannot_be_fetched() -> None:
    engine = _Engine()
    _cut_off(engine, IMP, 8.0)
    engine.hold(3, waiting_s=HOLD_MAX_WAIT_S + 1.0)

    assert engine._release(0) == (0, False)
    assert engine.held_releases_forced == 0 and len(engine._held[0].items) == 3


def test_the_same_hold_without_a_gap_is_released_after_the_patience() -> None:
    engine = _Engine()
    engine.hold(3, waiting_s=HOLD_MAX_WAIT_S + 1.0)

    assert engine._release(0) == (3, False)
    assert engine.held_releases_forced == 1


def test_once_the_input_is_back_its_records_release_the_held_engagements_in_order() -> None:
    engine = _Engine()
    _cut_off(engine, PRED, 9.5)
    engine.hold(3, waiting_s=HOLD_MAX_WAIT_S + 1.0)
    assert engine._release(0)[0] == 0

    engine.consumer.fetched[TopicPartition(PRED, 0)] = time.time() * 1000.0  # fetched again
    engine._watch_fetch_gaps({})
    assert engine._fetch_gaps == {}
    assert engine.delivery_delay.current_ms(time.monotonic()) >= 9_000  # the gap widens the margin
    engine.tables[0].wm_pred = engine.tables[0].join.wm_imp = 2_000_000  # its records are read
    assert engine._release(0) == (3, False)
    assert engine.held_releases_forced == 0
    assert [item[2].ts for item in engine.tables[0].applied] == sorted(item[2].ts for item in engine.tables[0].applied)


def test_an_input_gone_for_longer_than_the_cap_no_longer_holds_the_partition() -> None:
    engine = _Engine()
    _cut_off(engine, PRED, MAX_UNAVAILABLE_WAIT_S + 1.0)
    engine.hold(2, waiting_s=MAX_UNAVAILABLE_WAIT_S + 1.0)

    assert engine._release(0) == (2, False)
    assert engine.held_releases_forced == 1


def _back(engine: _Engine, topic: str) -> None:
    """``topic``[0] is fetched again, read to its high watermark (``_exhausted``'s old proof holds)."""
    tp = TopicPartition(topic, 0)
    engine.consumer.fetched[tp] = time.time() * 1000.0
    engine._watch_fetch_gaps({})
    engine.tables[0].offsets[topic] = engine.consumer.hw[tp] - 1


def _read(engine: _Engine, topic: str, stamped_ms: float) -> None:
    tp = TopicPartition(topic, 0)
    engine.consumer.hw[tp] += 1
    engine._observe_delivery(tp, [SimpleNamespace(offset=engine.consumer.hw[tp] - 1, timestamp=int(stamped_ms))])
    engine.tables[0].offsets[topic] = engine.consumer.hw[tp] - 1


def test_after_a_gap_the_input_is_not_exhausted_until_its_producers_show_they_are_back() -> None:
    """A producer buffers through a leader change and delivers after the consumer is back (measured:
    up to 23.6 s after stamping, for a gap of 9.6 s): records read to the high watermark prove nothing."""
    engine = _Engine()
    _cut_off(engine, IMP, 9.0)
    engine.hold(3, waiting_s=0.0)
    _back(engine, IMP)
    engine.tables[0].wm_pred = 2_000_000  # only the impressions hold them
    engine.consumer.fetched[TopicPartition(IMP, 0)] = time.time() * 1000.0 + 30_000  # long past any margin
    assert engine._release(0) == (0, False)

    now_ms = time.time() * 1000.0
    _read(engine, IMP, stamped_ms=now_ms - 8_000)  # a record the producer buffered: not yet the proof
    assert engine._release(0) == (0, False)
    _read(engine, IMP, stamped_ms=now_ms + RECOVERY_STAMP_MARGIN_MS + 10)  # stamped after the gap
    assert engine._recovering == {}
    assert engine._release(0) == (3, False)
    assert engine.held_releases_forced == 0


def test_an_input_with_no_record_after_its_gap_is_taken_as_idle_at_the_cap() -> None:
    engine = _Engine()
    _cut_off(engine, IMP, MAX_UNAVAILABLE_WAIT_S - 5.0)
    _back(engine, IMP)
    assert TopicPartition(IMP, 0) in engine._recovering
    engine._recovering[TopicPartition(IMP, 0)] = (time.time() * 1000.0 - MAX_UNAVAILABLE_WAIT_S * 1000.0 - 1.0,
                                                 time.time() * 1000.0)
    engine._watch_fetch_gaps({})
    assert engine._recovering == {}
