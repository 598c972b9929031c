"""Re-ranking for the HTTP server: one ITM re-ranker per worker, loaded once.

The model is loaded at start-up when ``serve --rerank-model`` names one (in the
background: plain searches are served meanwhile), else by the first request that
asks for re-ranking. Either way a re-rank request waits for the load *before* it
takes a search slot, so a slow load (a download) never holds up plain searches. A
failed load is remembered for :data:`RETRY_AFTER_S` seconds: requests in that time
get the same error at once (503 with ``Retry-After``) instead of trying again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmsearch.errors import MMSearchError, RerankModelError
from mmsearch.rerank.config import rerank_model_for
from mmsearch.search.rerank import Reranker

#: How long a failed load is remembered before a request may try again.
RETRY_AFTER_S = 60.0


class RerankerHolder:
    """Loads the ITM scorer once and remembers a failure for ``retry_after_s``.

    ``model`` is what ``serve --rerank-model`` named; ``None`` falls back to the
    model recorded in the index, else the default. ``loader(name, device)`` loads a
    scorer (:meth:`mmsearch.rerank.itm.ItmScorer.load` unless given).
    """

    def __init__(
        self,
        model: str | None,
        index_dir: Path,
        device: str | None,
        *,
        retry_after_s: float = RETRY_AFTER_S,
        loader: Callable[[str, str | None], Any] | None = None,
    ) -> None:
        self.model = model
        self.index_dir = index_dir
        self.device = device
        self.retry_after_s = retry_after_s
        self._loader = loader
        self._lock = threading.Lock()
        self._scorer: Any = None
        self._reranker: Reranker | None = None
        self._failure: tuple[float, MMSearchError] | None = None  # (monotonic time, error)
        self.attempts = 0

    @property
    def loaded(self) -> bool:
        return self._scorer is not None

    def _remembered_failure(self) -> None:
        if self._failure is None:
            return
        failed_at, error = self._failure
        left = self.retry_after_s - (time.monotonic() - failed_at)
        if left > 0:
            again = RerankModelError(str(error))
            again.retry_after_s = left  # type: ignore[attr-defined]
            raise again

    def load(self) -> Any:
        """The scorer, loading it if needed (one load at a time); raises the remembered
        :class:`RerankModelError` while a failure is fresh."""
        if self._scorer is not None:
            return self._scorer
        self._remembered_failure()
        with self._lock:
            if self._scorer is not None:
                return self._scorer
            self._remembered_failure()  # another thread failed while this one waited
            self.attempts += 1
            try:
                name = rerank_model_for(self.index_dir, self.model)
                if self._loader is not None:
                    self._scorer = self._loader(name, self.device)
                else:
                    from mmsearch.rerank.itm import ItmScorer

                    self._scorer = ItmScorer.load(name, device=self.device)
            except MMSearchError as exc:
                self._failure = (time.monotonic(), exc)
                exc.retry_after_s = self.retry_after_s  # type: ignore[attr-defined]
                raise
            self._failure = None
            return self._scorer

    def load_quietly(self) -> None:
        """:meth:`load` for a background thread at start-up: a failure is remembered, not raised."""
        try:
            self.load()
        except MMSearchError:
            pass

    def attach(self, index: Any) -> Reranker:
        """Gives ``index`` (a :class:`SearchIndex`) the server's re-ranker if it has none.

        Call :meth:`load` first (outside any search slot); this only wires the loaded scorer.
        """
        from mmsearch.rerank.scoring import ItmReranker

        scorer = self.load()
        with self._lock:
            if self._reranker is None:
                self._reranker = ItmReranker(scorer)
            if getattr(index, "reranker", None) is None:
                index.reranker = self._reranker
        return index.reranker
