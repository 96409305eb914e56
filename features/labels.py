"""The impression-label join, as pure event-time logic (no Kafka, no Faust).

Rules (``A`` = attribution window, ``L`` = allowed lateness; ``W_i``/``W_e``
= the largest event time seen so far on this partition's impressions /
engagements input, so each depends only on its own topic's order):

- An event with ``ts + L < W`` of its own input is *late*: it is counted
  (``late_impressions`` / ``late_engagements``) and does not take part in the
  join or the feedback loop. (The user's sequence and counters, which are
  order-independent, still take it.)
- An engagement *contributes* to the impression with the same
  ``(user, item, request)`` when ``imp.ts - L <= eng.ts <= imp.ts + A``; it sets
  that action's label to 1 (once; the feedback loop counts the action when its
  label flips). Non-contributing engagements are counted as
  ``unlabeled_engagements``: outside the window, or never matched.
- A non-contributing engagement waits as an *orphan* (its impression may
  still come) until ``eng.ts + 2L < W_i``: then no impression that could still
  arrive on time could use it and it is counted unlabeled (at once, when that
  already holds on arrival). Both rules are checked whatever the arrival order,
  so which engagements contribute, and which orphans remain, depend only on
  each input's own order: the final tables are the same for any interleaving.
- An impression's window closes when ``W_e > imp.ts + A + L``; then exactly one
  labeled example is emitted: the impression, a 0/1 label per action, and the
  scorer's logged prediction for that request and item (or ``null``).
- A contributing engagement is *attributed*: the ``attributed`` callback gets
  its impression's surface and item type (the user's sequence stores them).

Labels therefore depend only on the input, not on how the two topics
interleave, which is what makes a crash-and-replay reproduce the same output.
A prediction log is kept until ``W_e > log.ts + 2A + L``.
"""

from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Iterable, Protocol

import orjson

from .events import ACTIONS, Engagement, Impression
from .predictions import PredictionDecodeError, decode_prediction, prediction_fields
from .state import segment_keys
from .tiles import FeedbackTiles

_BIT: Final[dict[str, int]] = {a: 1 << i for i, a in enumerate(ACTIONS)}
#: one pending impression in its request's value: labels bitmask, ts, country, gender, len(item id), len(raw);
#: then the item id and the raw impression. A request's value is its impressions' records in item-id order.
_ITEM = struct.Struct("<Bq2s1sBH")
_LEGACY = struct.Struct("<Bq2s1s")  # the per-impression layout before (``pending_from_legacy``); then the raw impression
_ORPHAN = struct.Struct("<qB")  # ts, action index; then the event id

STAT_NAMES: Final[tuple[str, ...]] = (
    "impressions_joined",
    "late_impressions",
    "duplicate_impressions",
    "late_engagements",
    "unlabeled_engagements",
    "labeled_examples",
    "labeled_with_prediction",
    "expired_predictions",
    "duplicate_predictions",
    "invalid_predictions",
)


class KV(Protocol):
    """The byte-level map a join keeps one of its tables in."""

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes) -> None: ...
    def delete(self, key: str) -> None: ...


class DictKV:
    """A ``KV`` over a plain dict (pure tests and recomputation)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def items(self) -> Iterable[tuple[str, bytes]]:
        return self.data.items()


def join_key(user_id: str, item_id: str, request_id: str) -> str:
    """The key of one impression's orphan engagements."""
    return f"{user_id}|{item_id}|{request_id}"


def request_key(user_id: str, request_id: str) -> str:
    """The key of a request's state: its pending impressions, its prediction log."""
    return f"{user_id}|{request_id}"


@dataclass
class JoinStats:
    """Counters of what the join did (persisted with the partition's state)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAT_NAMES, 0))

    def inc(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


def encode_pending(labels: int, imp: Impression, raw: bytes) -> bytes:
    """One impression's record in its request's pending value."""
    item = imp.item_id.encode()
    return _ITEM.pack(labels, imp.ts, imp.country.encode(), imp.gender.encode(), len(item), len(raw)) + item + raw


def find_pending(blob: bytes, item: bytes, ts: int = -1) -> tuple[int, int, bool]:
    """(offset of ``item``'s record in a request's value or -1, the offset where it belongs in item-id order,
    whether an impression of time ``ts`` is in it)."""
    off, n, size, unpack = 0, len(blob), _ITEM.size, _ITEM.unpack_from
    found, at, has_ts = -1, -1, False
    while off < n:
        _b, t, _c, _g, ilen, rlen = unpack(blob, off)
        has_ts = has_ts or t == ts
        if at < 0:
            here = blob[off + size:off + size + ilen]
            if here >= item:
                at = off
                if here == item:
                    found = off
                    break
        off += size + ilen + rlen
    return found, (n if at < 0 else at), has_ts


def decode_pending(blob: bytes) -> list[tuple[int, int, int, str, str, bytes]]:
    """A request's value -> (record offset, labels bitmask, ts, country, gender, raw impression) per impression."""
    out = []
    off, n, size, unpack = 0, len(blob), _ITEM.size, _ITEM.unpack_from
    while off < n:
        bits, ts, country, gender, ilen, rlen = unpack(blob, off)
        start = off + size + ilen
        out.append((off, bits, ts, country.decode(), gender.decode(), blob[start:start + rlen]))
        off = start + rlen
    return out


def _record_end(blob: bytes, off: int) -> int:
    ilen, rlen = _ITEM.unpack_from(blob, off)[4:]
    return off + _ITEM.size + ilen + rlen


def pending_from_legacy(old: Iterable[tuple[str, bytes]]) -> dict[str, bytes]:
    """The per-request values of pending impressions stored one per ``user|item|request`` key (the layout
    before 2026-12-07): the same bytes as if they had been joined into their requests on arrival."""
    out: dict[str, bytes] = {}
    for _key, v in old:
        bits, ts, country, gender = _LEGACY.unpack_from(v, 0)
        raw = v[_LEGACY.size:]
        imp = orjson.loads(raw)
        key = request_key(imp["user_id"], imp["request_id"])
        item = imp["item_id"].encode()
        rec = _ITEM.pack(bits, ts, country, gender, len(item), len(raw)) + item + raw
        blob = out.get(key, b"")
        found, at, _ = find_pending(blob, item)
        if found < 0:
            out[key] = blob[:at] + rec + blob[at:]
    return out


def labels_dict(bits: int) -> dict[str, int]:
    return dict(_LABELS[bits])


_LABELS: Final[list[dict[str, int]]] = [{a: 1 if bits & b else 0 for a, b in _BIT.items()}
                                        for bits in range(1 << len(ACTIONS))]


def _encode_orphans(items: list[tuple[int, int, str]]) -> bytes:
    return b"".join(_ORPHAN.pack(ts, ai) + eid.encode() + b"\n" for ts, ai, eid in items)


def _decode_orphans(blob: bytes) -> list[tuple[int, int, str]]:
    out = []
    off = 0
    while off < len(blob):
        ts, ai = _ORPHAN.unpack_from(blob, off)
        off += _ORPHAN.size
        end = blob.index(b"\n", off)
        out.append((ts, ai, blob[off:end].decode()))
        off = end + 1
    return out


class LabelJoin:
    """One partition's join state machine over three ``KV`` tables.

    ``emit(user_id, example)`` receives each labeled example (a JSON-ready dict);
    ``feedback`` receives impression and action counts per segment (the
    partition's pending feedback delta).
    """

    def __init__(
        self,
        pending: KV,
        orphans: KV,
        predictions: KV,
        *,
        window_ms: int,
        lateness_ms: int,
        emit: Callable[[str, dict[str, Any]], None],
        feedback: Callable[[], FeedbackTiles],
        attributed: Callable[[str, str, str, str], None] = lambda user, eid, surface, item_type: None,
        stats: JoinStats | None = None,
    ) -> None:
        self.pending = pending
        self.orphans = orphans
        self.predictions = predictions
        self.window_ms = window_ms
        self.lateness_ms = lateness_ms
        self.emit = emit
        self.feedback = feedback
        self.attributed = attributed
        self.stats = stats or JoinStats()
        self.wm_imp = 0
        self.wm_eng = 0
        # lazy min-heaps of packed (deadline, key) entries (``_entry``); re-checked against the table
        self._close_heap: list[bytes] = []
        self._orphan_heap: list[bytes] = []
        #: keys of the stored orphans (few): an impression looks its key up here, not in the store (a miss there
        #: is a RocksDB read for almost every impression)
        self._orphan_keys: set[str] = set()
        #: keys of the stored pending requests and prediction logs: most lookups are of a request not seen yet
        #: (its first impression, its log's duplicate check), a RocksDB read that misses, or of one that closed
        #: (a stale heap entry); these sets answer them (one str per open request, ~90 bytes)
        self._pending_keys: set[str] = set()
        self._pred_keys: set[str] = set()
        self._pred_heap: list[bytes] = []
        # the last fully validated log (the impressions of one request close together)
        self._pred_cache: tuple[bytes, Any] = (b"", None)

    # -- recovery --------------------------------------------------------------
    def rebuild_indexes(
        self,
        pending: Iterable[tuple[str, bytes]],
        orphans: Iterable[tuple[str, bytes]],
        predictions: Iterable[tuple[str, bytes]],
    ) -> None:
        """Rebuild the in-memory deadline heaps from the stored tables (on open)."""
        A, L = self.window_ms, self.lateness_ms
        pending = list(pending)
        self._close_heap = [_entry(ts + A + L, k) for k, v in pending
                            for ts in {r[2] for r in decode_pending(v)}]
        self._pending_keys = {k for k, _ in pending}
        orphans = list(orphans)
        self._orphan_heap = [_entry(min(t for t, _, _ in _decode_orphans(v)) + 2 * L, k) for k, v in orphans]
        self._orphan_keys = {k for k, _ in orphans}
        self._pred_heap = []
        self._pred_keys = set()
        for k, v in predictions:
            self._pred_keys.add(k)
            (ts,) = struct.unpack_from("<q", v, 0)
            self._pred_heap.append(_entry(ts + 2 * A + L, k))
        for h in (self._close_heap, self._orphan_heap, self._pred_heap):
            heapq.heapify(h)

    # -- inputs ----------------------------------------------------------------
    def on_prediction(self, user_id: str, request_id: str, ts: int, raw: bytes) -> None:
        key = request_key(user_id, request_id)
        if ts + 2 * self.window_ms + self.lateness_ms < self.wm_eng:
            self.stats.inc("expired_predictions")  # every impression it could serve has closed
            return
        if key in self._pred_keys:
            self.stats.inc("duplicate_predictions")
            return
        self.predictions.put(key, struct.pack("<q", ts) + raw)
        self._pred_keys.add(key)
        heapq.heappush(self._pred_heap, _entry(ts + 2 * self.window_ms + self.lateness_ms, key))

    def on_impression(self, imp: Impression, raw: bytes) -> bool:
        """Returns False when the impression is late (not joined, not in the feedback loop)."""
        L, A = self.lateness_ms, self.window_ms
        if imp.ts + L < self.wm_imp:
            self.stats.inc("late_impressions")
            return False
        if imp.ts > self.wm_imp:
            self.wm_imp = imp.ts
        key = request_key(imp.user_id, imp.request_id)
        blob = (self.pending.get(key) or b"") if key in self._pending_keys else b""
        item = imp.item_id.encode()
        found, at, same_ts = find_pending(blob, item, imp.ts)
        if found >= 0:
            self.stats.inc("duplicate_impressions")
            return False
        self.stats.inc("impressions_joined")
        segs = segment_keys(imp.country, imp.gender)
        fb = self.feedback()
        fb.add(segs, imp.ts, None)
        bits = 0
        okey = join_key(imp.user_id, imp.item_id, imp.request_id) if self._orphan_keys else ""
        oblob = self.orphans.get(okey) if okey in self._orphan_keys else None
        if oblob is not None:
            keep = []
            for ets, ai, eid in _decode_orphans(oblob):
                if imp.ts - L <= ets <= imp.ts + A:
                    self.attributed(imp.user_id, eid, imp.surface, imp.item_type)
                    bit = 1 << ai
                    if not bits & bit:
                        bits |= bit
                        fb.add(segs, ets, ACTIONS[ai])
                else:
                    keep.append((ets, ai, eid))  # not this impression's: expires like any orphan
            if keep:
                self.orphans.put(okey, _encode_orphans(keep))
            else:
                self.orphans.delete(okey)
                self._orphan_keys.discard(okey)
        # one close deadline per request and impression time (the impressions of a request usually share it)
        if not same_ts:
            heapq.heappush(self._close_heap, _entry(imp.ts + A + L, key))
        self.pending.put(key, blob[:at] + encode_pending(bits, imp, raw) + blob[at:])
        self._pending_keys.add(key)
        self._expire_orphans()
        self._close_due()
        return True

    def on_engagement(self, eng: Engagement) -> bool:
        """Returns False when the engagement is late on its own input."""
        L, A = self.lateness_ms, self.window_ms
        if eng.ts + L < self.wm_eng:
            self.stats.inc("late_engagements")
            return False
        if eng.ts > self.wm_eng:
            self.wm_eng = eng.ts
        rkey = request_key(eng.user_id, eng.request_id)
        blob = self.pending.get(rkey) if rkey in self._pending_keys else None
        if blob is not None and (off := find_pending(blob, eng.item_id.encode())[0]) >= 0:
            bits, ts, country, gender, ilen, rlen = _ITEM.unpack_from(blob, off)
            if ts - L <= eng.ts <= ts + A:
                start = off + _ITEM.size + ilen
                ctx = orjson.loads(blob[start:start + rlen])
                self.attributed(eng.user_id, eng.event_id, ctx.get("surface", ""), ctx.get("item_type", ""))
                bit = _BIT[eng.action]
                if not bits & bit:
                    self.pending.put(rkey, blob[:off] + bytes([bits | bit]) + blob[off + 1:])
                    self.feedback().add(segment_keys(country.decode(), gender.decode()), eng.ts, eng.action)
                self._close_due()
                return True
        key = join_key(eng.user_id, eng.item_id, eng.request_id)
        # not contributing (yet): an orphan, unless no on-time impression could still use it
        if eng.ts + 2 * L < self.wm_imp:
            self.stats.inc("unlabeled_engagements")
        else:
            ai = ACTIONS.index(eng.action)
            old = self.orphans.get(key) if key in self._orphan_keys else None
            item = _ORPHAN.pack(eng.ts, ai) + eng.event_id.encode() + b"\n"
            self.orphans.put(key, (old or b"") + item)
            self._orphan_keys.add(key)
            heapq.heappush(self._orphan_heap, _entry(eng.ts + 2 * L, key))
        self._close_due()
        return True

    # -- deadlines -------------------------------------------------------------
    def open_deadlines(self) -> int:
        """Entries in the in-memory deadline heaps (pending impressions, orphans, prediction logs; stale ones too)."""
        return len(self._close_heap) + len(self._orphan_heap) + len(self._pred_heap)

    def _close_due(self) -> None:
        heap = self._close_heap
        due = _due(self.wm_eng)
        AL = self.window_ms + self.lateness_ms
        while heap and heap[0] < due:
            deadline, key = _unpack(heapq.heappop(heap))
            blob = self.pending.get(key) if key in self._pending_keys else None
            if blob is None:
                continue
            keep = []
            closing = []
            for off, bits, ts, _c, _g, raw in decode_pending(blob):
                if ts + AL == deadline:
                    closing.append((bits, raw))
                else:  # closes at its own deadline (a heap entry of its own)
                    keep.append(blob[off:_record_end(blob, off)])
            if not closing:
                continue  # stale heap entry
            if keep:
                self.pending.put(key, b"".join(keep))
            else:
                self.pending.delete(key)
                self._pending_keys.discard(key)
            pblob = self.predictions.get(key) if key in self._pred_keys else None
            for bits, raw in closing:
                self._emit(bits, raw, pblob)
        self._expire_predictions()

    def _emit(self, bits: int, raw: bytes, pblob: bytes | None) -> None:
        """One labeled example: the impression ``raw``, its labels, its request's logged prediction ``pblob``."""
        imp = orjson.loads(raw)
        pred = None
        if pblob is not None:
            # validated lazily, here, once per log: the engine checked only its header
            cached_blob, log = self._pred_cache
            if cached_blob is not pblob and cached_blob != pblob:
                try:
                    log = decode_prediction(pblob[8:])
                except PredictionDecodeError:
                    log = None
                self._pred_cache = (pblob, log)
            if log is None:
                self.stats.inc("invalid_predictions")  # examples whose logged prediction failed validation
            else:
                pred = prediction_fields(log, imp["item_id"])
        self.stats.inc("labeled_examples")
        if pred is not None:
            self.stats.inc("labeled_with_prediction")
        self.emit(imp["user_id"], {
            "example_id": imp["event_id"],
            "impression": imp,
            "labels": labels_dict(bits),
            "prediction": pred,
        })

    def _expire_orphans(self) -> None:
        heap = self._orphan_heap
        wm = self.wm_imp
        due = _due(wm)
        two_l = 2 * self.lateness_ms
        while heap and heap[0] < due:
            _deadline, key = _unpack(heapq.heappop(heap))
            blob = self.orphans.get(key)
            if blob is None:
                continue
            keep = []
            for item in _decode_orphans(blob):
                if item[0] + two_l < wm:
                    self.stats.inc("unlabeled_engagements")
                else:
                    keep.append(item)
            if keep:
                self.orphans.put(key, _encode_orphans(keep))
                heapq.heappush(heap, _entry(min(t for t, _, _ in keep) + two_l, key))
            else:
                self.orphans.delete(key)
                self._orphan_keys.discard(key)

    def _expire_predictions(self) -> None:
        heap = self._pred_heap
        due = _due(self.wm_eng)
        while heap and heap[0] < due:
            _deadline, key = _unpack(heapq.heappop(heap))
            if key in self._pred_keys:
                self.predictions.delete(key)
                self._pred_keys.discard(key)
                self.stats.inc("expired_predictions")


# Deadline heap entries are one bytes object each: the deadline, biased to unsigned and big-endian so that
# bytes order is deadline order, then the key. A (deadline, key) tuple took ~190 bytes in three objects
# (tuple, int, str); this takes ~100 in one. At 80% of the engine's maximum rate ~600k impressions are
# pending at once, and pymalloc keeps the arenas of the largest backlog so far (docs/reliability.md).
_BIAS = 1 << 63


def _entry(deadline: int, key: str) -> bytes:
    return (deadline + _BIAS).to_bytes(8, "big") + key.encode()


def _due(watermark: int) -> bytes:
    """The entries ``e < _due(w)`` are exactly those with deadline < w (a longer entry sorts after its prefix)."""
    return (watermark + _BIAS).to_bytes(8, "big")


def _unpack(entry: bytes) -> tuple[int, str]:
    return int.from_bytes(entry[:8], "big") - _BIAS, entry[8:].decode()


__all__ = [
    "DictKV",
    "JoinStats",
    "KV",
    "LabelJoin",
    "STAT_NAMES",
    "decode_pending",
    "encode_pending",
    "find_pending",
    "join_key",
    "labels_dict",
    "pending_from_legacy",
    "request_key",
]
