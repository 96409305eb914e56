"""Byte-level key-value backends, chosen from a URL (as Faust's ``store=``).

``memory://`` gives a private dict; ``memory://NAME`` a process-wide dict that
survives close/reopen (pure tests of recovery); ``rocksdb://`` a rocksdict DB
under the directory the caller names (``rocksdb:///abs/dir`` overrides it).
Writes go through ``write`` only: one atomic batch of puts and deletes.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Iterator

from .exceptions import BackendURLError, StoreClosedError

log = logging.getLogger(__name__)

#: a batch: (key, value) with value None = delete
Batch = Iterable[tuple[bytes, bytes | None]]


class Backend(ABC):
    """A sorted byte map with atomic batch writes."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abstractmethod
    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Items whose key starts with ``prefix``, in key order."""

    @abstractmethod
    def write(self, batch: Batch) -> None:
        """Apply every put/delete of ``batch`` atomically."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def destroy(self) -> None:
        """Close and delete all data."""


class MemoryBackend(Backend):
    """A dict; ``memory://NAME`` instances with the same name share their data."""

    _shared: dict[str, dict[bytes, bytes]] = {}

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._data: dict[bytes, bytes] | None = self._shared.setdefault(name, {}) if name else {}

    def _d(self) -> dict[bytes, bytes]:
        if self._data is None:
            raise StoreClosedError(f"memory store {self.name!r} is closed")
        return self._data

    def get(self, key: bytes) -> bytes | None:
        return self._d().get(key)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        d = self._d()
        for k in sorted(k for k in d if k.startswith(prefix)):
            yield k, d[k]

    def write(self, batch: Batch) -> None:
        d = self._d()
        for k, v in batch:
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v

    def close(self) -> None:
        self._data = None

    def destroy(self) -> None:
        if self.name:
            self._shared.pop(self.name, None)
        self._data = None


class RocksDBBackend(Backend):
    """One rocksdict DB in raw (bytes) mode; a batch is one RocksDB WriteBatch."""

    def __init__(self, path: Path) -> None:
        from rocksdict import Options, Rdict

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self._db: Rdict | None = Rdict(str(self.path), opts)

    def _d(self):  # noqa: ANN202 - rocksdict has no stubs
        if self._db is None:
            raise StoreClosedError(f"RocksDB store {self.path} is closed")
        return self._db

    def get(self, key: bytes) -> bytes | None:
        return self._d().get(key)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        for k, v in self._d().items(from_key=prefix):
            if not k.startswith(prefix):
                break
            yield k, v

    def write(self, batch: Batch) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        for k, v in batch:
            if v is None:
                wb.delete(k)
            else:
                wb.put(k, v)
        self._d().write(wb)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def destroy(self) -> None:
        from rocksdict import Options, Rdict

        self.close()
        Rdict.destroy(str(self.path), Options(raw_mode=True))


def open_backend(url: str, base_dir: Path | str, name: str) -> Backend:
    """Open the backend named by ``url`` for the store ``name`` (e.g. ``p3``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise BackendURLError(f"state backend URL {url!r} needs a scheme: memory:// or rocksdb://")
    if scheme == "memory":
        return MemoryBackend(f"{rest}/{name}" if rest else "")
    if scheme == "rocksdb":
        base = Path(rest) if rest else Path(base_dir)
        return RocksDBBackend(base / f"{name}.rocksdb")
    raise BackendURLError(f"unknown state backend {scheme!r} in {url!r}; use memory:// or rocksdb://")
