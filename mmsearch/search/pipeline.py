"""The query pipeline: one :class:`~mmsearch.search.types.Query` through the stages.

::

    filter ids ─▶ encode ─▶ retrieve (vector legs, lexical legs, exact id) ─▶ fuse
      ─▶ exact re-score ─▶ rerank (optional) ─▶ shape ─▶ Results

:func:`run` reads one index version through the :class:`~mmsearch.search.source.SearchSource`
protocol and composes the stages; it owns the policies between them: which mode runs,
how deep each leg fetches (and deepening when shaping left too few), the exact
identifier leg, and the reason of an empty answer.

>>> results = run(snapshot, Query(terms=(QueryTerm(1.0, "text", "red dress"),), k=5))  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from mmsearch.errors import BadQueryError
from mmsearch.search import fuse as fuse_stage
from mmsearch.search import lexical, rerank, rescore, retrieve, shape
from mmsearch.search.encode import check_image_terms, encode_terms, modality
from mmsearch.search.filters import Condition
from mmsearch.search.rerank import Reranker
from mmsearch.search.rows import looks_like_identifier
from mmsearch.search.source import SearchSource
from mmsearch.search.types import Query, Results
from mmsearch.storage.schema import LEXICAL_COLUMN

#: Fewest candidates each leg brings when legs are fused (RRF needs overlap to work).
FUSION_DEPTH = 50
#: How much deeper a query with group-by or dedup fetches (folded hits leave gaps).
SHAPE_HEADROOM = 4

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _legs_pool() -> ThreadPoolExecutor:
    """The threads that run lexical legs beside encoding (made on the first hybrid query)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            # LanceDB and FAISS release the GIL: the legs overlap for real.
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mmsearch-lexical")
        return _pool


def resolve_mode(source: SearchSource, query: Query) -> str:
    """The mode a query runs in: its own, or hybrid/vector by what the index and query hold."""
    has_text = any(t.weight > 0 for t in query.text_terms)
    if query.mode is None:
        return "hybrid" if source.has_lexical and has_text else "vector"
    if query.mode != "vector":
        if not source.has_lexical and source.ann:  # an empty index answers "no items yet"
            raise BadQueryError(
                f"this index has no full-text index for {query.mode} search; "
                f"rebuild it with: mmsearch build-index --index {source.index_dir}"
            )
        if not has_text:
            raise BadQueryError(f"{query.mode} search needs a text term")
    return query.mode


def first_depth(query: Query, mode: str, kinds: list[str]) -> int:
    """How many candidates each leg fetches on the first pass."""
    depth = (query.offset + query.k) * (SHAPE_HEADROOM if (query.group_by or query.dedup) else 1)
    if mode != "vector" or len(kinds) > 1:  # fusion needs room for the legs to overlap
        depth = max(depth, FUSION_DEPTH)
    if query.rerank is not None:
        depth = max(depth, query.rerank.depth)
    return depth


def condition_text(condition: Condition) -> str:
    """A filter condition as a person wrote it (``colour in red,blue``)."""
    value = condition.value
    shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
    return f"{condition.column} {condition.op} {shown}"


class _Clock:
    """Seconds per stage, booked as the query goes."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.last = time.perf_counter()

    def tick(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now


def run(
    source: SearchSource,
    query: Query,
    *,
    reranker: Reranker | None = None,
    vector: npt.NDArray[np.float32] | None = None,
    allowed_ids: npt.NDArray[np.int64] | None = None,
    query_kind: str | None = None,
) -> Results:
    """Runs ``query`` on ``source``; see :class:`~mmsearch.search.types.Results` for the answer.

    ``vector`` (an already-encoded unit query vector, with ``query_kind`` its modality)
    runs a vector search without encoding the terms; ``allowed_ids`` restricts it to
    those ids instead of the query's filters. ``reranker`` serves ``query.rerank``.
    """
    q = query.validated()
    clock = _Clock()
    allowed = allowed_ids
    if allowed is None and q.where:
        allowed = source.rows().matching_ids(list(q.where))
    clock.tick("filter")
    mode = resolve_mode(source, q) if vector is None else "vector"
    check_image_terms(q.terms, source.image_roots)  # every mode: re-ranking opens them too
    wanted = ("image", "text") if q.kind == "any" else (q.kind,)
    kinds = [k for k in wanted if k in source.ann]
    if allowed is not None and len(allowed) == 0:
        shown = " and ".join(repr(condition_text(c)) for c in q.where)
        reason = f"no item matches the filters {shown}"
        return Results(timings=clock.timings, reason=reason, mode=mode)
    if not kinds:
        held = ", ".join(sorted(source.ann))
        reason = (
            f"the index holds no {q.kind} items; it holds: {held}"
            if held
            else "the index holds no items yet; add some with: mmsearch index PATH"
        )
        return Results(timings=clock.timings, reason=reason, mode=mode)
    return _Run(source, q, mode, kinds, allowed, reranker, clock).execute(vector, query_kind)


class _Run:
    """One query's pass through the stages (deepening until the page is full)."""

    def __init__(
        self,
        source: SearchSource,
        query: Query,
        mode: str,
        kinds: list[str],
        allowed: npt.NDArray[np.int64] | None,
        reranker: Reranker | None,
        clock: _Clock,
    ) -> None:
        self.source, self.q, self.mode, self.kinds = source, query, mode, kinds
        self.allowed, self.reranker, self.clock = allowed, reranker, clock
        self.rows = source.rows()

    def lexical_legs(self, depth: int) -> list[pa.Table]:
        q, rows = self.q, self.rows
        return lexical.lexical_legs(
            self.source.lexical_table(), LEXICAL_COLUMN, q.lexical_text, depth, self.kinds,
            negative=q.negative_words, allowed_ids=self.allowed, index_kinds=tuple(self.source.ann),
            kinds_of=rows.kinds_of,
        )  # fmt: skip

    def exact_leg(self) -> pa.Table | None:
        """The rows an identifier typed as the whole query names (``SKU-00042``), as a leg."""
        if self.mode == "vector" or not looks_like_identifier(self.q.lexical_text):
            return None
        ids = self.rows.identifier_ids(self.q.lexical_text)
        if self.allowed is not None:
            ids = ids[np.isin(ids, self.allowed)]
        id_kinds = self.rows.kinds_of(ids)
        keep = np.isin(id_kinds, self.kinds)
        return lexical.exact_leg(ids[keep], id_kinds[keep])

    def encode(
        self, vector: npt.NDArray[np.float32] | None, query_kind: str | None
    ) -> tuple[npt.NDArray[np.float32] | None, str | None]:
        source = self.source
        if vector is None and self.mode != "lexical":
            vector = encode_terms(
                source.encoder, self.q.terms, roots=source.image_roots, fetch_url=source.fetch_url
            )
            query_kind = modality(self.q.terms)
        elif vector is not None and vector.reshape(-1).shape[0] != source.dim:
            raise BadQueryError(
                f"query vector has dimension {vector.reshape(-1).shape[0]}, index has {source.dim}"
            )
        return vector, query_kind

    def execute(self, vector: npt.NDArray[np.float32] | None, query_kind: str | None) -> Results:
        q, mode, clock, source = self.q, self.mode, self.clock, self.source
        total = max(len(self.rows), 1)
        depth = first_depth(q, mode, self.kinds)
        need = q.offset + q.k
        # The lexical leg needs no query vector: it runs beside encoding and the vector leg.
        pending: Future[list[pa.Table]] | None = None
        if mode != "vector":
            pending = _legs_pool().submit(self.lexical_legs, depth)
        clock.tick("filter")
        vector, query_kind = self.encode(vector, query_kind)
        clock.tick("encode")
        floors, chance = None, None
        cutoff = q.cutoff and mode == "hybrid"
        exact = self.exact_leg()
        clock.tick("retrieve")
        while True:
            legs: list[pa.Table] = []
            if mode != "lexical":
                legs += retrieve.vector_legs(
                    source.ann, vector, min(depth, total), self.kinds, allowed_ids=self.allowed,  # type: ignore[arg-type]
                    query_kind=query_kind, exact=q.exact, nprobe=q.nprobe, refine=q.refine,
                )  # fmt: skip
            if pending is not None:
                legs += pending.result()
                pending = None
            elif mode != "vector":
                legs += self.lexical_legs(depth)
            saturated = any(leg.num_rows >= depth for leg in legs)
            if exact is not None:
                legs.append(exact)
            clock.tick("retrieve")
            if chance is None and vector is not None and (cutoff or _fuses_relative(q, legs)):
                # Measured (or read from the cache) only when a fusion or the cut-off uses
                # it: a query whose one leg keeps its own scores never pays for it.
                chance = {k: v for k, v in source.kind_chance().items() if k in self.kinds}
                floors = {k: v.floor for k, v in chance.items()} if cutoff else None
                clock.tick("shape")  # the calibration is counted as shaping's work
            candidates = fuse_stage.fuse(legs, method=q.fusion, alpha=q.alpha, chance=chance)
            clock.tick("fuse")
            candidates = rescore.rescore(candidates, vector, source.ann, self.rows, source.dim)
            clock.tick("rescore")
            reranked = rerank.rerank_stage(
                self.reranker, q, candidates, file_stats=source.file_stats
            )
            clock.tick("rerank")
            shaped = shape.shape(reranked.table, q, floors=floors)
            clock.tick("shape")
            if shaped.available >= need or not saturated or depth >= total:
                break
            depth = min(depth * 4, total)
        return self.results(shaped, reranked)

    def results(self, shaped: shape.Shaped, reranked: rerank.Reranked) -> Results:
        q = self.q
        reason = None
        if shaped.table.num_rows == 0:
            reason = _empty_reason(shaped, reranked, q, self.mode)
        out = Results.from_table(
            shaped.table, offset=q.offset, groups=shaped.groups, duplicates=shaped.duplicates,
            reason=reason, mode=self.mode, dropped=reranked.dropped,
        )  # fmt: skip
        self.clock.tick("shape")
        out.timings.update(self.clock.timings)
        return out


def _empty_reason(shaped: shape.Shaped, reranked: rerank.Reranked, query: Query, mode: str) -> str:
    """Why a query's page is empty."""
    if shaped.dropped_by_cutoff:
        return "no good match: every candidate scored below the cut-off"
    if shaped.available:
        return f"no results past offset {query.offset}"
    if reranked.reason:
        return reranked.reason
    if mode == "lexical":
        return "no good match: no item contains the query's words"
    return "no good match: the index has no items of that kind"


__all__ = ["FUSION_DEPTH", "condition_text", "first_depth", "resolve_mode", "run"]


def _fuses_relative(q: Query, legs: list[pa.Table]) -> bool:
    """Whether relative fusion will combine several ranked legs (and so needs chance levels)."""
    if q.fusion != "relative" or len(legs) < 2:
        return False
    ranked = [leg for leg in legs if leg.num_rows and leg.column("leg")[0].as_py() != "exact"]
    return len(ranked) > 1
