"""Item content embeddings as the model holds them: a table indexed by hashed item bucket.

The catalogue gives every item a content embedding (``World.catalogue_content``;
in production a content model's vector). ``content_table`` lays them out by the
same hashed bucket the model's item ids use (``features.assembly``: bucket =
``stable_hash(item_id, item_buckets - 1) + 1``, 0 = padding), with one extra
column, the "has content" flag. The table is built at training time and saved
inside the model (a TorchScript buffer), so the serving worker looks the
content up by the ids it already assembles; an item the catalogue did not know
at training time (or the padding bucket) reads a zero vector with flag 0.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from .candidates import item_hashes

log = logging.getLogger(__name__)


def content_table(item_ids: Sequence[str], vectors: np.ndarray, item_buckets: int) -> np.ndarray:
    """``[item_buckets, D + 1]`` float32: row ``b`` = mean content of the items hashed to bucket ``b``, then
    the flag (1.0 where any item fell there, else 0.0; row 0, the padding, stays 0).

    ``vectors`` ``[len(item_ids), D]``. Items sharing a bucket (hash collisions) share their mean.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if len(item_ids) != len(vectors):
        raise ValueError(f"{len(item_ids)} item ids but {len(vectors)} content vectors")
    buckets = item_hashes(list(item_ids), item_buckets - 1) + 1
    d = vectors.shape[1]
    table = np.zeros((item_buckets, d + 1))
    np.add.at(table[:, :d], buckets, vectors)
    count = np.bincount(buckets, minlength=item_buckets).astype(np.float64)
    seen = count > 0
    table[seen, :d] /= count[seen, None]
    table[seen, d] = 1.0
    collided = int((count > 1).sum())
    if collided:
        log.info("content table: %d of %d buckets hold more than one item (their mean)", collided, int(seen.sum()))
    return table.astype(np.float32)


__all__ = ["content_table"]
