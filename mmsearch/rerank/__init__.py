"""Second-stage re-ranking with a BLIP image-text-matching (ITM) head (the ``rerank`` extra).

A dual encoder (CLIP) embeds a query and each item apart and confuses captions that
use the same words in another order; an ITM head reads image and text jointly.
The query pipeline fetches ``depth`` candidates cheaply and its re-rank stage has
them re-scored by an :class:`ItmReranker`:

>>> idx = mmsearch.open("./idx", reranker="mmsearch-tiny-itm")  # doctest: +SKIP
>>> idx.search("a red circle to the left of a blue square", rerank=True)  # doctest: +SKIP

:func:`reranker_for` is how the library, the CLI's ``--rerank`` and the server pick
and load the model: the one asked for, else the one recorded in the index, else
:data:`DEFAULT_RERANK_MODEL`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mmsearch.rerank.loader import (
    DEFAULT_RERANK_MODEL,
    REGISTERED_RERANK_MODELS,
    TINY_ITM_NAME,
    resolve_rerank_source,
)
from mmsearch.rerank.scoring import ItmReranker, MatchScorer

if TYPE_CHECKING:
    from mmsearch.rerank.itm import ItmScorer

__all__ = [
    "DEFAULT_RERANK_MODEL",
    "REGISTERED_RERANK_MODELS",
    "TINY_ITM_NAME",
    "ItmReranker",
    "ItmScorer",
    "MatchScorer",
    "reranker_for",
    "resolve_rerank_source",
]


def __getattr__(name: str) -> Any:
    if name == "ItmScorer":  # imports torch: only on use
        from mmsearch.rerank.itm import ItmScorer

        return ItmScorer
    raise AttributeError(name)


def reranker_for(
    index_dir: str | os.PathLike[str], model: str | None = None, *, device: str | None = None
) -> ItmReranker:
    """The ITM re-ranker of an index: ``model`` (a registered name, a local folder or a
    Hugging Face id), else the model recorded with ``index --rerank-model``, else
    :data:`DEFAULT_RERANK_MODEL`.

    Raises :class:`~mmsearch.errors.RerankModelError` (one line naming the fix) when the
    model cannot be loaded.
    """
    from mmsearch.rerank.config import rerank_model_for
    from mmsearch.rerank.itm import ItmScorer

    return ItmReranker(ItmScorer.load(rerank_model_for(index_dir, model), device=device))
