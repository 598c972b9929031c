"""Fuse stage: leg tables → one candidates table, best first.

* One leg alone keeps its own score (the cosine of a one-kind vector search, BM25
  of a one-kind lexical search), so such queries rank and score as they always did.
* ``rrf`` (default): reciprocal rank fusion, ``Σ 1 / (60 + rank)`` over the legs
  that found an item. Ranks, not raw scores, so BM25 and cosine need no common
  scale, and each kind's leg counts alike (fair ``kind=any`` answers). A kind found by
  fewer legs (images without text get no lexical hits) has its scores scaled to the
  same total leg weight, so kinds interleave by their own ranks.
* ``weighted``: each leg's scores min-max normalised to [0, 1], vector legs weighted
  ``alpha`` and lexical legs ``1 − alpha``, summed.

An exact identifier match (leg ``exact``) adds :data:`EXACT_BOOST`, above anything
the fusions give, so the named item comes first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from mmsearch.search.types import CANDIDATES_SCHEMA, RRF_K

EXACT_BOOST = 1.0


def _normalised(scores: np.ndarray) -> np.ndarray:
    if len(scores) == 0:
        return scores
    lo, hi = float(scores.min()), float(scores.max())
    if hi - lo < 1e-12:
        return np.ones_like(scores)
    return (scores - lo) / (hi - lo)


def _even_out_kinds(
    score: np.ndarray, kinds: np.ndarray, ranked: Sequence[pa.Table], method: str, alpha: float
) -> None:
    """Scales each kind's fused scores to the same total leg weight (in place).

    A kind that lacks a leg (images without any text have no lexical hits) would
    otherwise rank wholly under a kind that two legs found: captions would crowd images
    out of ``kind=any``. Within a kind the order is unchanged; across kinds, items
    interleave by how their own kind's legs ranked them.
    """
    weight: dict[str, float] = {}
    for leg in ranked:
        name = leg.column("leg")[0].as_py()
        w = 1.0 if method != "weighted" else (alpha if name.startswith("vector:") else 1 - alpha)
        kind = leg.column("kind")[0].as_py()
        weight[kind] = weight.get(kind, 0.0) + w
    if len(weight) < 2 or min(weight.values()) <= 0:
        return
    top = max(weight.values())
    for kind, w in weight.items():
        if w < top:
            score[kinds == kind] *= top / w


def fuse(
    legs: Sequence[pa.Table], *, method: str = "rrf", alpha: float = 0.7, rrf_k: int = RRF_K
) -> pa.Table:
    """Candidates (see :data:`CANDIDATES_SCHEMA`) from leg tables, sorted by score, best first."""
    legs = [leg for leg in legs if leg.num_rows]
    if not legs:
        return CANDIDATES_SCHEMA.empty_table()
    ranked = [leg for leg in legs if leg.column("leg")[0].as_py() != "exact"]
    exact = [leg for leg in legs if leg.column("leg")[0].as_py() == "exact"]
    ids = np.concatenate([leg.column("id").to_numpy() for leg in legs]).astype(np.int64)
    uniq, inverse = np.unique(ids, return_inverse=True)
    score = np.zeros(len(uniq), np.float64)
    similarity = np.full(len(uniq), np.nan, np.float32)
    is_exact = np.zeros(len(uniq), bool)
    kinds = np.empty(len(uniq), dtype=object)
    names: list[set[str]] = [set() for _ in uniq]
    best_rank = np.full(len(uniq), np.iinfo(np.int32).max, np.int64)
    offset = 0
    for leg in legs:
        n = leg.num_rows
        pos = inverse[offset : offset + n]
        offset += n
        name = leg.column("leg")[0].as_py()
        raw = leg.column("score").to_numpy().astype(np.float64)
        rank = leg.column("rank").to_numpy().astype(np.int64)
        kinds[pos] = np.asarray(leg.column("kind").to_pylist(), dtype=object)
        for p in pos.tolist():
            names[p].add(name)
        np.minimum.at(best_rank, pos, rank)
        if name.startswith("vector:"):
            similarity[pos] = raw.astype(np.float32)
        if name == "exact":
            is_exact[pos] = True
            continue
        if len(ranked) == 1:
            score[pos] = raw
        elif method == "weighted":
            weight = alpha if name.startswith("vector:") else 1.0 - alpha
            np.add.at(score, pos, weight * _normalised(raw))
        else:
            np.add.at(score, pos, 1.0 / (rrf_k + rank))
    if len(ranked) > 1:
        _even_out_kinds(score, kinds, ranked, method, alpha)
    if exact:
        score[is_exact] += EXACT_BOOST
    order = np.lexsort((uniq, best_rank, -score))
    return pa.table(
        {
            "id": pa.array(uniq[order]),
            "kind": pa.array(kinds[order].tolist(), pa.string()),
            "score": pa.array(score[order]),
            "similarity": pa.array(similarity[order], pa.float32(), from_pandas=True),
            "exact": pa.array(is_exact[order]),
            "legs": pa.array([",".join(sorted(names[i])) for i in order.tolist()], pa.string()),
        },
        schema=CANDIDATES_SCHEMA,
    )
