"""Vector leg: the nearest items of each kind from its FAISS index (IVF-PQ or flat).

One leg table per kind searched (``leg`` = ``vector:image`` / ``vector:text``), so
that fusion can rank kinds fairly: a caption's text→text cosine is higher than any
text→image cosine and would otherwise crowd images out of a mixed answer.
With ``allowed_ids`` (a metadata filter) only those ids are searched, so ``depth``
hits come back whenever at least ``depth`` items match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from mmsearch.search.types import LEG_SCHEMA


def leg_table(
    ids: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], kind: str, leg: str
) -> pa.Table:
    """A leg table for hits already sorted best first."""
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(np.asarray(ids, np.int64)),
            "kind": pa.array([kind] * n, pa.string()),
            "score": pa.array(np.asarray(scores, np.float32)),
            "rank": pa.array(np.arange(1, n + 1, dtype=np.int32)),
            "leg": pa.array([leg] * n, pa.string()),
        },
        schema=LEG_SCHEMA,
    )


def vector_legs(
    ann: Mapping[str, Any],
    vector: npt.NDArray[np.float32],
    depth: int,
    kinds: Sequence[str],
    *,
    allowed_ids: npt.NDArray[np.int64] | None = None,
    query_kind: str | None = None,
    exact: bool = False,
    nprobe: int | None = None,
    refine: int | None = None,
) -> list[pa.Table]:
    """One leg table per kind in ``kinds`` that has an index: top ``depth`` by cosine.

    ``query_kind`` ("text", "image" or "mixed") picks the ANN parameters tuned for
    cross-modal queries when it differs from the kind searched.
    """
    from mmsearch.ann.subset import search_subset

    q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    legs = []
    for kind in kinds:
        index = ann.get(kind)
        if index is None:
            continue
        if allowed_ids is not None:
            scores, ids = search_subset(index, q, depth, allowed_ids)
        else:
            profile = "cross" if query_kind is not None and query_kind != kind else None
            scores, ids = index.search(
                q, depth, nprobe=nprobe, refine=refine, exact=exact, profile=profile
            )
        keep = ids[0] >= 0
        legs.append(leg_table(ids[0][keep], scores[0][keep], kind, f"vector:{kind}"))
    return legs
