"""The query object, the candidates tables the stages pass along, and the results.

A :class:`Query` is plain data: the fluent builder, the query-language parser, the
CLI and the server all produce one, and :func:`mmsearch.search.pipeline.run`
runs it. Stages exchange Arrow tables:

* a *leg* table (one retrieval leg's hits): ``id, kind, score, rank, leg``
  (see :data:`LEG_SCHEMA`);
* the *candidates* table, after fusion: ``id, kind, score, similarity, exact, legs``
  (see :data:`CANDIDATES_SCHEMA`); the re-score stage adds ``vector`` and the row
  columns ``uri, text, metadata``, which is what a :class:`~mmsearch.search.rerank.Reranker`
  receives.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pyarrow as pa

from mmsearch.errors import BadQueryError
from mmsearch.search.filters import Condition
from mmsearch.search.language import TERM_KINDS, QueryTerm
from mmsearch.search.limits import DEFAULT_KIND, MAX_K, MAX_OFFSET
from mmsearch.storage.metadata_keys import normalize_metadata

Kind = Literal["image", "text", "any"]
Mode = Literal["vector", "lexical", "hybrid"]
Fusion = Literal["relative", "rrf", "weighted"]

KINDS: tuple[str, ...] = ("image", "text", "any")
MODES: tuple[str, ...] = ("vector", "lexical", "hybrid")
FUSIONS: tuple[str, ...] = ("relative", "rrf", "weighted")
#: Reciprocal rank fusion constant (Cormack et al. 2009; LanceDB and Elasticsearch use 60).
RRF_K = 60
#: Stage names, in order; :attr:`Results.timings` has one entry per stage.
STAGES: tuple[str, ...] = ("encode", "retrieve", "fuse", "filter", "rescore", "rerank", "shape")

LEG_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("kind", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("rank", pa.int32()),
        pa.field("leg", pa.string()),
    ]
)
CANDIDATES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("kind", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("similarity", pa.float32()),  # cosine to the query vector; null without one
        pa.field("exact", pa.bool_()),  # an exact identifier match
        pa.field("legs", pa.string()),  # the legs that found it, comma-separated
        pa.field("score_kind", pa.string()),  # what ``score`` is: one of SCORE_KINDS
    ]
)
#: What a result's ``score`` can be: a cosine (one vector leg), BM25 (one lexical leg),
#: a fused score (relative, rrf, weighted: see mmsearch.search.fuse), the re-ranker's
#: match probability (itm), or that probability blended with the first stage's (blend).
SCORE_KINDS: tuple[str, ...] = ("cosine", "bm25", "relative", "rrf", "weighted", "itm", "blend")


@dataclass(frozen=True)
class RerankSpec:
    """Re-ranking of the top ``depth`` candidates by a :class:`~mmsearch.search.rerank.Reranker`.

    ``min_match`` drops candidates the reranker scores below it; ``blend`` mixes the
    reranker's score with the retrieval score (``blend`` × rerank + (1 − ``blend``) ×
    retrieval); None keeps the reranker's own score.
    """

    depth: int = 50
    min_match: float | None = None
    blend: float | None = None


@dataclass(frozen=True)
class Query:
    """A search request as data. Build one with :meth:`SearchIndex.query` or :func:`from_string`.

    ``mode`` None means automatic: ``hybrid`` when the index has a full-text index and
    the query has text terms, else ``vector``. ``cutoff`` turns on hybrid's calibrated
    "no good match" cut-off (see :mod:`mmsearch.search.calibrate`).
    """

    terms: tuple[QueryTerm, ...] = ()
    where: tuple[Condition, ...] = ()
    kind: Kind = DEFAULT_KIND
    mode: Mode | None = None
    fusion: Fusion = "relative"
    alpha: float = 0.7
    k: int = 10
    offset: int = 0
    group_by: str | None = None
    dedup: float | None = None
    min_score: float | None = None
    cutoff: bool = False
    rerank: RerankSpec | None = None
    exact: bool = False
    nprobe: int | None = None
    refine: int | None = None

    def validated(self) -> Query:
        """Returns self, or raises :class:`BadQueryError` naming the first bad field."""
        if not self.terms:
            raise BadQueryError("a query needs at least one term (text or image)")
        for term in self.terms:
            if term.kind not in TERM_KINDS:
                raise BadQueryError(
                    f"term kind must be one of {', '.join(TERM_KINDS)}, not {term.kind!r}"
                )
            if not isinstance(term.weight, (int, float)) or not math.isfinite(term.weight):
                raise BadQueryError("term weights must be finite numbers")
            if term.kind == "text" and (not isinstance(term.value, str) or not term.value.strip()):
                raise BadQueryError("a text term must be a non-empty string")
        if all(t.weight <= 0 for t in self.terms):
            raise BadQueryError("a query needs at least one positive term")
        if self.kind not in KINDS:
            raise BadQueryError(f"kind must be image, text or any, not {self.kind!r}")
        if self.mode is not None and self.mode not in MODES:
            raise BadQueryError(f"mode must be vector, lexical or hybrid, not {self.mode!r}")
        if self.fusion not in FUSIONS:
            raise BadQueryError(f"fusion must be relative, rrf or weighted, not {self.fusion!r}")
        check_k(self.k)
        if (
            isinstance(self.offset, bool)
            or not isinstance(self.offset, int)
            or not 0 <= self.offset <= MAX_OFFSET
        ):
            raise BadQueryError(f"offset must be an integer between 0 and {MAX_OFFSET}")
        if not _is_number(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            raise BadQueryError("alpha must be between 0 and 1")
        if self.dedup is not None and (not _is_number(self.dedup) or not 0.0 < self.dedup <= 1.0):
            raise BadQueryError("dedup must be a cosine threshold in (0, 1]")
        if self.min_score is not None and not _is_number(self.min_score):
            raise BadQueryError("min_score must be a number")
        if self.group_by is not None and (not isinstance(self.group_by, str) or not self.group_by):
            raise BadQueryError("group_by must be a metadata column name")
        if self.rerank is not None:
            depth = self.rerank.depth
            if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_K:
                raise BadQueryError(f"rerank depth must be an integer between 1 and {MAX_K}")
            if self.rerank.blend is not None and not (
                _is_number(self.rerank.blend) and 0.0 <= self.rerank.blend <= 1.0
            ):
                raise BadQueryError("rerank blend must be between 0 and 1")
            if self.rerank.min_match is not None and not (
                _is_number(self.rerank.min_match) and 0.0 <= self.rerank.min_match <= 1.0
            ):
                raise BadQueryError("rerank min_match must be a match probability in [0, 1]")
        return self

    @property
    def text_terms(self) -> list[QueryTerm]:
        return [t for t in self.terms if t.kind == "text"]

    @property
    def lexical_text(self) -> str:
        """The words the lexical leg looks for: every positive text term."""
        return " ".join(str(t.value) for t in self.text_terms if t.weight > 0)

    @property
    def negative_words(self) -> str:
        """Words of negative text terms: the lexical leg excludes rows holding them."""
        return " ".join(str(t.value) for t in self.text_terms if t.weight < 0)

    def with_(self, **changes: Any) -> Query:
        return replace(self, **changes)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_k(k: object) -> int:
    """``k`` if it is an integer in ``1..MAX_K``; else :class:`BadQueryError`."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise BadQueryError(f"k must be an integer between 1 and {MAX_K}")
    return k


@dataclass(frozen=True)
class SearchResult:
    """One hit. ``uri`` is the item's stored location (file path, or ``collection#row-id``).

    ``score`` orders the results and ``score_kind`` says what it is (see
    :data:`SCORE_KINDS`): ``cosine`` for a vector search of one kind, ``bm25`` for a
    lexical one, the fusion's name when legs were fused, ``itm`` / ``blend`` after
    re-ranking. ``cosine`` is the item's cosine similarity to the query vector whenever
    the query had one (None in lexical mode). ``group`` holds the ids of the other
    matching items of a group-by key, and ``duplicates`` those of near-duplicates folded
    into this hit.
    """

    rank: int
    id: int
    uri: str
    kind: str
    text: str | None
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    cosine: float | None = None
    group: tuple[int, ...] = ()
    duplicates: tuple[int, ...] = ()
    score_kind: str = "cosine"

    @property
    def similarity(self) -> float | None:
        """The former name of :attr:`cosine` (kept for older callers)."""
        return self.cosine

    @property
    def path(self) -> str | None:
        """The local file path of an image hit (lossless for non-UTF-8 names)."""
        if self.kind != "image":
            return None
        from mmsearch.uris import uri_to_path

        return uri_to_path(self.uri)

    def to_dict(self) -> dict[str, Any]:
        """The hit as JSON-ready data (every field is described in the README)."""
        out: dict[str, Any] = {
            "rank": self.rank,
            "id": self.id,
            "uri": self.uri,
            "kind": self.kind,
            "text": self.text,
            "score": round(self.score, 6),
            "score_kind": self.score_kind,
            "cosine": None if self.cosine is None else round(self.cosine, 6),
            "metadata": self.metadata,
        }
        if self.group:
            out["group"] = list(self.group)
        if self.duplicates:
            out["duplicates"] = list(self.duplicates)
        return out


@dataclass(frozen=True)
class DroppedCandidate:
    """A candidate the re-rank stage left out, with the reason (``vanished since indexing``...)."""

    id: int
    uri: str
    reason: str


class Results(list[SearchResult]):
    """The hits of one query, best first, plus how long each stage took.

    A list of :class:`SearchResult`; ``timings`` maps each stage of :data:`STAGES` to
    seconds; ``reason`` says why the list is empty (or is None); ``mode`` is the mode
    that ran; ``dropped`` lists the candidates re-ranking had to leave out (a file that
    vanished or changed since indexing); :attr:`score_kind` what the hits' scores are.
    """

    def __init__(
        self,
        hits: Iterable[SearchResult] = (),
        *,
        timings: Mapping[str, float] | None = None,
        reason: str | None = None,
        mode: str | None = None,
        dropped: Iterable[DroppedCandidate] = (),
    ) -> None:
        super().__init__(hits)
        self.timings: dict[str, float] = {stage: 0.0 for stage in STAGES}
        self.timings.update(timings or {})
        self.reason = reason
        self.mode = mode
        self.dropped: list[DroppedCandidate] = list(dropped)

    @property
    def score_kind(self) -> str | None:
        """What the scores are (:data:`SCORE_KINDS`): the kinds of the hits, ``+``-joined
        when they differ (a re-ranker leaves hits it cannot judge their first-stage
        score); None without hits."""
        kinds = list(dict.fromkeys(hit.score_kind for hit in self))
        return "+".join(kinds) if kinds else None

    @classmethod
    def from_table(
        cls,
        table: pa.Table,
        *,
        offset: int = 0,
        groups: Sequence[Sequence[int]] | None = None,
        duplicates: Sequence[Sequence[int]] | None = None,
        timings: Mapping[str, float] | None = None,
        reason: str | None = None,
        mode: str | None = None,
        dropped: Iterable[DroppedCandidate] = (),
    ) -> Results:
        """Hits from a shaped candidates table (``id, uri, kind, text, score, similarity,
        metadata, score_kind``), ranked from ``offset + 1``; ``groups``/``duplicates`` align
        with its rows."""
        cols = {
            name: table.column(name).to_pylist()
            for name in ("id", "uri", "kind", "text", "score", "similarity", "metadata")
        }
        kinds = (
            table.column("score_kind").to_pylist()
            if "score_kind" in table.column_names
            else ["cosine"] * table.num_rows
        )
        hits = []
        for i in range(table.num_rows):
            meta = cols["metadata"][i]
            similarity = cols["similarity"][i]
            hits.append(
                SearchResult(
                    rank=offset + i + 1,
                    id=int(cols["id"][i]),
                    uri=cols["uri"][i],
                    kind=cols["kind"][i],
                    text=cols["text"][i],
                    score=float(cols["score"][i]),
                    metadata=normalize_metadata(json.loads(meta)) if meta else {},
                    cosine=None if similarity is None else float(similarity),
                    group=tuple(groups[i]) if groups is not None else (),
                    duplicates=tuple(duplicates[i]) if duplicates is not None else (),
                    score_kind=kinds[i] or "cosine",
                )
            )
        return cls(hits, timings=timings, reason=reason, mode=mode, dropped=dropped)

    def to_list(self) -> list[dict[str, Any]]:
        """Plain dicts, ready for JSON."""
        return [hit.to_dict() for hit in self]

    def to_arrow(self) -> pa.Table:
        """One row per hit: rank, id, uri, kind, text, score, score_kind, cosine, metadata (JSON), group, duplicates."""
        return pa.table(
            {
                "rank": pa.array([h.rank for h in self], pa.int32()),
                "id": pa.array([h.id for h in self], pa.int64()),
                "uri": pa.array([h.uri for h in self], pa.string()),
                "kind": pa.array([h.kind for h in self], pa.string()),
                "text": pa.array([h.text for h in self], pa.string()),
                "score": pa.array([h.score for h in self], pa.float64()),
                "score_kind": pa.array([h.score_kind for h in self], pa.string()),
                "cosine": pa.array([h.cosine for h in self], pa.float32()),
                "metadata": pa.array(
                    [json.dumps(h.metadata, sort_keys=True) for h in self], pa.string()
                ),
                "group": pa.array([list(h.group) for h in self], pa.list_(pa.int64())),
                "duplicates": pa.array([list(h.duplicates) for h in self], pa.list_(pa.int64())),
            }
        )

    def to_pandas(self) -> Any:
        """A pandas DataFrame of :meth:`to_arrow` (needs pandas)."""
        return self.to_arrow().to_pandas()
