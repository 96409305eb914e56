"""The changelog format and its replay (pure; the Kafka I/O is in ``recovery``).

One changelog topic partition per state partition. A checkpoint writes:

1. one record per changed key (key = ``store\\x01key``, value = bytes, or null
   for a delete), in any order;
2. then one *marker* record (key ``\\x00ckpt``, value = the checkpoint's
   ``Meta`` JSON: processed source offsets, checkpoint number, outbox).

Replay applies records only when a marker follows them: a checkpoint whose
marker never made it (the worker died while writing it) is never applied,
not even in part. Its records are the *tail*; recovery rewrites those keys'
committed values under a new marker (``repair``), so a compacted changelog
(only the newest record per key survives) still replays to the right state.
Fence records (key ``\\x00fence``) let a recovering worker find the true end
of the partition without trusting the broker's end offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from streams.engine.state.partition import Meta

MARKER_KEY = b"\x00ckpt"
FENCE_KEY = b"\x00fence"


def changelog_topic(app_id: str) -> str:
    """The changelog topic of an app's state (one partition per source partition)."""
    return f"{app_id}-state-changelog"


@dataclass
class Checkpoint:
    """A complete checkpoint found in the changelog: its changes and its marker's meta."""

    changes: list[tuple[bytes, bytes | None]]
    meta: Meta


@dataclass
class ChangelogReplay:
    """Feed changelog records in offset order; collect complete checkpoints."""

    pending: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    fences: list[bytes] = field(default_factory=list)

    def feed(self, offset: int, key: bytes | None, value: bytes | None) -> Checkpoint | None:
        """One record; returns a ``Checkpoint`` when ``key`` is a marker."""
        if key == MARKER_KEY:
            meta = Meta.decode(value)
            meta.changelog_offset = offset
            cp = Checkpoint(self.pending, meta)
            self.pending = []
            return cp
        if key == FENCE_KEY:
            self.fences.append(value or b"")
            return None
        if key is None:
            return None
        self.pending.append((key, value))
        return None

    def feed_all(self, records: Iterable[tuple[int, bytes | None, bytes | None]]) -> list[Checkpoint]:
        out = []
        for off, k, v in records:
            cp = self.feed(off, k, v)
            if cp is not None:
                out.append(cp)
        return out

    def tail_keys(self) -> list[bytes]:
        """Keys written after the last marker (an unfinished checkpoint)."""
        seen: dict[bytes, None] = {}
        for k, _ in self.pending:
            seen[k] = None
        return list(seen)
