"""Re-ranking for the HTTP server: one ITM scorer per server, loaded on first use."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from mmsearch.rerank.config import rerank_model_for
from mmsearch.rerank.stage import ItmReranker


class RerankerHolder:
    """Loads the ITM scorer once, on the first request that asks for re-ranking.

    ``model`` is what ``serve --rerank-model`` named; ``None`` falls back to the
    model recorded in the index, else the default.
    """

    def __init__(self, model: str | None, index_dir: Path, device: str | None) -> None:
        self.model = model
        self.index_dir = index_dir
        self.device = device
        self._lock = threading.Lock()
        self._scorer: Any = None

    def reranker(self, depth: int, min_match: float | None) -> ItmReranker:
        from mmsearch.rerank.itm import ItmScorer

        with self._lock:
            if self._scorer is None:
                name = rerank_model_for(self.index_dir, self.model)
                self._scorer = ItmScorer.load(name, device=self.device)
        return ItmReranker(self._scorer, depth=depth, min_match=min_match)


def reranked_response(
    holder: RerankerHolder,
    index: Any,
    query: Any,
    *,
    k: int,
    kind: str,
    where: list[str] | None,
    depth: int,
    min_match: float | None,
    **options: Any,
) -> tuple[list[Any], dict[str, Any]]:
    """``(hits, extra response fields)`` of a re-ranked search."""
    from mmsearch.rerank.search import rerank_search

    out = rerank_search(
        index, query, holder.reranker(depth, min_match), k=k, kind=kind, where=where, **options
    )
    extra = {
        "reranked": True,
        "empty_reason": out.empty_reason,
        "dropped": [{"id": d.id, "reason": d.reason} for d in out.dropped],
    }
    return out.results, extra
