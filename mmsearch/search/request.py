"""A :class:`~mmsearch.search.types.Query` from keyword arguments: the one place where a
query string, an image, filters and options become the query object.

:meth:`SearchIndex.search <mmsearch.engine.SearchIndex.search>`, the CLI's ``query``
command and the HTTP routes all call :func:`make_query`; the fluent builder reads its
filters with :func:`where_conditions`.

>>> q = make_query("red dress - stripes", where={"price": ["<", 20]}, k=5)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from mmsearch.errors import BadQueryError
from mmsearch.search.filters import OPERATORS, Condition, from_mapping, parse_where
from mmsearch.search.language import MAX_TERMS, QueryTerm, parse_query
from mmsearch.search.types import Query, RerankSpec

#: A query: a query-language string, an image path, a PIL image or an (H, W, 3) uint8 array.
QueryLike = str | os.PathLike[str] | Any
#: Filters: a mapping, one ``"column op value"`` string, or a list of strings and mappings.
WhereLike = Mapping[str, Any] | Sequence[str | Mapping[str, Any]] | str | None


def query_terms(query: QueryLike, *, literal: bool = False) -> tuple[QueryTerm, ...]:
    """The terms of a query-language string, a path, a PIL image or an array."""
    if isinstance(query, str):
        return tuple(parse_query(query, literal=literal))
    if isinstance(query, os.PathLike):
        return (QueryTerm(1.0, "image", os.fspath(query)),)
    return (QueryTerm(1.0, "image", query),)


def _mapping_conditions(where: Mapping[str, Any]) -> list[Condition]:
    # JSON has no tuples: a two-item list whose first item is an operator is ``(op, value)``.
    return from_mapping(
        {
            key: (
                tuple(value)
                if isinstance(value, list) and len(value) == 2 and value[0] in OPERATORS
                else value
            )
            for key, value in where.items()
        }
    )


def where_conditions(where: WhereLike) -> tuple[Condition, ...]:
    """Typed conditions, ANDed, from every form a filter takes.

    ``{"category": "buttons", "price": ("<", 20), "colour": ["red", "blue"]}`` (a list
    means ``in``; ``[op, value]`` as JSON writes a pair), ``"price < 20"``, or a list of
    such strings and mappings (see :mod:`mmsearch.search.filters`).
    """
    if not where:
        return ()
    if isinstance(where, str):
        return tuple(parse_where([where]))
    if isinstance(where, Mapping):
        return tuple(_mapping_conditions(where))
    out: list[Condition] = []
    strings: list[str] = []
    for expr in where:
        if isinstance(expr, str):
            strings.append(expr)
        elif isinstance(expr, Mapping):
            out.extend(_mapping_conditions(expr))
        else:
            raise BadQueryError(f"a filter is a string or a mapping, not {type(expr).__name__}")
    return (*parse_where(strings), *out) if strings else tuple(out)


def rerank_spec(rerank: bool | RerankSpec | None) -> RerankSpec | None:
    """``True``: re-rank with the defaults; a :class:`RerankSpec`: as it says; else no re-ranking."""
    if rerank is True:
        return RerankSpec()
    return rerank or None


def make_query(
    query: QueryLike | None = None,
    *,
    terms: Sequence[QueryTerm] = (),
    literal: bool = False,
    where: WhereLike = None,
    rerank: bool | RerankSpec | None = None,
    **fields: Any,
) -> Query:
    """The validated query for ``query`` (parsed, unless ``literal``) followed by ``terms``.

    ``fields`` are :class:`Query` fields (``kind``, ``mode``, ``k``, ``offset``,
    ``group_by``, ``exact``, ...). Raises :class:`BadQueryError` naming the first bad one.
    """
    all_terms = (
        (*query_terms(query, literal=literal), *terms) if query is not None else tuple(terms)
    )
    if len(all_terms) > MAX_TERMS:
        raise BadQueryError(f"at most {MAX_TERMS} terms in a query")
    try:
        built = Query(
            terms=all_terms, where=where_conditions(where), rerank=rerank_spec(rerank), **fields
        )
    except TypeError as exc:  # an unknown field name
        raise BadQueryError(f"unknown query option: {exc}") from None
    return built.validated()
