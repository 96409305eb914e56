"""In-memory replay of the stream state, for building training and evaluation data offline.

Consumes the same ``Impression``/``Engagement`` events as the stream workers and
exposes the same value types (``UserState``, ``FeedbackSnapshot``) that the
``features.assembly`` function reads, so offline rows are assembled exactly as
online requests are. Windows: the user's last ``seq_len`` actions, user counts
over 3 h and 1 day (hour tiles), and 30-minute feedback-loop counts per segment
(minute tiles). Engagements are released in event-time order, ties on the event time in the
order of their event id's hash: the live sequence's order (``features.seqcodec.ActionSequence``),
so a sequence replayed here equals the one the tables hold (issue 28's consistency check,
``tests/unit/streams/test_online_offline_consistency.py``).
"""

from __future__ import annotations

import heapq
import logging
from collections import defaultdict, deque
from typing import Iterable

import numpy as np

from features.events import ACTIONS, Engagement, Impression
from features.seqcodec import UNKNOWN_ITEM_TYPE, event_id_hash
from features.state import Counts, FeedbackSnapshot, SeqAction, UserState, segment_keys

log = logging.getLogger(__name__)

_A = {a: i + 1 for i, a in enumerate(ACTIONS)}  # column 0 = impressions
_HOUR = 3_600_000
_MINUTE = 60_000
_FEEDBACK_MINUTES = 30


def _counts(row: np.ndarray) -> Counts:
    return Counts(int(row[0]), {a: int(row[i]) for a, i in _A.items() if row[i]})


class ReplayState:
    """User sequences, user windows and feedback-loop tiles built from an event stream."""

    def __init__(self, seq_len: int = 100, attribution_ms: int = 600_000, lateness_ms: int = 60_000) -> None:
        self.seq_len = seq_len
        # the label join's rule (``features.labels``): an engagement contributes to its impression when
        # imp.ts - lateness <= eng.ts <= imp.ts + attribution (the settings' defaults, as the worker runs)
        self.attribution_ms = attribution_ms
        self.lateness_ms = lateness_ms
        self._seq: dict[str, deque[SeqAction]] = defaultdict(lambda: deque(maxlen=seq_len))
        self._user_tiles: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        self._fb_tiles: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        self._pending: list[tuple[int, int, int, Engagement]] = []
        self._n = 0
        self._fb_minute = -1
        self._fb_cache: dict[str, tuple[int, Counts]] = {}
        self._fb_version: dict[str, int] = defaultdict(int)  # bumped by every change of a segment's tiles
        self._imp_meta: dict[str, tuple[str, str, str, int]] = {}  # request:item -> (surface, item_type, seg, ts)
        self._counted: set[tuple[str, str]] = set()  # (request:item, action) already in the feedback loop
        # engagement ids applied, by hour of their event time: a re-sent engagement is applied once (the
        # tables remember ids per user and hour for a day and an hour: ``streams.engine.dedup``)
        self._seen: dict[int, set[str]] = defaultdict(set)
        self._by_minute: dict[int, list[str]] = defaultdict(list)  # impression refs by minute, for pruning
        self._pruned_to = 0

    def _bump(self, tiles: dict[int, np.ndarray], tile: int, col: int) -> None:
        row = tiles.get(tile)
        if row is None:
            row = tiles[tile] = np.zeros(len(ACTIONS) + 1, dtype=np.int64)
        row[col] += 1

    def add_impression(self, imp: Impression) -> None:
        self._bump(self._user_tiles[imp.user_id], imp.ts // _HOUR, 0)
        for key in segment_keys(imp.country, imp.gender):
            self._bump(self._fb_tiles[key], imp.ts // _MINUTE, 0)
            self._fb_version[key] += 1
        ref = f"{imp.request_id}:{imp.item_id}"
        self._imp_meta[ref] = (imp.surface, imp.item_type, f"{imp.gender}:{imp.country}", imp.ts)
        self._by_minute[imp.ts // _MINUTE].append(ref)

    def add_engagements(self, engagements: Iterable[Engagement]) -> None:
        """Queue engagements; they take effect once the replay clock reaches their ts."""
        for e in engagements:
            self._n += 1
            heapq.heappush(self._pending, (e.ts, event_id_hash(e.event_id), self._n, e))

    def advance(self, now_ms: int) -> None:
        """Apply every queued engagement with ``ts <= now_ms``."""
        while self._pending and self._pending[0][0] <= now_ms:
            e = heapq.heappop(self._pending)[-1]
            self._apply(e)
        self._prune(now_ms)

    def _prune(self, now_ms: int) -> None:
        """Forget what no later engagement can use, so a long replay stays bounded: impressions past their
        attribution window and lateness (engagements are applied in event-time order), and engagement ids
        older than the tables' dedup horizon (a day and an hour)."""
        minute = (now_ms - self.attribution_ms - self.lateness_ms) // _MINUTE - 1
        if minute <= self._pruned_to:
            return
        self._pruned_to = minute
        for m in [m for m in self._by_minute if m < minute]:
            for ref in self._by_minute.pop(m):
                self._imp_meta.pop(ref, None)
                for a in ACTIONS:
                    self._counted.discard((ref, a))
        oldest_hour = (now_ms - 25 * _HOUR) // _HOUR
        for h in [h for h in self._seen if h < oldest_hour]:
            del self._seen[h]

    def _apply(self, e: Engagement) -> None:
        """As the tables apply it: the sequence and counters take every engagement once; only one that
        contributes to its impression gets the impression's surface and item type (else ``""`` and
        ``unknown``, as the live sequence keeps them), and the feedback loop counts an action once per
        impression, when its label flips."""
        seen = self._seen[e.ts // _HOUR]
        if e.event_id in seen:
            return
        seen.add(e.event_id)
        ref = f"{e.request_id}:{e.item_id}"
        meta = self._imp_meta.get(ref)
        contributes = meta is not None and meta[3] - self.lateness_ms <= e.ts <= meta[3] + self.attribution_ms
        surface, item_type = (meta[0], meta[1]) if contributes else ("", UNKNOWN_ITEM_TYPE)  # type: ignore[index]
        self._seq[e.user_id].append(SeqAction(e.item_id, e.action, e.ts, surface, item_type, e.dwell_ms or 0))
        self._bump(self._user_tiles[e.user_id], e.ts // _HOUR, _A[e.action])
        if not contributes or (ref, e.action) in self._counted:
            return
        self._counted.add((ref, e.action))
        gender, country = meta[2].split(":")  # type: ignore[index]
        for key in segment_keys(country, gender):
            self._bump(self._fb_tiles[key], e.ts // _MINUTE, _A[e.action])
            self._fb_version[key] += 1

    def user_state(self, user_id: str, now_ms: int) -> UserState:
        tiles = self._user_tiles.get(user_id, {})
        hour = now_ms // _HOUR
        for old in [t for t in tiles if t <= hour - 24]:
            del tiles[old]
        zero = np.zeros(len(ACTIONS) + 1, dtype=np.int64)
        c3 = sum((r for t, r in tiles.items() if t > hour - 3), zero)
        c1d = sum(tiles.values(), zero)
        return UserState(user_id, tuple(self._seq.get(user_id, ())), _counts(c3), _counts(c1d))

    def feedback(self, now_ms: int, country: str, gender: str) -> FeedbackSnapshot:
        """30-minute counts of the request's segments as of ``now_ms``, every event applied so far included.

        A segment's sum is cached until its tiles change or the minute turns. (It was refreshed once per
        event-time minute: up to a minute staler than the live view, which takes deltas every checkpoint;
        53 % of the compared counts differed, issue 28.)"""
        minute = now_ms // _MINUTE
        if minute != self._fb_minute:
            self._fb_minute, self._fb_cache = minute, {}
        segs: dict[str, Counts] = {}
        for key in segment_keys(country, gender):
            version = self._fb_version[key]
            hit = self._fb_cache.get(key)
            if hit is None or hit[0] != version:
                tiles = self._fb_tiles.get(key, {})
                for old in [t for t in tiles if t <= minute - _FEEDBACK_MINUTES]:
                    del tiles[old]
                hit = self._fb_cache[key] = (version, _counts(sum(tiles.values(),
                                                                  np.zeros(len(ACTIONS) + 1, dtype=np.int64))))
            segs[key] = hit[1]
        return FeedbackSnapshot(segs)


__all__ = ["ReplayState"]
