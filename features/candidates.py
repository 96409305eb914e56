"""Candidates as columns: what assembly and the calibration features read of N candidates, one array each.

The score path builds these straight from the request (``features.rpc``), training and
replay from their ``Candidate`` lists (``CandidateColumns.of``); both then go through the
same vectorized assembly, so online and offline features cannot drift apart. No
per-candidate Python objects: an item id list and numpy arrays.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from itertools import repeat
from typing import Iterable, Mapping, Sequence

import numpy as np

from .events import ACTIONS
from .state import Candidate, stable_hash

log = logging.getLogger(__name__)

#: ``Candidate.features`` keys the features read (the rest are carried, never read)
CTR_PRIOR_KEY = "item_ctr_prior"
ITEM_IMPRESSIONS_KEY = "item_impressions_1d"
ITEM_ACTION_KEY_FMT = "item_actions_1d:{action}"
ITEM_ACTION_KEYS: tuple[str, ...] = tuple(ITEM_ACTION_KEY_FMT.format(action=a) for a in ACTIONS)
#: item type codes (0 = unknown), as the model's ``cand_type`` input
TYPE_CODE: Mapping[str, int] = {"organic": 1, "video": 2}
TYPE_NAME: Mapping[int, str] = {0: "unknown", **{v: k for k, v in TYPE_CODE.items()}}

_NONE: Mapping[str, float] = {}

_HASH_CACHE: dict[int, dict[str, int]] = {}
_HASH_CACHE_MAX = 200_000


def item_hashes(ids: Sequence[str], buckets: int) -> np.ndarray:
    """``stable_hash(id, buckets)`` of every id, int64 ``[N]``, from a bounded per-process cache.

    A ``stable_hash`` (crc32) per id costs ~1 us (500 a request); a dict hit ~50 ns.
    """
    cache = _HASH_CACHE.setdefault(buckets, {})
    try:
        return np.fromiter(map(cache.__getitem__, ids), dtype=np.int64, count=len(ids))
    except KeyError:
        if len(cache) > _HASH_CACHE_MAX:
            cache.clear()
        for i in ids:
            if i not in cache:
                cache[i] = stable_hash(i, buckets)
        return np.fromiter(map(cache.__getitem__, ids), dtype=np.int64, count=len(ids))


@dataclass(frozen=True)
class CandidateColumns:
    """N candidates, column by column.

    * ``item_ids``       list of N item ids
    * ``type_code``      int64 ``[N]``: 1 organic, 2 video, 0 unknown
    * ``position``       int64 ``[N]``
    * ``has_ctr_prior``  bool ``[N]``, ``ctr_prior`` float64 ``[N]`` (0 where absent; a NaN value counts as absent)
    * ``has_counts``     bool ``[N]`` (``item_impressions_1d`` given), ``impressions`` float64 ``[N]``,
      ``actions`` float64 ``[N, T]`` (``item_actions_1d:<action>``, 0 where absent)
    """

    item_ids: list[str]
    type_code: np.ndarray
    position: np.ndarray
    has_ctr_prior: np.ndarray
    ctr_prior: np.ndarray
    has_counts: np.ndarray
    impressions: np.ndarray
    actions: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def is_video(self) -> np.ndarray:
        return self.type_code == TYPE_CODE["video"]

    @staticmethod
    def build(item_ids: list[str], item_types: Iterable[str], positions: Iterable[int],
              features: Sequence[Mapping[str, float] | None]) -> "CandidateColumns":
        """From column lists (``features``: each candidate's mapping, or None)."""
        n = len(item_ids)
        type_code = np.fromiter(map(TYPE_CODE.get, item_types, repeat(0, n)), dtype=np.int64, count=n)
        position = np.fromiter(positions, dtype=np.int64, count=n)
        fs = [f or _NONE for f in features]
        prior = np.fromiter([f.get(CTR_PRIOR_KEY, math.nan) for f in fs], dtype=np.float64, count=n)  # NaN: absent
        has_prior = ~np.isnan(prior)
        imps = np.fromiter([f.get(ITEM_IMPRESSIONS_KEY, math.nan) for f in fs], dtype=np.float64, count=n)
        has_counts = ~np.isnan(imps)
        acts = np.zeros((n, len(ACTIONS)), dtype=np.float64)
        for i in np.flatnonzero(has_counts).tolist():  # only candidates that carry item counts
            acts[i] = [fs[i].get(k, 0.0) for k in ITEM_ACTION_KEYS]
        return CandidateColumns(item_ids, type_code, position, has_prior, np.where(has_prior, prior, 0.0), has_counts,
                                np.where(has_counts, imps, 0.0), acts)

    @staticmethod
    def of(candidates: "Sequence[Candidate] | CandidateColumns") -> "CandidateColumns":
        """Columns of a ``Candidate`` list (training, replay, tests); columns pass through."""
        if isinstance(candidates, CandidateColumns):
            return candidates
        return CandidateColumns.build([c.item_id for c in candidates], [c.item_type for c in candidates],
                                      [c.position for c in candidates], [c.features for c in candidates])

    def features_at(self, i: int) -> dict[str, float]:
        """Candidate ``i``'s features as a request carries them: what ``build`` reads back into these columns."""
        out: dict[str, float] = {}
        if self.has_ctr_prior[i]:
            out[CTR_PRIOR_KEY] = float(self.ctr_prior[i])
        if self.has_counts[i]:
            out[ITEM_IMPRESSIONS_KEY] = float(self.impressions[i])
            out.update(zip(ITEM_ACTION_KEYS, self.actions[i].tolist()))
        return out

    def take(self, rows: np.ndarray, position: np.ndarray | None = None) -> "CandidateColumns":
        """The candidates at ``rows``, in that order (at ``position`` when given)."""
        ids = self.item_ids
        return CandidateColumns([ids[i] for i in rows.tolist()], self.type_code[rows],
                                self.position[rows] if position is None else np.asarray(position, dtype=np.int64),
                                self.has_ctr_prior[rows], self.ctr_prior[rows], self.has_counts[rows],
                                self.impressions[rows], self.actions[rows])


__all__ = ["CTR_PRIOR_KEY", "CandidateColumns", "ITEM_ACTION_KEYS", "ITEM_ACTION_KEY_FMT", "ITEM_IMPRESSIONS_KEY",
           "TYPE_CODE", "TYPE_NAME", "item_hashes"]
