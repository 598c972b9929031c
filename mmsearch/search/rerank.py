"""Rerank stage: an optional model re-scores the top candidates (e.g. a BLIP image-text matcher).

A :class:`Reranker` only scores: it takes the :class:`~mmsearch.search.types.Query`
and the candidates table (``id, uri, kind, text, metadata, score, similarity, …``,
best first, with ``mtime_ns, size`` as indexed when the pipeline has them) and
returns the same rows — or fewer — whose ``score`` is its own. It may keep a row it
could not score (its file vanished or changed since indexing) with a reason in
:data:`DROP_REASON`; the stage removes such rows and reports them.

Everything else is this stage's: it cuts the candidates to ``depth``, keeps the
retrieval score as ``retrieval_score``, applies ``min_match`` (drop rows the reranker
scores below it) and ``blend`` (mix in the retrieval score; a query without one uses
the reranker's ``default_blend`` when it has one, a model can recommend the mix it
was measured with), sorts, and says why nothing is left when nothing is.

The rows' ``score_kind`` becomes ``blend`` when blended (blend < 1), else ``itm`` for the
rows the reranker scored (rows it could not judge, whose ``match`` is null, keep their
first-stage kind).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.errors import NoRerankerError
from mmsearch.search.types import DroppedCandidate, Query

#: The column in which a reranker says why it could not score a row (null: scored).
DROP_REASON = "drop_reason"
#: ``id, mtime_ns, size`` as indexed, for ids (see :meth:`SearchSource.file_stats`).
FileStats = Callable[[npt.NDArray[np.int64]], pa.Table]


@runtime_checkable
class Reranker(Protocol):
    """Re-scores candidates; Arrow in, Arrow out."""

    def rerank(self, query: Query, candidates: pa.Table) -> pa.Table:
        """``candidates`` with ``score`` replaced by the reranker's score (rows may be dropped)."""
        ...


@dataclass
class Reranked:
    """The re-ranked candidates, those dropped on the way, and why none is left (if so)."""

    table: pa.Table
    dropped: list[DroppedCandidate] = field(default_factory=list)
    reason: str | None = None


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


def with_file_stats(candidates: pa.Table, file_stats: FileStats | None) -> pa.Table:
    """``candidates`` with ``mtime_ns`` and ``size`` as indexed (when ``file_stats`` is given)."""
    if file_stats is None or "mtime_ns" in candidates.column_names or candidates.num_rows == 0:
        return candidates
    ids = candidates.column("id").to_numpy().astype(np.int64)
    rows = file_stats(ids).to_pydict()
    stat = {
        int(i): (m, s) for i, m, s in zip(rows["id"], rows["mtime_ns"], rows["size"], strict=True)
    }
    found = [stat.get(int(i), (None, None)) for i in ids]
    return candidates.append_column(
        "mtime_ns", pa.array([m for m, _ in found], pa.int64())
    ).append_column("size", pa.array([s for _, s in found], pa.int64()))


def _split_dropped(out: pa.Table) -> tuple[pa.Table, list[DroppedCandidate]]:
    if DROP_REASON not in out.column_names:
        return out, []
    reasons = out.column(DROP_REASON)
    gone = out.filter(pc.is_valid(reasons))
    dropped = [
        DroppedCandidate(int(i), str(u), str(r))
        for i, u, r in zip(
            gone.column("id").to_pylist(),
            gone.column("uri").to_pylist() if "uri" in gone.column_names else [""] * gone.num_rows,
            gone.column(DROP_REASON).to_pylist(),
            strict=True,
        )
    ]
    kept = out.filter(pc.is_null(reasons))
    return kept.drop_columns([DROP_REASON]), dropped


def _empty_reason(
    scored: pa.Table, dropped: list[DroppedCandidate], min_match: float | None
) -> str:
    if min_match is not None and scored.num_rows:
        best = float(pc.max(scored.column("score")).as_py())
        return (
            f"no good match: no candidate reached match probability {min_match:.2f} "
            f"(best {best:.2f} among {scored.num_rows} re-ranked)"
        )
    if dropped:
        return "no good match: every candidate file vanished or changed since indexing"
    return "no good match: no candidates"


def rerank_stage(
    reranker: Reranker | None,
    query: Query,
    candidates: pa.Table,
    *,
    file_stats: FileStats | None = None,
) -> Reranked:
    """Re-scores the best ``query.rerank.depth`` candidates (at least a page) and sorts them.

    Raises :class:`NoRerankerError` when re-ranking is asked for but no reranker is set.
    """
    spec = query.rerank
    if spec is None:
        return Reranked(candidates)
    if reranker is None:
        raise NoRerankerError(
            "re-ranking needs a reranker: open the index with SearchIndex(..., reranker=...) "
            "or drop rerank from the query"
        )
    depth = max(spec.depth, query.offset + query.k)
    top = with_file_stats(candidates.slice(0, depth), file_stats)
    top = top.append_column("retrieval_score", top.column("score"))
    out = reranker.rerank(query, top)
    if "id" not in out.column_names or "score" not in out.column_names:
        raise TypeError("a reranker must return a table with 'id' and 'score' columns")
    scored, dropped = _split_dropped(out)
    out = scored
    if spec.min_match is not None:
        out = out.filter(pc.greater_equal(out.column("score"), spec.min_match))
    blend = spec.blend if spec.blend is not None else getattr(reranker, "default_blend", None)
    # blend 1 is the match probability alone
    blended = blend is not None and blend < 1.0 and "retrieval_score" in out.column_names
    if blended and blend is not None:
        mixed = blend_scores(
            out.column("score").to_numpy(), out.column("retrieval_score").to_numpy(), blend
        )
        out = out.set_column(out.schema.get_field_index("score"), "score", pa.array(mixed))
    out = _with_score_kind(out, "blend" if blended else "itm")
    order = pc.sort_indices(out, sort_keys=[("score", "descending")])
    reason = None
    if out.num_rows == 0 and top.num_rows:
        reason = _empty_reason(scored, dropped, spec.min_match)
    return Reranked(out.take(order), dropped, reason)


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
