"""The stream tables of one partition and the per-event logic that updates them.

Tables (stores of one ``PartitionState``, keyed so a user's state is local):

- ``user_sequences``     user_id -> ``features.seqcodec`` blob (last N actions)
- ``user_counters``      user_id -> ``features.tiles.UserCounters`` blob (3 h / 1 d)
- ``pending_impressions``  user|item|request -> impression waiting for labels
- ``orphan_engagements``   user|item|request -> engagements that beat their impression
- ``prediction_logs``      user|request -> the scorer's ``PredictionLog``

plus the partition's un-shipped feedback-loop delta (``FeedbackTiles``) which
becomes the checkpoint's outbox. ``PartitionTables`` knows no Kafka: it takes
decoded records with their offsets, fences on the committed offsets, and hands
labeled examples to a callback, so it runs the same under the engine, in the
brokerless tests and in the from-scratch recomputation.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from features.events import Engagement, Impression
from features.labels import STAT_NAMES, JoinStats, LabelJoin
from features.predictions import PredictionLog
from features.seqcodec import ADDED, DUPLICATE, UNKNOWN_ITEM_TYPE, ActionSequence
from features.seqcodec import decode as decode_seq
from features.state import Counts, UserState
from features.tiles import FeedbackTiles, UserCounters

from .state import Meta, PartitionState, StoreSpec, Transaction, TxKV

log = logging.getLogger(__name__)

USER_SEQUENCES = StoreSpec("user_sequences")
USER_COUNTERS = StoreSpec("user_counters")
PENDING_IMPRESSIONS = StoreSpec("pending_impressions")
ORPHAN_ENGAGEMENTS = StoreSpec("orphan_engagements")
PREDICTION_LOGS = StoreSpec("prediction_logs")
ALL_STORES = (USER_SEQUENCES, USER_COUNTERS, PENDING_IMPRESSIONS, ORPHAN_ENGAGEMENTS, PREDICTION_LOGS)

#: what a processed record is: (kind, offset, event-or-log, raw value bytes)
Item = tuple[str, int, Any, bytes]


def _codecs(seq_len: int) -> dict[str, Any]:
    return {
        USER_SEQUENCES.name: (lambda b: decode_seq(b, seq_len), lambda s: s.encode()),
        USER_COUNTERS.name: (UserCounters.decode, lambda c: c.encode()),
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
    ) -> None:
        self.state = state
        self.partition = state.partition
        self.seq_len = seq_len
        self._codecs = _codecs(seq_len)
        self.tx = Transaction(state, self._codecs)
        self.feedback = FeedbackTiles()
        self.offsets: dict[str, int] = dict(state.meta.offsets)
        extra = state.meta.extra
        stats = JoinStats({**dict.fromkeys(STAT_NAMES, 0), **extra.get("stats", {})})
        self.skipped = 0
        self.duplicates = 0
        self.join = LabelJoin(
            TxKV(self._tx, PENDING_IMPRESSIONS),
            TxKV(self._tx, ORPHAN_ENGAGEMENTS),
            TxKV(self._tx, PREDICTION_LOGS),
            window_ms=window_ms,
            lateness_ms=lateness_ms,
            emit=emit,
            feedback=lambda: self.feedback,
            attributed=self._attributed,
            stats=stats,
        )
        self.join.wm_imp = int(extra.get("wm_imp", 0))
        self.join.wm_eng = int(extra.get("wm_eng", 0))
        self.join.rebuild_indexes(
            state.items(PENDING_IMPRESSIONS), state.items(ORPHAN_ENGAGEMENTS), state.items(PREDICTION_LOGS)
        )

    def _tx(self) -> Transaction:
        return self.tx

    def _attributed(self, user_id: str, event_id: str, surface: str, item_type: str) -> None:
        seq = self.tx.get(USER_SEQUENCES, user_id)
        if seq is not None and seq.set_context(event_id, surface, item_type):
            self.tx.set(USER_SEQUENCES, user_id, seq)

    # -- processing ------------------------------------------------------------
    def process(self, topic: str, items: Iterable[Item]) -> int:
        """Apply one topic's records of this partition, in offset order; returns how many applied.

        Records at or below the committed offset of ``topic`` are skipped (the fence).
        """
        fence = self.offsets.get(topic, -1)
        tx, join, seq_len = self.tx, self.join, self.seq_len
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
                c = tx.get(ctrs, uid) or UserCounters()
                c.add(ev.ts, ev.action)
                tx.set(ctrs, uid, c)
                join.on_engagement(ev)
            elif kind == "impression":
                assert isinstance(ev, Impression)
                uid = ev.user_id
                c = tx.get(ctrs, uid) or UserCounters()
                c.add(ev.ts, None)
                tx.set(ctrs, uid, c)
                join.on_impression(ev, raw)
            elif kind == "prediction":
                assert isinstance(ev, PredictionLog)
                join.on_prediction(ev.user_id, ev.request_id, ev.ts, raw)
            else:  # pragma: no cover - the engine only passes the three kinds
                raise ValueError(f"unknown record kind {kind!r}")
        if last > fence:
            self.offsets[topic] = last
        return applied

    # -- checkpoint --------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return self.tx.changed > 0 or self.offsets != self.state.meta.offsets or bool(self.feedback)

    def prepare(self) -> tuple[list[tuple[bytes, bytes | None]], Meta]:
        """Changes and metadata of the next checkpoint (the feedback delta becomes its outbox)."""
        changes = self.tx.prepare()
        ckpt = self.state.meta.ckpt + 1
        outbox: dict[str, Any] = {}
        if self.feedback:
            outbox = {"ckpt": ckpt, "origin": self.partition, "delta": self.feedback.to_json()}
        meta = Meta(
            offsets=dict(self.offsets),
            ckpt=ckpt,
            outbox=outbox,
            extra={"wm_imp": self.join.wm_imp, "wm_eng": self.join.wm_eng, "stats": dict(self.join.stats.counts)},
        )
        return changes, meta

    def committed(self, changes: list[tuple[bytes, bytes | None]], meta: Meta) -> None:
        """The checkpoint is durable in the changelog: write it locally, start a new transaction."""
        self.state.commit(changes, meta)
        self.tx.mark_committed()
        self.tx = Transaction(self.state, self._codecs)
        self.feedback = FeedbackTiles()

    def checkpoint_local(self) -> Meta:
        """Commit to the local store only (no changelog): pure tests and recomputation."""
        changes, meta = self.prepare()
        self.committed(changes, meta)
        return meta

    # -- reads -----------------------------------------------------------------
    @property
    def watermark(self) -> int:
        return max(self.join.wm_imp, self.join.wm_eng)

    def user_state(self, user_id: str, now_ms: int | None = None) -> UserState:
        """The user's sequence and counters, including not yet checkpointed updates."""
        seq = self.tx.get(USER_SEQUENCES, user_id)
        ctr = self.tx.get(USER_COUNTERS, user_id)
        now = self.watermark if now_ms is None else now_ms
        return UserState(
            user_id=user_id,
            actions=seq.actions() if seq is not None else (),
            counts_3h=ctr.counts_3h(now) if ctr is not None else Counts(),
            counts_1d=ctr.counts_1d(now) if ctr is not None else Counts(),
        )

    def stats(self) -> dict[str, int]:
        return {**self.join.stats.counts, "skipped_replayed": self.skipped, "duplicate_engagements": self.duplicates}


__all__ = [
    "ALL_STORES",
    "ORPHAN_ENGAGEMENTS",
    "PENDING_IMPRESSIONS",
    "PREDICTION_LOGS",
    "PartitionTables",
    "USER_COUNTERS",
    "USER_SEQUENCES",
]
