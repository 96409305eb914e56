"""A user's last N actions: an event-time ordered, deduplicated, bounded sequence.

Stored as one compact binary blob per user (no JSON per action): a version
byte, the entry count, then columns: ``ts`` (int64 ms), ``eid`` (uint64 hash
of the event id, for dedup), ``dwell_ms`` (uint32), ``action`` and
``item_type`` (one byte each, indexes into ``ACTIONS`` / ``ITEM_TYPES``), and
the ``item_id`` and ``surface`` strings joined by ``\\n`` (ids can't contain
it). Columnar arrays decode with ``array.frombytes`` and ``bytes.split``, so a
256-entry sequence round-trips in a few microseconds.

Ordering is ``(ts, eid)``; inserting is order-independent: the final content
is always the top N by ``(ts, eid)`` of all distinct events ever inserted
(an evicted event that comes back sorts below the retained ones and is
evicted again).
"""

from __future__ import annotations

import struct
import zlib
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from typing import Final, Iterator

from .events import ACTIONS, ITEM_TYPES
from .state import Counts, SeqAction, UserState

VERSION: Final[int] = 1
_HEADER = struct.Struct("<BI")
_ACTION_IDX: Final[dict[str, int]] = {a: i for i, a in enumerate(ACTIONS)}
_TYPE_IDX: Final[dict[str, int]] = {t: i for i, t in enumerate(ITEM_TYPES)}
#: item type of an engagement whose impression was not (yet) joined
UNKNOWN_ITEM_TYPE: Final[str] = "unknown"
_UNKNOWN_IDX: Final[int] = 255
_TYPE_NAME: Final[dict[int, str]] = {**{i: t for i, t in enumerate(ITEM_TYPES)}, _UNKNOWN_IDX: UNKNOWN_ITEM_TYPE}


#: results of ``ActionSequence.add``
ADDED: Final[int] = 1
DUPLICATE: Final[int] = 0
TOO_OLD: Final[int] = -1


class SeqCodecError(ValueError):
    """A stored sequence blob is corrupt or of an unknown version."""


def event_id_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (crc32 and adler32 side by side)."""
    b = event_id.encode("utf-8")
    return (zlib.crc32(b) << 32) | zlib.adler32(b)


class ActionSequence:
    """Mutable, bounded, ordered sequence of one user's actions (columns in lists)."""

    __slots__ = ("maxlen", "ts", "eid", "dwell", "action", "item_type", "item_id", "surface")

    def __init__(self, maxlen: int = 256) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        self.maxlen = maxlen
        self.ts: list[int] = []
        self.eid: list[int] = []
        self.dwell: list[int] = []
        self.action: list[int] = []
        self.item_type: list[int] = []
        self.item_id: list[str] = []
        self.surface: list[str] = []

    def __len__(self) -> int:
        return len(self.ts)

    def add(
        self,
        *,
        event_id: str,
        item_id: str,
        action: str,
        ts: int,
        surface: str,
        item_type: str,
        dwell_ms: int = 0,
    ) -> int:
        """Insert one action in event-time order: ``ADDED``, ``DUPLICATE`` or ``TOO_OLD``."""
        eid = event_id_hash(event_id)
        tsl = self.ts
        n = len(tsl)
        if n and (ts < tsl[-1] or (ts == tsl[-1] and eid < self.eid[-1])):
            pos = bisect_right(tsl, ts)
            # ties on ts: order by eid; also where a duplicate would sit
            lo = pos
            while lo > 0 and tsl[lo - 1] == ts:
                lo -= 1
            for j in range(lo, pos):
                if self.eid[j] == eid:
                    return DUPLICATE
            while pos > lo and self.eid[pos - 1] > eid:
                pos -= 1
        else:
            pos = n
            if n and ts == tsl[-1]:
                j = n - 1
                while j >= 0 and tsl[j] == ts:
                    if self.eid[j] == eid:
                        return DUPLICATE
                    j -= 1
        if n >= self.maxlen and pos == 0:
            return TOO_OLD  # older than everything retained: evicted at once
        tsl.insert(pos, ts)
        self.eid.insert(pos, eid)
        self.dwell.insert(pos, dwell_ms or 0)
        self.action.insert(pos, _ACTION_IDX[action])
        self.item_type.insert(pos, _TYPE_IDX.get(item_type, _UNKNOWN_IDX))
        self.item_id.insert(pos, item_id)
        self.surface.insert(pos, surface)
        extra = len(tsl) - self.maxlen
        if extra > 0:
            for col in (tsl, self.eid, self.dwell, self.action, self.item_type, self.item_id, self.surface):
                del col[:extra]
        return ADDED

    def drop_before(self, ts: int) -> int:
        """Remove the entries older than ``ts`` (retention); returns how many were removed."""
        tsl = self.ts
        cut = bisect_right(tsl, ts - 1)
        if cut:
            for col in (tsl, self.eid, self.dwell, self.action, self.item_type, self.item_id, self.surface):
                del col[:cut]
        return cut

    def set_context(self, event_id: str, surface: str, item_type: str) -> bool:
        """Fill in the impression context (surface, item type) of a retained entry."""
        eid = event_id_hash(event_id)
        try:
            i = self.eid.index(eid)
        except ValueError:
            return False
        self.surface[i] = surface
        self.item_type[i] = _TYPE_IDX.get(item_type, _UNKNOWN_IDX)
        return True

    def actions(self) -> tuple[SeqAction, ...]:
        """The entries as ``SeqAction`` values, oldest first."""
        return tuple(self._iter())

    def _iter(self, start: int = 0) -> Iterator[SeqAction]:
        for i in range(start, len(self.ts)):
            yield SeqAction(
                item_id=self.item_id[i],
                action=ACTIONS[self.action[i]],
                ts=self.ts[i],
                surface=self.surface[i],
                item_type=_TYPE_NAME[self.item_type[i]],
                dwell_ms=self.dwell[i],
            )

    def encode(self) -> bytes:
        return encode(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActionSequence):
            return NotImplemented
        return self.ts == other.ts and self.eid == other.eid and self.actions() == other.actions()

    def __repr__(self) -> str:
        return f"ActionSequence(len={len(self)}, maxlen={self.maxlen})"


def encode(seq: ActionSequence) -> bytes:
    """Serialize to the compact columnar blob (see module doc)."""
    n = len(seq.ts)
    parts = [
        _HEADER.pack(VERSION, n),
        array("q", seq.ts).tobytes(),
        array("Q", seq.eid).tobytes(),
        array("I", seq.dwell).tobytes(),
        bytes(seq.action),
        bytes(seq.item_type),
        "\n".join(seq.item_id).encode("utf-8"),
        b"\x00",
        "\n".join(seq.surface).encode("utf-8"),
    ]
    return b"".join(parts)


def first_ts(blob: bytes) -> int:
    """The oldest action's time of an encoded sequence, without decoding it (max int64 when empty)."""
    version, n = _HEADER.unpack_from(blob, 0)
    if version != VERSION:
        raise SeqCodecError(f"unknown sequence codec version {version}; expected {VERSION}")
    if not n:
        return (1 << 63) - 1
    return int(struct.unpack_from("<q", blob, _HEADER.size)[0])


def decode(blob: bytes, maxlen: int = 256) -> ActionSequence:
    """Parse a blob from ``encode``; keeps at most the newest ``maxlen`` entries."""
    try:
        version, n = _HEADER.unpack_from(blob, 0)
    except struct.error as exc:
        raise SeqCodecError(f"sequence blob too short ({len(blob)} bytes)") from exc
    if version != VERSION:
        raise SeqCodecError(f"unknown sequence codec version {version}; expected {VERSION}")
    off = _HEADER.size
    seq = ActionSequence(maxlen)
    try:
        ts = array("q")
        ts.frombytes(blob[off : off + 8 * n])
        off += 8 * n
        eid = array("Q")
        eid.frombytes(blob[off : off + 8 * n])
        off += 8 * n
        dwell = array("I")
        dwell.frombytes(blob[off : off + 4 * n])
        off += 4 * n
        action = list(blob[off : off + n])
        off += n
        item_type = list(blob[off : off + n])
        off += n
        ids_raw, _, surf_raw = blob[off:].partition(b"\x00")
        item_id = ids_raw.decode("utf-8").split("\n") if n else []
        surface = surf_raw.decode("utf-8").split("\n") if n else []
    except (ValueError, UnicodeDecodeError) as exc:
        raise SeqCodecError(f"corrupt sequence blob: {exc}") from exc
    if not (len(ts) == len(eid) == len(dwell) == len(action) == len(item_type) == len(item_id) == len(surface) == n):
        raise SeqCodecError(f"corrupt sequence blob: column lengths disagree with count {n}")
    cut = max(0, n - maxlen)
    seq.ts = ts.tolist()[cut:]
    seq.eid = eid.tolist()[cut:]
    seq.dwell = dwell.tolist()[cut:]
    seq.action = action[cut:]
    seq.item_type = item_type[cut:]
    seq.item_id = item_id[cut:]
    seq.surface = surface[cut:]
    return seq


@dataclass(frozen=True, slots=True)
class EncodedUserState:
    """A user's state as it crosses to another process: the sequence as its blob, the counters as they are.

    The blob (``encode``) is a byte copy taken at read time, so the live
    sequence can go on changing while this is in flight; ``decode`` turns it
    back into the ``UserState`` the scorer reads.
    """

    user_id: str
    sequence: bytes = b""  # an ``encode`` blob; empty = no history
    counts_3h: Counts = Counts()
    counts_1d: Counts = Counts()
    #: how far the tables were behind their input when read (``UserState.behind_ms``)
    behind_ms: int = 0

    def decode(self, newest: int | None = None, hidden: int | None = None) -> UserState:
        """The ``UserState``; with ``newest``, only that many of the newest actions become objects
        (``history_len`` then counts them all): the score path reads ``seq_len`` of a 256-action history.
        The hidden items of the whole history (the newest ``hidden`` of them; all when None) then ride
        along as ``UserState.hidden``, read off the action column without making objects."""
        if not self.sequence:
            return UserState(self.user_id, (), self.counts_3h, self.counts_1d, None if newest is None else 0,
                             None if newest is None else (), self.behind_ms)
        seq = decode(self.sequence, maxlen=1 << 30)
        if newest is None:
            return UserState(self.user_id, seq.actions(), self.counts_3h, self.counts_1d, behind_ms=self.behind_ms)
        n = len(seq)
        hide, act, ids = _ACTION_IDX["hide"], seq.action, seq.item_id
        out: list[str] = []
        limit = n if hidden is None else hidden
        i = n - 1
        while i >= 0 and len(out) < limit:
            if act[i] == hide:
                out.append(ids[i])
            i -= 1
        cut = max(0, n - newest)
        return UserState(self.user_id, tuple(seq._iter(cut)), self.counts_3h, self.counts_1d, n, tuple(out),
                         self.behind_ms)


__all__ = ["ADDED", "DUPLICATE", "TOO_OLD", "ActionSequence", "EncodedUserState", "SeqCodecError", "UNKNOWN_ITEM_TYPE", "decode", "encode", "event_id_hash",
           "first_ts"]
