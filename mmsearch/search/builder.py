"""The fluent query builder: a query as method calls, with no string parsing.

>>> hits = (idx.query().text("Levi's 501 - slim fit").image("ref.jpg", weight=0.5)   # doctest: +SKIP
...         .minus("stripes").where(price__lt=20, colour=["red", "blue"]).mode("hybrid")
...         .group_by("sku").limit(10).to_list())

Each call returns the builder; :meth:`QueryBuilder.to_query` gives the plain
:class:`~mmsearch.search.types.Query` the engine runs, and ``to_list`` /
``to_arrow`` / ``to_pandas`` / ``results`` run it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from mmsearch.errors import BadQueryError
from mmsearch.search.filters import Condition
from mmsearch.search.language import QueryTerm, classify_term, parse_query
from mmsearch.search.request import where_conditions
from mmsearch.search.types import Query, RerankSpec, Results

if TYPE_CHECKING:
    import pyarrow as pa

#: ``where(price__lt=20)`` suffixes and the operator each means.
LOOKUPS = {
    "eq": "=",
    "ne": "!=",
    "lt": "<",
    "le": "<=",
    "lte": "<=",
    "gt": ">",
    "ge": ">=",
    "gte": ">=",
    "in": "in",
    "contains": "contains",
}


def conditions_from_kwargs(kwargs: Mapping[str, Any]) -> list[Condition]:
    """``price__lt=20, colour=["red", "blue"]`` → typed conditions (lists mean ``in``)."""
    plain: dict[str, Any] = {}
    lookups: list[Mapping[str, Any]] = []
    for key, value in kwargs.items():
        column, _, lookup = key.partition("__")
        if lookup:
            if lookup not in LOOKUPS:
                raise BadQueryError(
                    f"unknown filter lookup {lookup!r} in {key!r}; use one of {', '.join(LOOKUPS)}"
                )
            lookups.append({column: (LOOKUPS[lookup], value)})
        else:
            plain[column] = value
    return list(where_conditions([plain, *lookups]))


def image_term(image: Any, weight: float) -> QueryTerm:
    """An image term: a path, an http(s) URL, a PIL image or an ``(H, W, 3)`` array."""
    if isinstance(image, (str, os.PathLike)):
        kind = "url" if classify_term(os.fspath(image), quoted=False) == "url" else "image"
        return QueryTerm(float(weight), kind, os.fspath(image) if kind == "url" else image)
    return QueryTerm(float(weight), "image", image)


class QueryRunner(Protocol):
    """What runs a built query (:class:`~mmsearch.engine.SearchIndex` does)."""

    def run(self, query: Query) -> Results: ...


class QueryBuilder:
    """Builds a :class:`Query` for one :class:`~mmsearch.engine.SearchIndex`."""

    def __init__(self, index: QueryRunner | None = None, query: Query | None = None) -> None:
        self._index = index
        self._query = query or Query()

    def _with(self, **changes: Any) -> QueryBuilder:
        return QueryBuilder(self._index, replace(self._query, **changes))

    # -- terms -----------------------------------------------------------------------------
    def text(self, text: str, weight: float = 1.0) -> QueryBuilder:
        """Adds one text term, taken literally (no `` - `` splitting, no path detection)."""
        if not isinstance(text, str) or not text.strip():
            raise BadQueryError("a text term must be a non-empty string")
        return self._with(terms=(*self._query.terms, QueryTerm(float(weight), "text", text)))

    def image(self, image: Any, weight: float = 1.0) -> QueryBuilder:
        """Adds an image term: a path, an http(s) URL, a PIL image or an ``(H, W, 3)`` uint8 array."""
        return self._with(terms=(*self._query.terms, image_term(image, weight)))

    def minus(self, term: Any, weight: float = 1.0) -> QueryBuilder:
        """Adds a negative term: a text (str) or an image (path-like, PIL image or array)."""
        if isinstance(term, str):
            return self._with(
                terms=(*self._query.terms, QueryTerm(-abs(float(weight)), "text", term))
            )
        return self._with(terms=(*self._query.terms, image_term(term, -abs(float(weight)))))

    def parse(self, query: str, *, literal: bool = False) -> QueryBuilder:
        """Adds the terms of a query-language string (``"2:red dress" + ./ref.jpg - "stripes"``)."""
        return self._with(terms=(*self._query.terms, *parse_query(query, literal=literal)))

    # -- filters and options ---------------------------------------------------------------
    def where(self, *expressions: str | Mapping[str, Any], **lookups: Any) -> QueryBuilder:
        """ANDs conditions: ``"price < 20"``, ``{"colour": ["red", "blue"]}``, ``price__lt=20``."""
        conditions = [*where_conditions(list(expressions)), *conditions_from_kwargs(lookups)]
        return self._with(where=(*self._query.where, *conditions))

    def kind(self, kind: str) -> QueryBuilder:
        """Result kind: ``image``, ``text`` or ``any``."""
        return self._with(kind=kind)

    def mode(self, mode: str) -> QueryBuilder:
        """``vector``, ``lexical`` or ``hybrid``."""
        return self._with(mode=mode)

    def fusion(self, method: str, alpha: float | None = None) -> QueryBuilder:
        """``relative`` (the default), ``rrf`` or ``weighted`` (``alpha`` = weight of the vector legs)."""
        return self._with(fusion=method, alpha=self._query.alpha if alpha is None else alpha)

    def limit(self, k: int) -> QueryBuilder:
        return self._with(k=k)

    def offset(self, offset: int) -> QueryBuilder:
        return self._with(offset=offset)

    def group_by(self, key: str) -> QueryBuilder:
        """The best hit per value of a metadata key (``sku``), each with its group's other ids."""
        return self._with(group_by=key)

    def dedup(self, threshold: float = 0.97) -> QueryBuilder:
        """Folds hits within ``threshold`` cosine of a better hit into it."""
        return self._with(dedup=threshold)

    def min_score(self, score: float) -> QueryBuilder:
        return self._with(min_score=score)

    def rerank(
        self, depth: int = 50, min_match: float | None = None, blend: float | None = None
    ) -> QueryBuilder:
        """Re-scores the top ``depth`` candidates with the index's reranker."""
        return self._with(rerank=RerankSpec(depth=depth, min_match=min_match, blend=blend))

    def ann(
        self, *, nprobe: int | None = None, refine: int | None = None, exact: bool = False
    ) -> QueryBuilder:
        """Overrides the tuned ANN parameters, or searches exactly."""
        return self._with(nprobe=nprobe, refine=refine, exact=exact)

    # -- running ---------------------------------------------------------------------------
    def to_query(self) -> Query:
        """The validated query object."""
        return self._query.validated()

    def results(self) -> Results:
        if self._index is None:
            raise BadQueryError("this builder has no index to run on; use SearchIndex.query()")
        return self._index.run(self.to_query())

    def to_list(self) -> list[dict[str, Any]]:
        return self.results().to_list()

    def to_arrow(self) -> pa.Table:
        return self.results().to_arrow()

    def to_pandas(self) -> Any:
        return self.results().to_pandas()
