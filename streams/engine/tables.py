"""The stream tables of one partition and the per-event logic that updates them.

Tables (stores of one ``PartitionState``, keyed so a user's state is local):

- ``user_sequences``     user_id -> ``features.seqcodec`` blob (last N actions)
- ``user_counters``      user_id -> ``features.tiles.UserCounters`` blob (3 h / 1 d)
- ``pending_requests``   user|request -> the request's impressions waiting for labels
- ``orphan_engagements``   user|item|request -> engagements that beat their impression
- ``prediction_logs``      user|request -> the scorer's ``PredictionLog``

plus the partition's un-shipped feedback-loop delta (``FeedbackTiles``) which
becomes the checkpoint's outbox. ``PartitionTables`` knows no Kafka: it takes
decoded records with their offsets, fences on the committed offsets, and hands
labeled examples to a callback, so it runs the same under the engine, in the
brokerless tests and in the from-scratch recomputation.

State is bounded: sequences keep their last N; counters prune tiles against
the user's newest event; the join deletes closed impressions, expired orphans
and predictions; and user state has a retention driven by event time
(``retention_ms``): the *retention threshold* is ``W_e - retention`` rounded
down to the hour (``W_e`` = the engagements' watermark, which depends only on
that input's order). Actions and counter tiles older than the threshold are
dropped, by a sweep over every user each time the threshold moves and by a
check on insertion; a user left with nothing (silent for longer than the
retention) is deleted from both stores. Sweep-on-move plus the insertion
check give the same final tables for any interleaving of the inputs (the
threshold is hour-aligned like the counters' tiles), so recomputation
equality holds with eviction on.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from features.events import Engagement, Impression
from features.labels import STAT_NAMES, JoinStats, LabelJoin, pending_from_legacy
from features.seqcodec import ADDED, DUPLICATE, UNKNOWN_ITEM_TYPE, ActionSequence, EncodedUserState, first_ts
from features.seqcodec import decode as decode_seq
from features.state import Counts, UserState
from features.tiles import LONG_TILE_MS, LONG_WINDOW_MS, FeedbackTiles, UserCounters, counters_max_ts

from streams.engine.dedup import CODEC as ids_codec
from streams.engine.dedup import CounterDedup
from streams.engine.repartition import OriginFence
from streams.engine.state import Meta, PartitionState, CacheKV, RecordCache, Snapshot, StoreSpec

log = logging.getLogger(__name__)

USER_SEQUENCES = StoreSpec("user_sequences")
USER_COUNTERS = StoreSpec("user_counters")
#: a request's impressions waiting for their labels, one value per request (``features.labels``)
PENDING_REQUESTS = StoreSpec("pending_requests")
#: the same, one value per impression (``user|item|request``): the layout before 2026-12-07, moved into
#: ``PENDING_REQUESTS`` when a partition is opened (``PartitionTables._migrate_pending``)
LEGACY_PENDING_IMPRESSIONS = StoreSpec("pending_impressions")
ORPHAN_ENGAGEMENTS = StoreSpec("orphan_engagements")
PREDICTION_LOGS = StoreSpec("prediction_logs")
#: event ids counted in the counters, per input: ``<hour of ts>|<user>`` -> the hour's ids (``streams.engine.dedup``)
IMPRESSION_IDS = StoreSpec("impression_ids_by_hour")
ENGAGEMENT_IDS = StoreSpec("engagement_ids_by_hour")
ALL_STORES = (USER_SEQUENCES, USER_COUNTERS, PENDING_REQUESTS, ORPHAN_ENGAGEMENTS, PREDICTION_LOGS,
              IMPRESSION_IDS, ENGAGEMENT_IDS, LEGACY_PENDING_IMPRESSIONS)

#: what a processed record is: (kind, offset, event-or-log, raw value bytes)
Item = tuple[str, int, Any, bytes]

#: default user retention (event time): a week
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000


def retention_threshold(wm_eng: int, retention_ms: int | None) -> int:
    """Event time below which user state is dropped: ``wm_eng - retention``, down to the hour."""
    if not retention_ms or wm_eng - retention_ms <= 0:
        return 0
    return (wm_eng - retention_ms) // LONG_TILE_MS * LONG_TILE_MS


def _codecs(seq_len: int) -> dict[str, Any]:
    return {
        USER_SEQUENCES.name: (lambda b: decode_seq(b, seq_len), lambda s: s.encode()),
        USER_COUNTERS.name: (UserCounters.decode, lambda c: c.encode()),
        IMPRESSION_IDS.name: ids_codec,
        ENGAGEMENT_IDS.name: ids_codec,
    }


class PartitionTables:
    """One partition's tables, its open transaction and its join state machine."""

    def __init__(
        self,
        state: PartitionState,
        *,
        seq_len: int = 256,
        window_ms: int = 600_000,
        lateness_ms: int = 60_000,
        emit: Callable[[str, dict[str, Any]], None] = lambda user, ex: None,
        retention_ms: int | None = DEFAULT_RETENTION_MS,
        cache_entries: int = 200_000,
    ) -> None:
        self.state = state
        self.partition = state.partition
        self.seq_len = seq_len
        self._codecs = _codecs(seq_len)
        self.cache = RecordCache(state, self._codecs, max_entries=cache_entries)
        self.feedback = FeedbackTiles()
        self.offsets: dict[str, int] = dict(state.meta.offsets)
        self._last_meta = state.meta  # the newest checkpoint taken (in flight or committed)
        extra = state.meta.extra
        stats = JoinStats({**dict.fromkeys(STAT_NAMES, 0), **extra.get("stats", {})})
        self.skipped = 0
        self.duplicates = 0
        self.expired_events = 0  # older than the retention threshold on arrival: not stored
        self.swept_users = 0
        self.sweeps = 0
        self.retention_ms = retention_ms
        #: newest prediction-log event time applied (the engine keeps engagements behind it)
        self.wm_pred = int(extra.get("wm_pred", 0))
        self.join = LabelJoin(
            CacheKV(self.cache, PENDING_REQUESTS),
            CacheKV(self.cache, ORPHAN_ENGAGEMENTS),
            CacheKV(self.cache, PREDICTION_LOGS),
            window_ms=window_ms,
            lateness_ms=lateness_ms,
            emit=emit,
            feedback=lambda: self.feedback,
            attributed=self._attributed,
            stats=stats,
        )
        self.join.wm_imp = int(extra.get("wm_imp", 0))
        self.join.wm_eng = int(extra.get("wm_eng", 0))
        self.ttl = retention_threshold(self.join.wm_eng, retention_ms)
        self.imp_ids = CounterDedup(IMPRESSION_IDS, self.cache, state, self.join.wm_imp, self.ttl)
        self.eng_ids = CounterDedup(ENGAGEMENT_IDS, self.cache, state, self.join.wm_eng, self.ttl)
        self.duplicate_impressions = 0
        #: forwarded records applied here, per origin partition (``streams.engine.repartition``)
        self.origins = OriginFence(extra.get("origins"))
        pending = dict(state.items(PENDING_REQUESTS))
        pending.update(self._migrate_pending())
        self.join.rebuild_indexes(pending.items(), state.items(ORPHAN_ENGAGEMENTS), state.items(PREDICTION_LOGS))

    def _migrate_pending(self) -> dict[str, bytes]:
        """Move pending impressions stored one per key (the layout before 2026-12-07) into their requests'
        values; the moves are changes of the next checkpoint (until it commits, a restart moves them again)."""
        legacy = list(self.state.items(LEGACY_PENDING_IMPRESSIONS))
        if not legacy:
            return {}
        merged = pending_from_legacy(legacy)
        for key, _ in legacy:
            self.cache.delete(LEGACY_PENDING_IMPRESSIONS, key)
        for key, blob in merged.items():
            self.cache.set(PENDING_REQUESTS, key, blob)
        log.info("partition %d: %d pending impressions moved into %d requests' values", self.partition,
                 len(legacy), len(merged))
        return merged


    def _attributed(self, user_id: str, event_id: str, surface: str, item_type: str) -> None:
        seq = self.cache.get(USER_SEQUENCES, user_id)
        if seq is not None and seq.set_context(event_id, surface, item_type):
            self.cache.set(USER_SEQUENCES, user_id, seq)

    # -- processing ------------------------------------------------------------
    def process(self, topic: str, items: Iterable[Item]) -> int:
        """Apply one topic's records of this partition, in offset order; returns how many applied.

        Records at or below the committed offset of ``topic`` are skipped (the fence).
        """
        fence = self.offsets.get(topic, -1)
        tx, join, seq_len = self.cache, self.join, self.seq_len
        seqs, ctrs = USER_SEQUENCES, USER_COUNTERS
        applied = 0
        last = fence
        for kind, offset, ev, raw in items:
            if offset <= fence:
                self.skipped += 1
                continue
            last = offset
            applied += 1
            if kind == "engagement":
                assert isinstance(ev, Engagement)
                uid = ev.user_id
                if ev.ts < self.ttl:  # older than the retention: the join counts it (late), no user state
                    self.expired_events += 1
                    join.on_engagement(ev)
                    continue
                fresh = self.eng_ids.first(uid, ev.event_id, ev.ts)  # None: too old for the counters
                if fresh is False:  # counted before: a re-send
                    self.duplicates += 1
                    continue
                seq = tx.get(seqs, uid)
                if seq is None:
                    seq = ActionSequence(seq_len)
                # surface and item type come from the impression when the join attributes it
                res = seq.add(event_id=ev.event_id, item_id=ev.item_id, action=ev.action, ts=ev.ts,
                              surface="", item_type=UNKNOWN_ITEM_TYPE, dwell_ms=ev.dwell_ms or 0)
                if res == DUPLICATE:  # the same event id delivered again: applied once
                    self.duplicates += 1
                    continue
                if res == ADDED:
                    tx.set(seqs, uid, seq)
                if fresh:
                    c = tx.get(ctrs, uid) or UserCounters()
                    c.add(ev.ts, ev.action)
                    tx.set(ctrs, uid, c)
                join.on_engagement(ev)
                self.eng_ids.advance(join.wm_eng, self.ttl)
                if self.retention_ms and join.wm_eng - self.retention_ms >= self.ttl + LONG_TILE_MS:
                    self._advance_retention()
            elif kind == "impression":
                assert isinstance(ev, Impression)
                uid = ev.user_id
                if ev.ts >= self.ttl:
                    fresh = self.imp_ids.first(uid, ev.event_id, ev.ts)  # None: too old for the counters
                    if fresh is False:  # counted before: a re-send, not counted or joined again
                        self.duplicate_impressions += 1
                        continue
                    if fresh:
                        c = tx.get(ctrs, uid) or UserCounters()
                        c.add(ev.ts, None)
                        tx.set(ctrs, uid, c)
                else:
                    self.expired_events += 1
                join.on_impression(ev, raw)
                self.imp_ids.advance(join.wm_imp, self.ttl)
            elif kind == "prediction":
                # a PredictionLog or a PredictionHeader (the engine validates the rest lazily)
                if ev.ts > self.wm_pred:
                    self.wm_pred = ev.ts
                join.on_prediction(ev.user_id, ev.request_id, ev.ts, raw)
            else:  # pragma: no cover - the engine only passes the three kinds
                raise ValueError(f"unknown record kind {kind!r}")
        if last > fence:
            self.offsets[topic] = last
        return applied

    # -- retention -------------------------------------------------------------
    def _advance_retention(self) -> None:
        new = retention_threshold(self.join.wm_eng, self.retention_ms)
        if new > self.ttl:
            self.ttl = new
            self.sweep()
            self.imp_ids.advance(self.join.wm_imp, new)
            self.eng_ids.advance(self.join.wm_eng, new)

    def sweep(self) -> int:
        """Drop actions and counter tiles older than the retention threshold; delete emptied users.

        Runs over every user of the partition (cached and stored). Cheap checks
        on the stored bytes (oldest action, newest counter event) skip users
        with nothing to drop; only the others are decoded. Returns the number
        of users deleted.
        """
        ttl = self.ttl
        if ttl <= 0:
            return 0
        tx = self.cache
        removed = 0
        touched: list[tuple[StoreSpec, str]] = []
        for key, v in tx.cached_items(USER_SEQUENCES):
            if v is not None and v.ts and v.ts[0] < ttl:
                touched.append((USER_SEQUENCES, key))
        for key, raw in self.state.items(USER_SEQUENCES):
            if not tx.is_cached(USER_SEQUENCES, key) and first_ts(raw) < ttl:
                touched.append((USER_SEQUENCES, key))
        horizon = ttl + LONG_WINDOW_MS + 2 * LONG_TILE_MS  # newer users have no tile below ttl left
        for key, v in tx.cached_items(USER_COUNTERS):
            if v is not None and v.max_ts < horizon:
                touched.append((USER_COUNTERS, key))
        for key, raw in self.state.items(USER_COUNTERS):
            if not tx.is_cached(USER_COUNTERS, key) and counters_max_ts(raw) < horizon:
                touched.append((USER_COUNTERS, key))
        for store, key in touched:
            obj = tx.get(store, key)  # freezes it for an in-flight checkpoint before the change
            if obj is None or not obj.drop_before(ttl):
                continue
            if len(obj) == 0:
                tx.delete(store, key)
                removed += store is USER_COUNTERS
            else:
                tx.set(store, key, obj)
        self.swept_users += removed
        self.sweeps += 1
        if removed:
            log.info("partition %d: retention sweep at %d removed %d users", self.partition, ttl, removed)
        return removed

    # -- checkpoint --------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return self.cache.changed > 0 or self.offsets != self._last_meta.offsets or bool(self.feedback)

    def prepare(self) -> tuple[Snapshot, Meta]:
        """Take the next checkpoint: its changes (serialized lazily) and metadata.

        Processing may go on at once: later updates belong to the next
        checkpoint. The feedback delta becomes this checkpoint's outbox.
        """
        snap = self.cache.snapshot()
        ckpt = self._last_meta.ckpt + 1
        outbox: dict[str, Any] = {}
        if self.feedback:
            outbox = {"ckpt": ckpt, "origin": self.partition, "delta": self.feedback.to_json()}
            self.feedback = FeedbackTiles()
        meta = Meta(
            offsets=dict(self.offsets),
            ckpt=ckpt,
            outbox=outbox,
            extra={"wm_imp": self.join.wm_imp, "wm_eng": self.join.wm_eng, "wm_pred": self.wm_pred,
                   "stats": dict(self.join.stats.counts), "origins": dict(self.origins.fences)},
        )
        self._last_meta = meta
        return snap, meta

    def committed(self, changes: list[tuple[bytes, bytes | None]], meta: Meta) -> None:
        """The checkpoint is durable in the changelog: write it locally (one batch)."""
        self.state.commit(changes, meta)
        self.cache.committed()

    def checkpoint_local(self) -> Meta:
        """Commit to the local store only (no changelog): pure tests and recomputation."""
        snap, meta = self.prepare()
        self.committed(snap.all_changes(), meta)
        return meta

    # -- reads -----------------------------------------------------------------
    @property
    def watermark(self) -> int:
        return max(self.join.wm_imp, self.join.wm_eng)

    def user_state(self, user_id: str, now_ms: int | None = None) -> UserState:
        """The user's sequence and counters, including not yet checkpointed updates."""
        seq = self.cache.get(USER_SEQUENCES, user_id)
        return UserState(user_id, seq.actions() if seq is not None else (), *self._counts(user_id, now_ms))

    def encoded_user_state(self, user_id: str, now_ms: int | None = None) -> EncodedUserState:
        """``user_state`` with the sequence as a byte copy of its blob (for the score process)."""
        seq = self.cache.get(USER_SEQUENCES, user_id)
        blob = seq.encode() if seq is not None and len(seq) else b""
        return EncodedUserState(user_id, blob, *self._counts(user_id, now_ms))

    def _counts(self, user_id: str, now_ms: int | None) -> tuple[Counts, Counts]:
        """The user's 3-hour and 1-day counts at ``now_ms`` (default: the partition's watermark)."""
        ctr = self.cache.get(USER_COUNTERS, user_id)
        if ctr is None:
            return Counts(), Counts()
        now = self.watermark if now_ms is None else now_ms
        return ctr.counts_3h(now), ctr.counts_1d(now)

    def stats(self) -> dict[str, int]:
        return {**self.join.stats.counts, "skipped_replayed": self.skipped, "duplicate_engagements": self.duplicates,
                "duplicate_impression_ids": self.duplicate_impressions, "forwards_sent_again": self.origins.skipped,
                "expired_events": self.expired_events, "swept_users": self.swept_users, "sweeps": self.sweeps,
                "open_deadlines": self.join.open_deadlines(),
                # event-time watermarks (ms) of the three inputs: how far each has been read
                "wm_impressions": self.join.wm_imp, "wm_engagements": self.join.wm_eng, "wm_predictions": self.wm_pred}


__all__ = [
    "ALL_STORES",
    "ENGAGEMENT_IDS",
    "IMPRESSION_IDS",
    "ORPHAN_ENGAGEMENTS",
    "LEGACY_PENDING_IMPRESSIONS",
    "PENDING_REQUESTS",
    "PREDICTION_LOGS",
    "PartitionTables",
    "retention_threshold",
    "USER_COUNTERS",
    "USER_SEQUENCES",
]
