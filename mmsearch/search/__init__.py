"""The query pipeline's stages, one module each, composed by :mod:`mmsearch.engine`.

``types`` (query object, candidates schema, results), ``builder`` (fluent builder),
``rows`` (in-memory row columns, filters, identifiers), ``encode``, ``retrieve``
(vector legs), ``lexical`` (BM25 legs, exact identifiers), ``fuse``, ``rescore``,
``rerank`` (the :class:`~mmsearch.search.rerank.Reranker` slot), ``calibrate``
(hybrid's cut-off) and ``shape`` (cut-offs, dedup, group-by, paging).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmsearch.search.limits import DEFAULT_KIND, MAX_K, MAX_OFFSET

if TYPE_CHECKING:
    from mmsearch.search.builder import QueryBuilder
    from mmsearch.search.rerank import Reranker
    from mmsearch.search.types import Query, RerankSpec, Results, SearchResult

_LAZY = {
    "QueryBuilder": "mmsearch.search.builder",
    "Reranker": "mmsearch.search.rerank",
    "Query": "mmsearch.search.types",
    "RerankSpec": "mmsearch.search.types",
    "Results": "mmsearch.search.types",
    "SearchResult": "mmsearch.search.types",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mmsearch.search' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_KIND",
    "MAX_K",
    "MAX_OFFSET",
    "Query",
    "QueryBuilder",
    "RerankSpec",
    "Reranker",
    "Results",
    "SearchResult",
]
