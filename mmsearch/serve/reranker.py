"""Re-ranking for the HTTP server: one ITM scorer per server, loaded on first use."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from mmsearch.rerank.config import rerank_model_for


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

    def attach(self, index: Any) -> Any:
        """Gives ``index`` (a :class:`SearchIndex`) the ITM reranker if it has none; returns it."""
        from mmsearch.rerank.itm import ItmScorer
        from mmsearch.rerank.pipeline import ItmStageReranker

        with self._lock:
            if self._scorer is None:
                name = rerank_model_for(self.index_dir, self.model)
                self._scorer = ItmScorer.load(name, device=self.device)
            if getattr(index, "reranker", None) is None:
                index.reranker = ItmStageReranker(self._scorer, store=index.store)
        return index.reranker
