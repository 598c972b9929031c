"""Second-stage re-ranking with a BLIP image-text-matching (ITM) head (the ``rerank`` extra).

A dual encoder (CLIP) embeds a query and each item apart and confuses captions that
use the same words in another order; an ITM head reads image and text jointly.
The query engine fetches ``depth`` candidates cheaply and this package re-scores
them:

>>> from mmsearch.rerank import ItmReranker, ItmScorer, RerankQuery
>>> reranker = ItmReranker(ItmScorer.load("mmsearch-tiny-itm"), depth=50, min_match=0.5)  # doctest: +SKIP
>>> outcome = reranker.rerank(RerankQuery.of_text("a red circle to the left of a blue square"), candidates)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmsearch.rerank.loader import (
    DEFAULT_RERANK_MODEL,
    REGISTERED_RERANK_MODELS,
    TINY_ITM_NAME,
    resolve_rerank_source,
)
from mmsearch.rerank.scoring import (
    DEFAULT_DEPTH,
    DroppedCandidate,
    ItmReranker,
    MatchScorer,
    RerankOutcome,
    RerankQuery,
)

if TYPE_CHECKING:
    from mmsearch.rerank.itm import ItmScorer

__all__ = [
    "DEFAULT_DEPTH",
    "DEFAULT_RERANK_MODEL",
    "REGISTERED_RERANK_MODELS",
    "TINY_ITM_NAME",
    "DroppedCandidate",
    "ItmReranker",
    "ItmScorer",
    "MatchScorer",
    "RerankOutcome",
    "RerankQuery",
    "attach_reranker",
    "load_reranker",
    "resolve_rerank_source",
]


def __getattr__(name: str) -> Any:
    if name == "ItmScorer":  # imports torch: only on use
        from mmsearch.rerank.itm import ItmScorer

        return ItmScorer
    raise AttributeError(name)


def load_reranker(
    model: str = DEFAULT_RERANK_MODEL,
    *,
    depth: int = DEFAULT_DEPTH,
    min_match: float | None = None,
    blend: float | None = None,
    device: str | None = None,
    batch_size: int = 32,
) -> ItmReranker:
    """An :class:`ItmReranker` over the ITM model ``model`` (name, local folder or HF id)."""
    from mmsearch.rerank.itm import ItmScorer

    scorer = ItmScorer.load(model, device=device, batch_size=batch_size)
    return ItmReranker(scorer, depth=depth, min_match=min_match, blend=blend)


def attach_reranker(index: Any, model: str | None = None, *, device: str | None = None) -> Any:
    """Puts the ITM reranker in ``index``'s rerank slot; returns the stage object.

    ``model`` defaults to the one recorded in the index (``index --rerank-model``),
    else :data:`DEFAULT_RERANK_MODEL`. Afterwards ``index.search(q, rerank=True)`` and
    ``index.query().text(q).rerank(depth=50)`` re-rank with it.

    >>> idx = mmsearch.open("./idx"); attach_reranker(idx, "mmsearch-tiny-itm")   # doctest: +SKIP
    >>> idx.search("a red circle to the left of a blue square", rerank=True)     # doctest: +SKIP
    """
    from mmsearch.rerank.config import rerank_model_for
    from mmsearch.rerank.itm import ItmScorer
    from mmsearch.rerank.pipeline import ItmStageReranker

    scorer = ItmScorer.load(rerank_model_for(index.index_dir, model), device=device)
    index.reranker = ItmStageReranker(
        scorer, store=index.store, image_roots=index.current.image_roots
    )
    return index.reranker
