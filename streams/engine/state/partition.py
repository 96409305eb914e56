"""One partition's state: named stores as key prefixes of one backend, plus metadata.

All stores of a partition live in one DB so that a checkpoint (every changed
key of every store, the processed source offsets and the changelog position)
is one atomic write: after a crash the DB holds either the whole checkpoint
or none of it. The metadata's source offsets are the processing fence: input
at or below them is already in the state and must be skipped on replay.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

import orjson

from streams.engine.state.backend import Backend, Batch

log = logging.getLogger(__name__)

META_KEY = b"\x00meta"
_SEP = b"\x01"


@dataclass(frozen=True)
class StoreSpec:
    """A named store of a partition (``user_sequences``, ``pending_requests``...)."""

    name: str
    prefix: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.name.encode() + _SEP)

    def full_key(self, key: str) -> bytes:
        return self.prefix + key.encode()


@dataclass
class Meta:
    """What a checkpoint records beside the data.

    ``offsets``: topic -> last processed offset of this partition (the fence).
    ``ckpt``: checkpoint sequence number (also the id of the outbox delta).
    ``changelog_offset``: offset of this checkpoint's marker in the changelog.
    ``outbox``: output that must be shipped after the commit (feedback deltas).
    ``extra``: watermarks and counters of the processors.
    """

    offsets: dict[str, int] = field(default_factory=dict)
    ckpt: int = 0
    changelog_offset: int = -1
    outbox: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        """Compact JSON, keys sorted (orjson: the outbox's feedback delta made json.dumps ~2 % of the engine)."""
        return orjson.dumps({"changelog_offset": self.changelog_offset, "ckpt": self.ckpt, "extra": self.extra,
                             "offsets": self.offsets, "outbox": self.outbox}, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def decode(cls, raw: bytes | None) -> "Meta":
        if not raw:
            return cls()
        obj = json.loads(raw)
        return cls(
            offsets={k: int(v) for k, v in obj.get("offsets", {}).items()},
            ckpt=int(obj.get("ckpt", 0)),
            changelog_offset=int(obj.get("changelog_offset", -1)),
            outbox=obj.get("outbox") or {},
            extra=obj.get("extra") or {},
        )


class PartitionState:
    """The backend of one partition with its stores and committed metadata."""

    def __init__(self, backend: Backend, partition: int) -> None:
        self.backend = backend
        self.partition = partition
        self.meta = Meta.decode(backend.get(META_KEY))

    def get(self, full_key: bytes) -> bytes | None:
        return self.backend.get(full_key)

    def items(self, store: StoreSpec) -> Iterator[tuple[str, bytes]]:
        n = len(store.prefix)
        for k, v in self.backend.items(store.prefix):
            yield k[n:].decode(), v

    def commit(self, changes: Batch, meta: Meta) -> None:
        """Write ``changes`` and ``meta`` in one atomic batch; ``meta`` becomes current."""
        batch = list(changes)
        batch.append((META_KEY, meta.encode()))
        self.backend.write(batch)
        self.meta = meta

    def close(self) -> None:
        self.backend.close()
