"""Re-score stage: exact cosine from the stored vectors, and the rows' columns for the next stages.

Every candidate gets its stored float vector (kept for near-duplicate collapse) and,
when the query has a vector, its exact cosine ``similarity`` — lexical-only hits
included. Then the rows' ``uri, text, metadata`` join the table, which is what a
reranker and the results need.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from mmsearch.search.rows import Rows

#: The rows' columns joined to the candidates.
_JOINED = ("uri", "text", "metadata")


def stored_vectors(
    ann: Mapping[str, Any], ids: npt.NDArray[np.int64], kinds: list[str], dim: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """(vectors, found) of ``ids`` looked up in each kind's ANN store; missing rows are zero."""
    vectors = np.zeros((len(ids), dim), np.float32)
    found = np.zeros(len(ids), bool)
    kind_arr = np.asarray(kinds, dtype=object)
    for kind, index in ann.items():
        pick = np.flatnonzero(kind_arr == kind)
        if len(pick) == 0:
            continue
        vecs, ok = index.lookup(ids[pick])
        vectors[pick] = vecs
        found[pick] = ok
    return vectors, found


def rescore(
    candidates: pa.Table,
    vector: npt.NDArray[np.float32] | None,
    ann: Mapping[str, Any],
    rows: Rows,
    dim: int,
) -> pa.Table:
    """``candidates`` (rows not in the snapshot dropped) with ``similarity``, ``vector``, ``uri``, ``text``, ``metadata``."""
    ids = candidates.column("id").to_numpy().astype(np.int64)
    vectors, found = stored_vectors(ann, ids, candidates.column("kind").to_pylist(), dim)
    row_table, in_rows = rows.take(ids, columns=_JOINED)
    keep = found & in_rows
    if not keep.all():
        candidates = candidates.filter(pa.array(keep))
        vectors = vectors[keep]
        row_table, _ = rows.take(ids[keep], columns=_JOINED)
    if vector is not None and len(vectors):
        sims = (vectors @ np.asarray(vector, np.float32)).astype(np.float32)
        candidates = candidates.set_column(
            candidates.schema.get_field_index("similarity"), "similarity", pa.array(sims)
        )
    flat = pa.array(vectors.reshape(-1))
    candidates = candidates.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, dim))
    for name in _JOINED:
        candidates = candidates.append_column(name, row_table.column(name))
    return candidates
