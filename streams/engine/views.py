"""The read API of the stream tables, for the scorer and the RPC layer.

    views = StreamViews(engine, feedback)  # built by streams.worker.install_tables
    views.get_user_state("u42")            # UserState of a user on a local partition
    views.get_encoded_user_state("u42")    # the same with the sequence as its blob (for the score process)
    views.get_feedback_snapshot()          # FeedbackSnapshot of the global 30-minute view

``get_user_state`` reads the partition's open transaction first (read your
own writes), so an event is visible as soon as its batch is processed, not
only after the next checkpoint. It raises ``NotLocalError`` (with the owning
partition) when another worker owns the user: route the request there
(``partition_for`` is the producers' murmur2 partitioner).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from features.seqcodec import EncodedUserState
from features.state import FeedbackSnapshot, UserState

if TYPE_CHECKING:  # pragma: no cover
    from streams.engine.feedback_view import FeedbackViewService
    from streams.engine.engine import TableEngine
    from streams.engine.tables import PartitionTables


class NotLocalError(LookupError):
    """The user's partition is not owned by this worker; send the request to its owner."""

    def __init__(self, user_id: str, partition: int) -> None:
        super().__init__(f"user {user_id!r} lives on partition {partition}, which this worker does not own")
        self.user_id = user_id
        self.partition = partition


def partition_for(user_id: str, partitions: int) -> int:
    """The partition a ``user_id``-keyed record goes to (Kafka's default murmur2 partitioner)."""
    from aiokafka.partitioner import murmur2

    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


class StreamViews:
    """Reads over one worker's table engine and its feedback view."""

    def __init__(self, engine: "TableEngine", feedback: "FeedbackViewService | None") -> None:
        self.engine = engine
        self.feedback = feedback

    def _local(self, user_id: str) -> "PartitionTables":
        p = partition_for(user_id, self.engine.settings.partitions)
        tables = self.engine.tables.get(p)
        if tables is None:
            raise NotLocalError(user_id, p)
        return tables

    def get_user_state(self, user_id: str, now_ms: int | None = None) -> UserState:
        return self._local(user_id).user_state(user_id, now_ms)

    def behind_ms(self, user_id: str) -> int:
        """How far the tables of the user's partition are behind their input (``TableEngine.behind_ms``)."""
        return self.engine.behind_ms(partition_for(user_id, self.engine.settings.partitions))

    def get_encoded_user_state(self, user_id: str, now_ms: int | None = None) -> EncodedUserState:
        """``get_user_state`` with the sequence as its blob, to hand to another process."""
        return self._local(user_id).encoded_user_state(user_id, now_ms)

    def get_feedback_snapshot(self, now_ms: int | None = None) -> FeedbackSnapshot:
        if self.feedback is None:
            return FeedbackSnapshot()
        return self.feedback.view.snapshot(now_ms)

    def stats(self) -> dict[str, Any]:
        out = self.engine.stats()
        if self.feedback is not None:
            v = self.feedback.view
            out["feedback"] = {"watermark": v.watermark, "applied": v.applied, "duplicates": v.duplicates,
                               "segments": len(v.tiles.tiles)}
        return out
