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
