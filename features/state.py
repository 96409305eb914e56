"""Plain value types for stored state and score requests.

These are the seams between ``streams/`` (which keeps the state in RocksDB
tables), ``features/assembly`` (which turns state + request into model inputs
and calibration features) and ``scorer/`` (which scores). No I/O here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Mapping

from .events import ACTIONS


def stable_hash(value: str, buckets: int) -> int:
    """A process-independent hash of ``value`` into ``[0, buckets)`` (crc32)."""
    return zlib.crc32(value.encode("utf-8")) % buckets


@dataclass(frozen=True, slots=True)
class SeqAction:
    """One entry of a user's real-time action sequence."""

    item_id: str
    action: str  # one of ACTIONS
    ts: int  # epoch ms, event time
    surface: str
    item_type: str  # organic | video
    dwell_ms: int = 0


@dataclass(frozen=True, slots=True)
class Counts:
    """Impressions and per-action counts over some window."""

    impressions: int = 0
    actions: Mapping[str, int] = field(default_factory=dict)

    def rate(self, action: str, prior: float = 0.0, prior_weight: float = 0.0) -> float:
        """Smoothed rate ``(actions + prior*w) / (impressions + w)``; ``prior`` when empty."""
        denom = self.impressions + prior_weight
        if denom <= 0:
            return prior
        return (self.actions.get(action, 0) + prior * prior_weight) / denom


@dataclass(frozen=True, slots=True)
class UserState:
    """What the stream tables know about one user at read time."""

    user_id: str
    actions: tuple[SeqAction, ...] = ()  # oldest first, event-time order
    counts_3h: Counts = Counts()
    counts_1d: Counts = Counts()
    #: when ``actions`` holds only the newest entries (a score process decodes what the model reads): all of them
    history_len: int | None = None
    #: when ``actions`` was cut to the newest: the items hidden over the whole history, newest first
    #: (``features.seqcodec.EncodedUserState.decode`` reads them off the stored columns)
    hidden: tuple[str, ...] | None = None
    #: how far the tables were behind their input when read (ms; 0 = read to the end): what was produced
    #: since is not in this state yet (the consistency check counts it as in flight)
    behind_ms: int = 0

    def hidden_items(self, limit: int) -> tuple[str, ...]:
        """The items the user hid, newest first, at most ``limit``, over the whole stored history (the
        long-term hide profile: a user's unwanted topic shows in every hide, not only in the last few actions)."""
        if self.hidden is not None:
            return self.hidden[:limit]
        out: list[str] = []
        for a in reversed(self.actions):
            if a.action == "hide":
                out.append(a.item_id)
                if len(out) >= limit:
                    break
        return tuple(out)

    @property
    def n_actions(self) -> int:
        """Actions in the user's history (``history_len`` when ``actions`` was cut to the newest)."""
        return len(self.actions) if self.history_len is None else self.history_len


def segment_keys(country: str, gender: str) -> tuple[str, str, str]:
    """Feedback-loop segment keys for a request: overall, country, gender x country."""
    return ("all", f"c:{country}", f"gc:{gender}:{country}")


@dataclass(frozen=True, slots=True)
class FeedbackSnapshot:
    """30-minute feedback-loop counts per segment key (see ``segment_keys``)."""

    segments: Mapping[str, Counts] = field(default_factory=dict)

    def get(self, key: str) -> Counts:
        return self.segments.get(key, Counts())


@dataclass(frozen=True, slots=True)
class ScoreContext:
    """The request context a feed server sends with a score call."""

    surface: str
    country: str
    gender: str
    app_type: str
    device_type: str
    ts: int  # epoch ms of the request
    query_item_id: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """One candidate item to score."""

    item_id: str
    item_type: str  # organic | video
    position: int = 0
    features: Mapping[str, float] = field(default_factory=dict)


__all__ = [
    "ACTIONS",
    "Candidate",
    "Counts",
    "FeedbackSnapshot",
    "ScoreContext",
    "SeqAction",
    "UserState",
    "segment_keys",
    "stable_hash",
]
