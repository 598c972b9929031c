"""Search an index, then re-rank the first stage's ``depth`` best candidates with ITM.

The glue between :class:`mmsearch.engine.SearchIndex` (first stage: vector search,
filters applied) and :class:`~mmsearch.rerank.stage.ItmReranker` (Arrow in, Arrow
out):

>>> idx = mmsearch.open(".mmsearch")                                   # doctest: +SKIP
>>> hits = rerank_search(idx, "a red circle to the left of a blue square",
...                      load_reranker("mmsearch-tiny-itm"), k=10)      # doctest: +SKIP
>>> hits.results[0].score, hits.dropped, hits.empty_reason             # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from mmsearch.rerank.stage import DroppedCandidate, ItmReranker, RerankQuery

if TYPE_CHECKING:
    from mmsearch.engine import SearchIndex, SearchResult


@dataclass
class RerankedSearch:
    """Results after re-ranking, the candidates dropped on the way, and why an answer is empty."""

    results: list[SearchResult]
    dropped: list[DroppedCandidate] = field(default_factory=list)
    empty_reason: str | None = None
    depth: int = 0


def rerank_query_of(index: SearchIndex, query: Any) -> RerankQuery:
    """The positive text terms and the first positive image term of a query.

    ``query`` is what :meth:`SearchIndex.search` takes: a query-language string, an
    image path, a PIL image or an ``(H, W, 3)`` array. Image paths go through the
    index's allowed-roots check and the safe loader.
    """
    from PIL import Image

    from mmsearch.imageio import load_image
    from mmsearch.query import parse_query

    if isinstance(query, Image.Image):
        return RerankQuery(image=query.convert("RGB"))
    if isinstance(query, np.ndarray):
        return RerankQuery(
            image=Image.fromarray(np.ascontiguousarray(query, dtype=np.uint8), "RGB")
        )
    if isinstance(query, os.PathLike):
        return RerankQuery(image=load_image(index._check_image_path(query)))
    terms = parse_query(query)
    texts = tuple((t.value, t.weight) for t in terms if t.kind == "text" and t.weight > 0)
    image_terms = [t for t in terms if t.kind == "image" and t.weight > 0]
    image = load_image(index._check_image_path(image_terms[0].value)) if image_terms else None
    return RerankQuery(texts=texts, image=image)


def candidates_table(index: SearchIndex, hits: Sequence[SearchResult]) -> pa.Table:
    """First-stage hits as the rerank stage's Arrow input, with each file's size and mtime as indexed."""
    ids = [h.id for h in hits]
    stat: dict[int, tuple[int | None, int | None]] = {}
    if ids:
        rows = index.store.scan(
            ["id", "mtime_ns", "size"], where=f"id IN ({', '.join(str(int(i)) for i in ids)})"
        ).to_pydict()
        stat = {
            int(i): (m, s)
            for i, m, s in zip(rows["id"], rows["mtime_ns"], rows["size"], strict=True)
        }
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "uri": pa.array([h.uri for h in hits], pa.string()),
            "kind": pa.array([h.kind for h in hits], pa.string()),
            "text": pa.array([h.text for h in hits], pa.string()),
            "mtime_ns": pa.array([stat.get(i, (None, None))[0] for i in ids], pa.int64()),
            "size": pa.array([stat.get(i, (None, None))[1] for i in ids], pa.int64()),
            "score": pa.array([h.score for h in hits], pa.float32()),
        }
    )


def rerank_search(
    index: SearchIndex,
    query: Any,
    reranker: ItmReranker,
    k: int = 10,
    *,
    kind: str = "any",
    where: Mapping[str, Any] | Sequence[str] | None = None,
    **search_options: Any,
) -> RerankedSearch:
    """First stage for ``reranker.depth`` candidates (filters applied), ITM re-rank, top ``k``."""
    from mmsearch.engine import SearchResult

    depth = max(reranker.depth, k)
    hits = index.search(query, k=depth, kind=kind, where=where, **search_options)  # type: ignore[arg-type]
    by_id = {h.id: h for h in hits}
    outcome = reranker.rerank(rerank_query_of(index, query), candidates_table(index, hits))
    table = outcome.table.slice(0, k).to_pydict()
    results = [
        SearchResult(
            rank=rank,
            id=item_id,
            uri=by_id[item_id].uri,
            kind=by_id[item_id].kind,
            text=by_id[item_id].text,
            score=float(score),
            metadata=by_id[item_id].metadata,
        )
        for rank, (item_id, score) in enumerate(
            zip(table["id"], table["score"], strict=True), start=1
        )
    ]
    empty = outcome.empty_reason if not results else None
    if not hits:
        empty = "no good match: the first stage found no candidates"
    return RerankedSearch(results, outcome.dropped, empty, depth)
