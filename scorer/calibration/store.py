"""Calibrator sets and online state on disk, written atomically (temp file + rename).

Layout under ``root``: ``<model_version>/calibrators.json`` (the serving set) and
``<model_version>/online.json`` (FTRL state). The streams side keeps the same
bytes in its ``calibrators`` table; this store serves the CLI and single-process use.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .calset import CalibratorSet
from .errors import CalibratorStateError

log = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class CalibratorStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _dir(self, model_version: str) -> Path:
        if not _SAFE.match(model_version) or model_version.startswith("."):
            raise CalibratorStateError(f"model version {model_version!r} is not a safe directory name")
        return self.root / model_version

    def save(self, cs: CalibratorSet) -> Path:
        path = self._dir(cs.model_version) / "calibrators.json"
        atomic_write(path, cs.to_bytes())
        return path

    def load(self, model_version: str) -> CalibratorSet | None:
        path = self._dir(model_version) / "calibrators.json"
        if not path.exists():
            return None
        return CalibratorSet.from_bytes(path.read_bytes())

    def save_online(self, model_version: str, state: bytes) -> Path:
        path = self._dir(model_version) / "online.json"
        atomic_write(path, state)
        return path

    def load_online(self, model_version: str) -> bytes | None:
        path = self._dir(model_version) / "online.json"
        return path.read_bytes() if path.exists() else None
