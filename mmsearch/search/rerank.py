"""Rerank stage: an optional model re-scores the top candidates (e.g. a BLIP image-text matcher).

A :class:`Reranker` takes the :class:`~mmsearch.search.types.Query` and the candidates
table (``id, uri, kind, text, metadata, score, similarity, …``, best first) and
returns a table of the same rows — or fewer — whose ``score`` is its own. The stage
keeps the retrieval score as ``retrieval_score``, then applies ``min_match`` (drop
rows the reranker scores below it) and ``blend`` (mix in the retrieval score). A query
without a ``blend`` uses the reranker's ``default_blend`` when it has one (a model can
recommend the mix it was measured with), else the reranker's score alone. The rows'
``score_kind`` becomes ``blend`` when blended (blend < 1), else ``itm`` for the rows the reranker
scored (rows it could not judge, whose ``match`` is null, keep their first-stage kind).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.errors import NoRerankerError
from mmsearch.search.types import Query


@runtime_checkable
class Reranker(Protocol):
    """Re-scores candidates; Arrow in, Arrow out."""

    def rerank(self, query: Query, candidates: pa.Table) -> pa.Table:
        """``candidates`` with ``score`` replaced by the reranker's score (rows may be dropped)."""
        ...


def _minmax(values: np.ndarray) -> np.ndarray:
    if len(values) == 0:
        return values
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    return np.ones_like(values) if hi - lo < 1e-12 else (values - lo) / (hi - lo)


def blend_scores(rerank: np.ndarray, retrieval: np.ndarray, blend: float) -> np.ndarray:
    """``blend`` × the reranker's score + (1 − ``blend``) × the retrieval score min-max scaled.

    The retrieval scores are scaled to [0, 1] over the re-ranked candidates, so one
    ``blend`` means the same for cosine, BM25 or fused scores.
    """
    base = _minmax(np.asarray(retrieval, dtype=np.float64))
    return blend * np.asarray(rerank, dtype=np.float64) + (1 - blend) * base


def rerank_stage(reranker: Reranker | None, query: Query, candidates: pa.Table) -> pa.Table:
    """Re-scores the top ``query.rerank.depth`` candidates and sorts them, best first.

    Raises :class:`NoRerankerError` when re-ranking is asked for but no reranker is set.
    """
    spec = query.rerank
    if spec is None:
        return candidates
    if reranker is None:
        raise NoRerankerError(
            "re-ranking needs a reranker: open the index with SearchIndex(..., reranker=...) "
            "or drop rerank from the query"
        )
    depth = max(spec.depth, query.offset + query.k)
    top = candidates.slice(0, depth)
    top = top.append_column("retrieval_score", top.column("score"))
    out = reranker.rerank(query, top)
    if "id" not in out.column_names or "score" not in out.column_names:
        raise TypeError("a reranker must return a table with 'id' and 'score' columns")
    if spec.min_match is not None:
        out = out.filter(pc.greater_equal(out.column("score"), spec.min_match))
    blend = spec.blend if spec.blend is not None else getattr(reranker, "default_blend", None)
    # blend 1 is the match probability alone
    blended = blend is not None and blend < 1.0 and "retrieval_score" in out.column_names
    if blended:
        mixed = blend_scores(
            out.column("score").to_numpy(), out.column("retrieval_score").to_numpy(), blend
        )
        out = out.set_column(out.schema.get_field_index("score"), "score", pa.array(mixed))
    out = _with_score_kind(out, "blend" if blended else "itm")
    order = pc.sort_indices(out, sort_keys=[("score", "descending")])
    return out.take(order)


def _with_score_kind(table: pa.Table, kind: str) -> pa.Table:
    """``table`` with ``score_kind`` = ``kind``, but for ``itm`` on rows whose ``match`` is null."""
    new = np.full(table.num_rows, kind, dtype=object)
    if kind == "itm" and "match" in table.column_names and "score_kind" in table.column_names:
        unjudged = np.asarray(table.column("match").is_null().to_pylist(), dtype=bool)
        new[unjudged] = np.asarray(table.column("score_kind").to_pylist(), dtype=object)[unjudged]
    column = pa.array(new.tolist(), pa.string())
    if "score_kind" in table.column_names:
        return table.set_column(table.schema.get_field_index("score_kind"), "score_kind", column)
    return table.append_column("score_kind", column)
