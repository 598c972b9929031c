"""Shape stage: cut-offs, near-duplicate collapse, group-by, and the page asked for.

In this order, over candidates sorted best first:

1. ``min_score``: drop hits whose cosine ``similarity`` is below it (or whose
   ``score`` is, for lexical hits without a query vector).
2. ``floors`` (hybrid's calibrated cut-off, per kind): when the lexical legs found
   nothing and no hit beats its kind's chance level (see :mod:`mmsearch.search.calibrate`),
   nothing matches well: the answer is empty (the engine says why).
3. ``dedup``: a hit within that cosine of a better kept hit folds into it (its id
   goes to the better hit's ``duplicates``).
4. ``group_by``: the best hit per value of a metadata key; the others' ids go to its
   ``group``. Hits without the key stay on their own.
5. ``offset`` / ``k``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mmsearch.search.types import Query
from mmsearch.storage.metadata_keys import normalize_metadata


@dataclass
class Shaped:
    """The page of hits, and how many hits there were before paging."""

    table: pa.Table
    groups: list[list[int]]
    duplicates: list[list[int]]
    available: int
    dropped_by_cutoff: int


def _cut(table: pa.Table, threshold: float) -> np.ndarray:
    sim = table.column("similarity").to_numpy(zero_copy_only=False).astype(np.float64)
    score = table.column("score").to_numpy().astype(np.float64)
    value = np.where(np.isnan(sim), score, sim)
    return value >= threshold


def _any_good(table: pa.Table, floors: Mapping[str, float]) -> bool:
    """True when a lexical or exact leg found something, or a hit clears its kind's floor."""
    if any(("lexical" in legs) or ("exact" in legs) for legs in table.column("legs").to_pylist()):
        return True
    sim = table.column("similarity").to_numpy(zero_copy_only=False).astype(np.float64)
    kinds = table.column("kind").to_pylist()
    return any(
        s >= floors.get(k, -np.inf)
        for s, k in zip(np.nan_to_num(sim, nan=-np.inf), kinds, strict=True)
    )


def group_values(table: pa.Table, key: str) -> list[Any]:
    """Each row's value of ``key``: a row column (kind, uri, text) or a metadata key (None when absent)."""
    if key in ("kind", "uri", "text"):
        return table.column(key).to_pylist()
    out = []
    for raw in table.column("metadata").to_pylist():
        value = normalize_metadata(json.loads(raw)).get(key) if raw else None
        out.append(
            value if not isinstance(value, (list, dict)) else json.dumps(value, sort_keys=True)
        )
    return out


def shape(
    candidates: pa.Table, query: Query, *, floors: Mapping[str, float] | None = None
) -> Shaped:
    """Applies the cut-offs, dedup, group-by and paging of ``query``."""
    table = candidates
    before = table.num_rows
    if query.min_score is not None and table.num_rows:
        table = table.filter(pa.array(_cut(table, float(query.min_score))))
    if floors and table.num_rows and not _any_good(table, floors):
        table = table.slice(0, 0)
    dropped = before - table.num_rows
    n = table.num_rows
    heads = list(range(n))
    duplicates: dict[int, list[int]] = {}
    if query.dedup is not None and n:
        vecs = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vecs = np.asarray(vecs, np.float32).reshape(n, -1)
        norms = np.linalg.norm(vecs, axis=1)
        ids = table.column("id").to_pylist()
        kept: list[int] = []
        for i in range(n):
            if norms[i] > 0 and kept:
                sims = vecs[kept] @ vecs[i]
                j = int(np.argmax(sims))
                if sims[j] >= query.dedup:
                    duplicates.setdefault(kept[j], []).append(ids[i])
                    continue
            kept.append(i)
        heads = kept
    groups: dict[int, list[int]] = {}
    if query.group_by is not None:
        group_keys = group_values(table, query.group_by)
        ids = table.column("id").to_pylist()
        head_of: dict[Any, int] = {}
        grouped = []
        for i in heads:
            key = group_keys[i]
            if key is None:
                grouped.append(i)
                continue
            if key in head_of:
                groups.setdefault(head_of[key], []).append(ids[i])
                groups[head_of[key]].extend(duplicates.pop(i, []))
            else:
                head_of[key] = i
                grouped.append(i)
        heads = grouped
    available = len(heads)
    page = heads[query.offset : query.offset + query.k]
    return Shaped(
        table=table.take(pa.array(page, pa.int64())),
        groups=[groups.get(i, []) for i in page],
        duplicates=[duplicates.get(i, []) for i in page],
        available=available,
        dropped_by_cutoff=dropped,
    )
