"""Event-time tile counters: a user's own 3 h / 1 d counts and the feedback loop.

A tile holds ``1 + len(ACTIONS)`` counts: impressions, then one count per
action in ``ACTIONS`` order. A window of length W read at time ``now`` sums
the tile that contains ``now`` and the ``W/tile - 1`` tiles before it (the
usual tile approximation of a sliding window; the oldest part of the window
is at most one tile short).

- ``UserCounters``: 15-minute tiles for the 3-hour window and 1-hour tiles for
  the 1-day window, pruned against the user's newest event time. The final
  content depends only on the set of events, never on their order.
- ``FeedbackTiles``: one-minute tiles per segment key (``all``, ``c:US``,
  ``gc:f:US``). Used both for a partition's pending delta (what it has not
  shipped yet) and for the global 30-minute view that sums every partition's
  deltas.
"""

from __future__ import annotations

import struct
from array import array
from typing import Final, Iterable, Mapping

from .events import ACTIONS
from .state import Counts, FeedbackSnapshot

WIDTH: Final[int] = 1 + len(ACTIONS)
ACTION_SLOT: Final[dict[str, int]] = {a: i + 1 for i, a in enumerate(ACTIONS)}
MINUTE_MS: Final[int] = 60_000
HOUR_MS: Final[int] = 3_600_000

SHORT_TILE_MS: Final[int] = 15 * MINUTE_MS
SHORT_WINDOW_MS: Final[int] = 3 * HOUR_MS
LONG_TILE_MS: Final[int] = HOUR_MS
LONG_WINDOW_MS: Final[int] = 24 * HOUR_MS

_VERSION = 1


class TileCodecError(ValueError):
    """A stored tile blob is corrupt or of an unknown version."""


def slot_of(action: str | None) -> int:
    """Index of an event in a tile: 0 for an impression, else its action's slot."""
    return 0 if action is None else ACTION_SLOT[action]


def counts_of(vec: Iterable[int]) -> Counts:
    v = list(vec)
    return Counts(impressions=v[0], actions={a: v[i + 1] for i, a in enumerate(ACTIONS) if v[i + 1]})


def _window_sum(tiles: Mapping[int, list[int]], tile_ms: int, window_ms: int, now: int) -> list[int]:
    hi = now // tile_ms * tile_ms
    lo = hi - window_ms + tile_ms
    out = [0] * WIDTH
    for start, vec in tiles.items():
        if lo <= start <= hi:
            for i in range(WIDTH):
                out[i] += vec[i]
    return out


def _encode_tiles(tiles: Mapping[int, list[int]], scale: int) -> bytes:
    keys = sorted(tiles)
    a = array("I", (k // scale for k in keys))
    b = array("I")
    for k in keys:
        b.extend(tiles[k])
    return struct.pack("<I", len(keys)) + a.tobytes() + b.tobytes()


def _decode_tiles(blob: bytes, off: int, scale: int) -> tuple[dict[int, list[int]], int]:
    (n,) = struct.unpack_from("<I", blob, off)
    off += 4
    a = array("I")
    a.frombytes(blob[off : off + 4 * n])
    off += 4 * n
    b = array("I")
    b.frombytes(blob[off : off + 4 * n * WIDTH])
    off += 4 * n * WIDTH
    flat = b.tolist()
    return {k * scale: flat[i * WIDTH : (i + 1) * WIDTH] for i, k in enumerate(a.tolist())}, off


class UserCounters:
    """A user's impressions and actions in 15-min tiles (3 h) and 1-h tiles (1 d)."""

    __slots__ = ("max_ts", "short", "long")

    def __init__(self) -> None:
        self.max_ts = 0
        self.short: dict[int, list[int]] = {}
        self.long: dict[int, list[int]] = {}

    def add(self, ts: int, action: str | None, n: int = 1) -> None:
        """Count one impression (``action=None``) or one action at event time ``ts``."""
        slot = slot_of(action)
        if ts > self.max_ts:
            self.max_ts = ts
            self._prune()
        s = ts // SHORT_TILE_MS * SHORT_TILE_MS
        if s > self.max_ts - SHORT_WINDOW_MS - SHORT_TILE_MS:
            vec = self.short.get(s)
            if vec is None:
                vec = self.short[s] = [0] * WIDTH
            vec[slot] += n
        g = ts // LONG_TILE_MS * LONG_TILE_MS
        if g > self.max_ts - LONG_WINDOW_MS - LONG_TILE_MS:
            vec = self.long.get(g)
            if vec is None:
                vec = self.long[g] = [0] * WIDTH
            vec[slot] += n

    def _prune(self) -> None:
        lo_s = self.max_ts - SHORT_WINDOW_MS - SHORT_TILE_MS
        for k in [k for k in self.short if k <= lo_s]:
            del self.short[k]
        lo_g = self.max_ts - LONG_WINDOW_MS - LONG_TILE_MS
        for k in [k for k in self.long if k <= lo_g]:
            del self.long[k]

    def __len__(self) -> int:
        """Live tiles (0 = nothing counted in the windows)."""
        return len(self.short) + len(self.long)

    def drop_before(self, ts: int) -> bool:
        """Drop the tiles that start before ``ts`` (retention; ``ts`` hour-aligned); True if any."""
        old_s = [k for k in self.short if k < ts]
        old_g = [k for k in self.long if k < ts]
        for k in old_s:
            del self.short[k]
        for k in old_g:
            del self.long[k]
        return bool(old_s or old_g)

    def counts_3h(self, now: int) -> Counts:
        return counts_of(_window_sum(self.short, SHORT_TILE_MS, SHORT_WINDOW_MS, now))

    def counts_1d(self, now: int) -> Counts:
        return counts_of(_window_sum(self.long, LONG_TILE_MS, LONG_WINDOW_MS, now))

    def encode(self) -> bytes:
        return (
            struct.pack("<Bq", _VERSION, self.max_ts)
            + _encode_tiles(self.short, MINUTE_MS)
            + _encode_tiles(self.long, MINUTE_MS)
        )

    @classmethod
    def decode(cls, blob: bytes) -> "UserCounters":
        try:
            version, max_ts = struct.unpack_from("<Bq", blob, 0)
            if version != _VERSION:
                raise TileCodecError(f"unknown counters version {version}")
            c = cls()
            c.max_ts = max_ts
            c.short, off = _decode_tiles(blob, 9, MINUTE_MS)
            c.long, _ = _decode_tiles(blob, off, MINUTE_MS)
        except struct.error as exc:
            raise TileCodecError(f"corrupt counters blob: {exc}") from exc
        return c

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserCounters):
            return NotImplemented
        return (self.max_ts, self.short, self.long) == (other.max_ts, other.short, other.long)

    def __repr__(self) -> str:
        return f"UserCounters(max_ts={self.max_ts}, short={len(self.short)}, long={len(self.long)})"


def counters_max_ts(blob: bytes) -> int:
    """The newest event time of an encoded ``UserCounters`` without decoding it."""
    version, max_ts = struct.unpack_from("<Bq", blob, 0)
    if version != _VERSION:
        raise TileCodecError(f"unknown counters version {version}")
    return int(max_ts)


class FeedbackTiles:
    """Per-segment one-minute tiles: ``{segment: {minute_start_ms: [imps, *actions]}}``."""

    __slots__ = ("tiles",)

    def __init__(self, tiles: dict[str, dict[int, list[int]]] | None = None) -> None:
        self.tiles: dict[str, dict[int, list[int]]] = tiles if tiles is not None else {}

    def __bool__(self) -> bool:
        return bool(self.tiles)

    def add(self, segments: Iterable[str], ts: int, action: str | None, n: int = 1) -> None:
        slot = slot_of(action)
        minute = ts // MINUTE_MS * MINUTE_MS
        for seg in segments:
            per = self.tiles.get(seg)
            if per is None:
                per = self.tiles[seg] = {}
            vec = per.get(minute)
            if vec is None:
                vec = per[minute] = [0] * WIDTH
            vec[slot] += n

    def merge(self, segment: str, tiles: Mapping[int, list[int]]) -> None:
        """Add one segment's tile vectors (a shipped delta) into this set."""
        per = self.tiles.setdefault(segment, {})
        for minute, vec in tiles.items():
            cur = per.get(minute)
            if cur is None:
                per[minute] = list(vec)
            else:
                for i in range(WIDTH):
                    cur[i] += vec[i]

    def expire(self, before_ms: int) -> int:
        """Drop tiles that start before ``before_ms``; returns how many were dropped."""
        dropped = 0
        for seg in list(self.tiles):
            per = self.tiles[seg]
            for k in [k for k in per if k < before_ms]:
                del per[k]
                dropped += 1
            if not per:
                del self.tiles[seg]
        return dropped

    def window(self, segment: str, now: int, window_ms: int = 30 * MINUTE_MS) -> Counts:
        """The segment's counts over the ``window_ms`` tiles ending with ``now``'s tile."""
        per = self.tiles.get(segment)
        if not per:
            return Counts()
        return counts_of(_window_sum(per, MINUTE_MS, window_ms, now))

    def snapshot(self, now: int, window_ms: int = 30 * MINUTE_MS) -> FeedbackSnapshot:
        return FeedbackSnapshot({seg: self.window(seg, now, window_ms) for seg in sorted(self.tiles)})

    def to_json(self) -> dict[str, dict[str, list[int]]]:
        return {seg: {str(k): v for k, v in sorted(per.items())} for seg, per in sorted(self.tiles.items())}

    @classmethod
    def from_json(cls, obj: Mapping[str, Mapping[str, list[int]]]) -> "FeedbackTiles":
        return cls({seg: {int(k): list(v) for k, v in per.items()} for seg, per in obj.items()})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeedbackTiles):
            return NotImplemented
        return self.tiles == other.tiles

    def __repr__(self) -> str:
        return f"FeedbackTiles(segments={len(self.tiles)})"


class FeedbackView:
    """The global feedback loop: every partition's shipped deltas summed per segment tile.

    A delta is ``(origin partition, checkpoint number, segment, tiles)``. Each
    (origin, segment) applies checkpoint numbers in increasing order only, so a
    delta shipped twice (re-shipped after a crash) counts once. ``watermark`` is
    the newest tile seen; tiles older than ``window + grace`` behind it expire.
    """

    def __init__(self, window_min: int = 30, grace_min: int = 5) -> None:
        self.window_ms = window_min * MINUTE_MS
        self.grace_ms = grace_min * MINUTE_MS
        self.tiles = FeedbackTiles()
        self.fences: dict[tuple[int, str], int] = {}
        self.watermark = 0
        self.applied = 0
        self.duplicates = 0
        self._version = 0  # bumped by every change of the tiles: the snapshot cache's key
        self._snap: tuple[tuple[int, int], FeedbackSnapshot] | None = None

    def apply(self, origin: int, ckpt: int, segment: str, tiles: Mapping[int, list[int]]) -> bool:
        key = (origin, segment)
        if ckpt <= self.fences.get(key, 0):
            self.duplicates += 1
            return False
        self.fences[key] = ckpt
        self.tiles.merge(segment, tiles)
        self._version += 1
        newest = max(tiles, default=0)
        if newest > self.watermark:
            self.watermark = newest
        self.applied += 1
        return True

    def apply_json(self, obj: Mapping[str, object]) -> bool:
        tiles = {int(k): list(v) for k, v in obj["tiles"].items()}  # type: ignore[union-attr]
        return self.apply(int(obj["origin"]), int(obj["ckpt"]), str(obj["segment"]), tiles)  # type: ignore[arg-type]

    def expire(self) -> int:
        dropped = self.tiles.expire(self.watermark - self.window_ms - self.grace_ms)
        if dropped:
            self._version += 1
        return dropped

    def snapshot(self, now_ms: int | None = None) -> FeedbackSnapshot:
        """Counts per segment over the window ending at ``now_ms`` (default: the watermark).

        Cached until the tiles change: every ``/score`` reads it, deltas arrive once per checkpoint.
        """
        key = (self.watermark if now_ms is None else now_ms, self._version)
        if self._snap is not None and self._snap[0] == key:
            return self._snap[1]
        snap = self.tiles.snapshot(key[0], self.window_ms)
        self._snap = (key, snap)
        return snap


__all__ = [
    "ACTION_SLOT",
    "FeedbackView",
    "FeedbackTiles",
    "MINUTE_MS",
    "TileCodecError",
    "UserCounters",
    "WIDTH",
    "counters_max_ts",
    "counts_of",
    "slot_of",
]
