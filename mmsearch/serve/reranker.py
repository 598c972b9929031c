"""Re-ranking for the HTTP server: one ITM re-ranker per server, loaded on first use."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from mmsearch.search.rerank import Reranker


class RerankerHolder:
    """Loads the ITM re-ranker once, on the first request that asks for re-ranking.

    ``model`` is what ``serve --rerank-model`` named; ``None`` falls back to the
    model recorded in the index, else the default (:func:`mmsearch.rerank.reranker_for`).
    """

    def __init__(self, model: str | None, index_dir: Path, device: str | None) -> None:
        self.model = model
        self.index_dir = index_dir
        self.device = device
        self._lock = threading.Lock()
        self._reranker: Reranker | None = None

    def attach(self, index: Any) -> Reranker:
        """Gives ``index`` (a :class:`SearchIndex`) the server's re-ranker if it has none."""
        from mmsearch.rerank import reranker_for

        with self._lock:
            if self._reranker is None:
                self._reranker = reranker_for(self.index_dir, self.model, device=self.device)
            if getattr(index, "reranker", None) is None:
                index.reranker = self._reranker
        return index.reranker
