"""Errors of the state layer, under one root; messages say what to do."""

from __future__ import annotations


class StateError(Exception):
    """Root of every state-layer error."""


class BackendURLError(StateError, ValueError):
    """A state backend URL that is not ``memory://[name]`` or ``rocksdb://[path]``."""


class StoreClosedError(StateError):
    """The partition's store was used after ``close()``; reopen the partition first."""


class TransactionStateError(StateError):
    """A transaction was used out of order (e.g. written after it was prepared)."""


class ChangelogError(StateError):
    """The changelog could not be read or written; the worker must restart the partition."""


class ChangelogResetError(ChangelogError):
    """The changelog no longer holds what this worker's local state says it wrote.

    Raised when the changelog partition ends at or below the local state's
    marker, or when the record at the marker's offset is not that marker: the
    broker lost the changelog (an embedded broker restarted with memory
    storage, a topic deleted and re-created). ``marker`` is the offset of the
    marker this call wrote, when it wrote one (a checkpoint), else -1.
    """

    def __init__(self, message: str, *, topic: str, partition: int, found: int, expected: int,
                 marker: int = -1) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.found = found
        self.expected = expected
        self.marker = marker


class BrokerResetError(StateError):
    """The broker lost data this worker's state depends on and ``on_broker_reset`` is ``fail``."""


class TopologyError(StateError):
    """An input topic's partition count differs from the configured one (auto-created after a restart?)."""
