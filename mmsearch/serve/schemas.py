"""The HTTP shape of a query: the JSON body of ``POST /api/search`` (pydantic), and the
GET parameters, both turned into the same :class:`~mmsearch.search.types.Query`.

    {"terms": [{"text": "Levi's 501 - slim fit"}, {"text": "stripes", "weight": -1}],
     "where": {"price": ["<", 20], "colour": ["red", "blue"]}, "mode": "hybrid",
     "group_by": "sku", "k": 10}

``q`` (the query language) may stand in for, or add to, ``terms``; a JSON ``where``
is a list of ``"column op value"`` strings or a mapping (a value, a list for ``in``,
or ``[op, value]``).

The models say what the server requires, so the published schema (``/openapi.json``)
does too: every number is finite and bounded, every string bounded and valid Unicode
(a lone surrogate such as ``"\\ud800"`` is refused with a 422, never passed on), a
body names ``q`` or ``terms``, a term exactly one of ``text``, ``image`` or ``url``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from mmsearch.errors import BadQueryError
from mmsearch.search.filters import MAX_CONDITIONS, MAX_FILTER_CHARS, MAX_VALUE_CHARS, MAX_VALUES
from mmsearch.search.language import MAX_QUERY_CHARS, MAX_TERMS, MAX_WEIGHT, QueryTerm
from mmsearch.search.request import make_query
from mmsearch.search.types import DEFAULT_KIND, MAX_K, MAX_OFFSET, Query, RerankSpec

#: Bounds of the numbers that have no natural range (score thresholds, filter values).
MAX_SCORE = 1e6
MAX_FILTER_NUMBER = 1e15
MAX_IMAGE_PATH_CHARS = 4096
MAX_URL_CHARS = 2048
MAX_COLUMN_CHARS = 64
# A text with something in it, not only white space: the characters Python strips and
# both regex dialects (JSON Schema's ECMA-262 \s lacks U+0085 and U+001C-001F, Rust's
# lacks U+FEFF) count as space, so the schema and the server agree on every string.
_NOT_BLANK = r"[^\s\u001c-\u001f\u0085\ufeff]"
_COLUMN = rf"^[A-Za-z_][A-Za-z0-9_.]{{0,{MAX_COLUMN_CHARS - 1}}}$"
_CONDITION_START = (
    rf"^\s*[A-Za-z_][A-Za-z0-9_.]{{0,{MAX_COLUMN_CHARS - 1}}}\s*(!=|<=|>=|=|<|>|in\s|contains\s)"
)


def _integral(value: Any) -> Any:
    """``20.0`` → ``20``: JSON Schema counts an integral number as an integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer; in a JSON body also an integral float (``20.0``), never a string or a bool.
JsonInt = Annotated[int, BeforeValidator(_integral)]
#: JSON bodies are validated strictly (no ``"0.5"`` for a number, no ``0`` for a boolean):
#: what the schema calls invalid is refused, not coerced.
STRICT_JSON = ConfigDict(strict=True)

QueryText = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS, pattern=_NOT_BLANK)
]
FilterText = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_FILTER_CHARS, pattern=_CONDITION_START)
]
Column = Annotated[str, StringConstraints(pattern=_COLUMN)]
FilterNumber = Annotated[float, Field(ge=-MAX_FILTER_NUMBER, le=MAX_FILTER_NUMBER)]
FilterScalar = bool | FilterNumber | Annotated[str, StringConstraints(max_length=MAX_VALUE_CHARS)]
FilterValue = (
    FilterScalar | Annotated[list[FilterScalar], Field(min_length=1, max_length=MAX_VALUES)]
)
WhereList = Annotated[list[FilterText], Field(max_length=MAX_CONDITIONS)]
WhereMap = Annotated[
    dict[Column, FilterValue],
    # pydantic states the key pattern as patternProperties; other keys are refused too.
    Field(max_length=MAX_CONDITIONS, json_schema_extra={"additionalProperties": False}),
]
WhereJson = WhereList | WhereMap | None


def _surrogate_at(value: Any, path: str = "") -> str | None:
    """Where in ``value`` a string holds a lone surrogate (``"\\ud800"`` in JSON), if anywhere."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "request"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _surrogate_at(key, f"{path}.{key!r}" if path else repr(key))
            found = found or _surrogate_at(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for pos, item in enumerate(value):
            found = _surrogate_at(item, f"{path}.{pos}" if path else str(pos))
            if found:
                return found
    return None


class StrictModel(BaseModel):
    """Finite numbers only, and no lone surrogates anywhere in the input (they cannot be
    stored, searched or even written back in an error)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = _surrogate_at(data)
        if where is not None:
            raise ValueError(f"{where}: text is not valid Unicode (it holds a lone surrogate)")
        return data


class TermIn(StrictModel):
    """One term: exactly one of ``text``, ``image`` (a path under the server's image roots) or ``url``."""

    model_config = ConfigDict(
        strict=True,
        json_schema_extra={
            "oneOf": [{"required": ["text"]}, {"required": ["image"]}, {"required": ["url"]}]
        },
    )
    text: QueryText | SkipJsonSchema[None] = None
    image: (
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=MAX_IMAGE_PATH_CHARS, pattern=_NOT_BLANK),
        ]
        | SkipJsonSchema[None]
    ) = None
    url: (
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=MAX_URL_CHARS, pattern=r"^https?://\S+$"),
        ]
        | SkipJsonSchema[None]
    ) = None
    weight: float = Field(1.0, ge=-MAX_WEIGHT, le=MAX_WEIGHT)

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


class RerankIn(StrictModel):
    model_config = STRICT_JSON
    depth: JsonInt = Field(50, ge=1, le=MAX_K)
    min_match: float | None = Field(None, ge=0.0, le=1.0)
    blend: float | None = Field(None, ge=0.0, le=1.0)


class _SearchOptions(StrictModel):
    """What the GET parameters and the POST body share."""

    literal: bool = False
    kind: Literal["image", "text", "any"] = DEFAULT_KIND
    mode: Literal["vector", "lexical", "hybrid"] | None = None
    fusion: Literal["relative", "rrf", "weighted"] = "relative"
    alpha: float = Field(0.7, ge=0, le=1)
    k: JsonInt = Field(20, ge=1, le=MAX_K)
    offset: JsonInt = Field(0, ge=0, le=MAX_OFFSET)
    group_by: Column | None = None
    dedup: float | None = Field(None, gt=0, le=1)
    min_score: float | None = Field(None, ge=-MAX_SCORE, le=MAX_SCORE)
    cutoff: bool = False
    exact: bool = False


class SearchParams(_SearchOptions):
    """The query-string parameters of ``GET /api/search`` (unknown ones are ignored).

    One model instead of one FastAPI parameter each: FastAPI then validates the query
    string in one pydantic call instead of resolving 18 parameters one by one (about
    half of the framework's CPU time per request). Without ``q`` and ``url`` the answer
    is an empty result with a ``reason`` (a query string cannot declare "one of").
    """

    model_config = ConfigDict(extra="ignore")
    q: QueryText | None = None
    where: WhereList | None = None
    url: (
        Annotated[str, StringConstraints(max_length=MAX_URL_CHARS, pattern=r"^https?://\S+$")]
        | None
    ) = None
    rerank: bool = False
    rerank_depth: int = Field(50, ge=1, le=MAX_K)
    min_match: float | None = Field(None, ge=0.0, le=1.0)
    rerank_blend: float | None = Field(None, ge=0.0, le=1.0)


class SearchRequest(_SearchOptions):
    """The body of ``POST /api/search``: ``q``, ``terms`` or both."""

    model_config = ConfigDict(
        strict=True,
        json_schema_extra={
            "anyOf": [
                {"required": ["q"]},
                {"required": ["terms"], "properties": {"terms": {"minItems": 1}}},
            ]
        },
    )
    q: QueryText | SkipJsonSchema[None] = None
    terms: list[TermIn] = Field(default_factory=list, max_length=MAX_TERMS)
    where: WhereJson = None
    rerank: RerankIn | bool | None = None

    @model_validator(mode="after")
    def _something_to_search(self) -> SearchRequest:
        if self.q is None and not self.terms:
            raise ValueError("give q (the query language) or terms")
        return self

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
