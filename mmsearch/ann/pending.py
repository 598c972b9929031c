"""Pending rows: rows searched exactly beside the ANN structure until a merge.

A record upsert must be searchable at once without rebuilding, retraining or even
rewriting the FAISS structure. So :meth:`VectorIndex.add` with ``pending=True`` puts
rows in the refine store only (the next save writes them as one small segment) and
lists their ids as *pending*; :meth:`VectorIndex.remove` with ``lazy=True`` only
tombstones rows in the store (the FAISS structure still holds them, and the exact
re-scoring drops them, as it drops any id the store does not have). A search then
merges the ANN answer with an exact scan of the pending rows. :meth:`VectorIndex.merge_pending`
(an indexing run, ``build-index``, or an upsert once too many rows wait) adds the
pending rows to the FAISS structure and removes the lazily removed ones.

Both id lists live in the manifest's ``meta`` (``pending``, ``lazily_removed``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from mmsearch.ann.store import VectorStore, top_k

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

#: A merge is due past this many pending or lazily removed rows (and this fraction of the index).
MERGE_MIN_ROWS = 20_000
MERGE_FRACTION = 0.05


def id_list(meta: dict[str, Any], key: str) -> I64:
    return np.asarray(meta.get(key, ()), np.int64)


def store_ids(meta: dict[str, Any], key: str, ids: I64) -> None:
    if len(ids):
        meta[key] = [int(i) for i in np.unique(ids)]
    else:
        meta.pop(key, None)


def clear_waiting(meta: dict[str, Any]) -> None:
    """No row waits any more (the structure was rebuilt from every live row)."""
    meta.pop("pending", None)
    meta.pop("lazily_removed", None)


def with_pending(
    store: VectorStore, queries: F32, pending: I64, k: int, answer: tuple[F32, I64]
) -> tuple[F32, I64]:
    """``answer`` (from the ANN structure) merged with the exact top-``k`` of the pending rows."""
    if not len(pending):
        return answer
    return merge_answers(answer, search_pending(store, queries, pending, k), k)


def merge_due(n_pending: int, n_lazy: int, n_live: int) -> bool:
    """Whether waiting rows should be merged into the ANN structure now."""
    waiting = n_pending + n_lazy
    return waiting > max(MERGE_MIN_ROWS, MERGE_FRACTION * n_live)


def search_pending(store: VectorStore, queries: F32, pending: I64, k: int) -> tuple[F32, I64]:
    """Exact top-``k`` among the pending rows."""
    vectors, found = store.lookup(pending)
    ids = pending[found]
    scores = queries @ vectors[found].T
    return top_k(scores.astype(np.float32), np.broadcast_to(ids, scores.shape).copy(), k)


def merge_answers(a: tuple[F32, I64], b: tuple[F32, I64], k: int) -> tuple[F32, I64]:
    """Top-``k`` of two answers, each id once (a changed row may come from both)."""
    scores = np.concatenate([a[0], b[0]], axis=1)
    ids = np.concatenate([a[1], b[1]], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    out_s = np.full((len(scores), k), -np.inf, np.float32)
    out_i = np.full((len(scores), k), -1, np.int64)
    for row in range(len(scores)):
        valid = ids[row] >= 0
        _, first = np.unique(ids[row][valid], return_index=True)
        keep = np.sort(first)[:k]
        out_s[row, : len(keep)] = scores[row][valid][keep]
        out_i[row, : len(keep)] = ids[row][valid][keep]
    return out_s, out_i
