"""The HTTP shape of a query: the JSON body of ``POST /api/search`` (pydantic), and the
GET parameters, both turned into the same :class:`~mmsearch.search.types.Query`.

    {"terms": [{"text": "Levi's 501 - slim fit"}, {"text": "stripes", "weight": -1}],
     "where": {"price": ["<", 20], "colour": ["red", "blue"]}, "mode": "hybrid",
     "group_by": "sku", "k": 10}

``q`` (the query language) may stand in for, or add to, ``terms``; a JSON ``where``
is a list of ``"column op value"`` strings or a mapping (a value, a list for ``in``,
or ``[op, value]``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmsearch.errors import BadQueryError
from mmsearch.search.language import MAX_QUERY_CHARS, MAX_TERMS, QueryTerm
from mmsearch.search.request import make_query
from mmsearch.search.types import DEFAULT_KIND, MAX_K, MAX_OFFSET, Query, RerankSpec

WhereJson = list[str] | dict[str, Any] | None


class TermIn(BaseModel):
    """One term: exactly one of ``text``, ``image`` (a path under the server's image roots) or ``url``."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, min_length=1, max_length=MAX_QUERY_CHARS)
    image: str | None = Field(None, min_length=1, max_length=4096)
    url: str | None = Field(None, min_length=1, max_length=2048)
    weight: float = Field(1.0, ge=-1000, le=1000)

    @model_validator(mode="after")
    def _one_value(self) -> TermIn:
        if sum(v is not None for v in (self.text, self.image, self.url)) != 1:
            raise ValueError("a term has exactly one of text, image or url")
        return self

    def to_term(self) -> QueryTerm:
        if self.text is not None:
            return QueryTerm(self.weight, "text", self.text)
        if self.image is not None:
            return QueryTerm(self.weight, "image", self.image)
        return QueryTerm(self.weight, "url", self.url)


class RerankIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: int = Field(50, ge=1, le=MAX_K)
    min_match: float | None = None
    blend: float | None = Field(None, ge=0, le=1)


class _SearchOptions(BaseModel):
    """What the GET parameters and the POST body share."""

    q: str | None = Field(None, max_length=MAX_QUERY_CHARS)
    literal: bool = False
    kind: Literal["image", "text", "any"] = DEFAULT_KIND
    mode: Literal["vector", "lexical", "hybrid"] | None = None
    fusion: Literal["relative", "rrf", "weighted"] = "relative"
    alpha: float = Field(0.7, ge=0, le=1)
    k: int = Field(20, ge=1, le=MAX_K)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    group_by: str | None = Field(None, min_length=1, max_length=64)
    dedup: float | None = Field(None, gt=0, le=1)
    min_score: float | None = None
    cutoff: bool = False
    exact: bool = False


class SearchParams(_SearchOptions):
    """The query-string parameters of ``GET /api/search`` (unknown ones are ignored).

    One model instead of one FastAPI parameter each: FastAPI then validates the query
    string in one pydantic call instead of resolving 18 parameters one by one (about
    half of the framework's CPU time per request).
    """

    model_config = ConfigDict(extra="ignore")
    where: list[str] | None = None
    url: str | None = Field(None, max_length=2048)
    rerank: bool = False
    rerank_depth: int = Field(50, ge=1, le=MAX_K)
    min_match: float | None = Field(None, ge=0.0, le=1.0)
    rerank_blend: float | None = Field(None, ge=0.0, le=1.0)


class SearchRequest(_SearchOptions):
    """The body of ``POST /api/search``."""

    model_config = ConfigDict(extra="forbid")
    terms: list[TermIn] = Field(default_factory=list, max_length=MAX_TERMS)
    where: WhereJson = None
    rerank: RerankIn | bool | None = None

    def to_query(self) -> Query:
        return build_query(
            q=self.q,
            literal=self.literal,
            terms=[t.to_term() for t in self.terms],
            where=self.where,
            kind=self.kind,
            mode=self.mode,
            fusion=self.fusion,
            alpha=self.alpha,
            k=self.k,
            offset=self.offset,
            group_by=self.group_by,
            dedup=self.dedup,
            min_score=self.min_score,
            cutoff=self.cutoff,
            exact=self.exact,
            rerank=(
                RerankSpec(**self.rerank.model_dump())
                if isinstance(self.rerank, RerankIn)
                else (RerankSpec() if self.rerank else None)
            ),
        )


def build_query(
    *,
    q: str | None,
    literal: bool = False,
    terms: list[QueryTerm] | None = None,
    where: WhereJson = None,
    **options: Any,
) -> Query:
    """A validated query from HTTP inputs (GET parameters or a JSON body)."""
    text = q if q is not None and q.strip() else None
    if text is None and not terms:
        raise BadQueryError(
            "give a query: q=TEXT, or terms (or url=IMAGE_URL where image URLs are enabled)"
        )
    return make_query(text, literal=literal, terms=terms or (), where=where, **options)
