"""Search restricted to a set of ids (metadata filters).

Selective filters (up to ``EXACT_SUBSET_MAX`` ids) are answered exactly from the
stored float vectors — exact and cheap for small sets. Broad filters ask the ANN index
for enough extra candidates to expect ``k`` survivors, and fall back to the exact
subset scan when too few survive, so a filter never returns fewer hits than exist.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from mmsearch.ann.store import top_k

if TYPE_CHECKING:
    from mmsearch.ann.index import VectorIndex

EXACT_SUBSET_MAX = 200_000
_CHUNK = 65_536


def search_subset(
    index: VectorIndex, queries: npt.NDArray[np.float32], k: int, allowed_ids: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Top-``k`` among ``allowed_ids`` (sorted or not); pads with (-inf, -1)."""
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64))
    n = len(index)
    if len(allowed) == 0:
        return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
    if len(allowed) > EXACT_SUBSET_MAX and n > 0:
        widen = min(n, k * math.ceil(2 * n / len(allowed)))
        scores, ids = index.search(q, widen)
        keep = np.isin(ids, allowed)
        if (keep.sum(axis=1) >= k).all():
            scores = np.where(keep, scores, -np.inf).astype(np.float32)
            return top_k(scores, np.where(keep, ids, -1), k)
    return _exact_subset(index, q, k, allowed)


def _exact_subset(
    index: VectorIndex, q: npt.NDArray[np.float32], k: int, allowed: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.full((len(q), 0), -1, np.int64)
    for start in range(0, len(allowed), _CHUNK):
        part = allowed[start : start + _CHUNK]
        vecs, found = index.lookup(part)
        part, vecs = part[found], vecs[found]
        if len(part) == 0:
            continue
        scores = (q @ vecs.T).astype(np.float32)
        ids = np.broadcast_to(part, scores.shape)
        best_s = np.concatenate([best_s, scores], axis=1)
        best_i = np.concatenate([best_i, ids], axis=1)
        best_s, best_i = top_k(best_s, best_i, k)
    return top_k(best_s, best_i, k)
