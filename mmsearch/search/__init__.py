"""The query pipeline: ``pipeline.run(source, query) -> Results`` and its stages, one module each.

``types`` (query object, candidates schema, results), ``request`` (a query from
keyword arguments; filters in every form), ``builder`` (fluent builder), ``source``
(the :class:`~mmsearch.search.source.SearchSource` protocol: what the stages read of an
open index), ``pipeline`` (mode and depth policy, deepening, empty-answer reasons),
``rows`` (in-memory row columns, filters, identifiers), ``encode``, ``retrieve``
(vector legs), ``lexical`` (BM25 legs, exact identifiers), ``fuse``, ``rescore``,
``rerank`` (the :class:`~mmsearch.search.rerank.Reranker` protocol and the re-rank
stage), ``calibrate`` (hybrid's cut-off) and ``shape`` (cut-offs, dedup, group-by,
paging). Nothing here imports the engine.
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
