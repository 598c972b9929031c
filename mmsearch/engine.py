"""The query engine: one engine behind the library, the CLI and the server.

A :class:`SearchIndex` opens an index directory at its published snapshot (table
version + ANN indexes + full-text index built from it) and runs
:class:`~mmsearch.search.types.Query` objects through the stages of
:mod:`mmsearch.search`::

    filter ids ─▶ encode ─▶ retrieve (vector legs, lexical legs, exact id) ─▶ fuse
      ─▶ exact re-score ─▶ rerank (optional) ─▶ shape ─▶ Results

This module only opens the snapshot and composes the stages; each stage is a
function in its own module, tested alone.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import pyarrow as pa

from mmsearch.errors import BadQueryError, IndexNotFoundError, ModelMismatchError
from mmsearch.models.base import Encoder
from mmsearch.models.spec import ModelSpec
from mmsearch.search.builder import QueryBuilder
from mmsearch.search.encode import UrlFetcher, encode_terms, modality
from mmsearch.search.filters import Condition, from_mapping, parse_where
from mmsearch.search.language import QueryTerm, parse_query
from mmsearch.search.rerank import Reranker
from mmsearch.search.rows import ROW_COLUMNS, Rows, looks_like_identifier
from mmsearch.search.types import (
    DEFAULT_KIND,
    Kind,
    Query,
    RerankSpec,
    Results,
    SearchResult,
    check_k,
)
from mmsearch.storage.metadata_keys import normalize_metadata
from mmsearch.storage.objectstore import remote_index
from mmsearch.storage.schema import LEXICAL_COLUMN
from mmsearch.storage.snapshot import Snapshot, read_snapshot
from mmsearch.storage.table import ItemStore

#: Fewest candidates each leg brings when legs are fused (RRF needs overlap to work).
FUSION_DEPTH = 50
#: Largest kind whose chance level is measured by exact search (ANN above it).
EXACT_CHANCE_ROWS = 200_000
#: Runs the lexical leg beside encoding and the vector leg (LanceDB and FAISS release the GIL).
_LEGS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mmsearch-lexical")
QueryLike = str | os.PathLike[str] | Any  # also a PIL image or an (H, W, 3) uint8 array
WhereLike = Mapping[str, Any] | Sequence[str] | str | None

__all__ = ["Query", "QueryBuilder", "Results", "SearchIndex", "SearchResult", "open_index"]


class SearchIndex:
    """A searchable index directory.

    >>> import mmsearch
    >>> idx = mmsearch.open(".mmsearch")  # doctest: +SKIP
    >>> [r.uri for r in idx.search("a red circle on the left", k=3)]  # doctest: +SKIP
    >>> idx.query().text("SKU-00042").group_by("sku").limit(5).to_list()  # doctest: +SKIP
    """

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        *,
        model: ModelSpec | None = None,
        device: str | None = None,
        image_roots: Sequence[str | os.PathLike[str]] | None = None,
        encoder: Encoder | None = None,
        reranker: Reranker | None = None,
        fetch_url: UrlFetcher | None = None,
        backend: str = "torch",
        quantize: str | None = None,
    ) -> None:
        # An object-store URI is served from its local cache (pulled on open and reload).
        self._remote = remote_index(index_dir)
        self.index_dir = self._remote.pull() if self._remote is not None else Path(index_dir)
        self.device = device
        self.backend = backend  # torch | onnx | auto (see mmsearch.models.backends)
        self.quantize = quantize
        self.image_roots = (
            [Path(os.path.realpath(r)) for r in image_roots] if image_roots is not None else None
        )
        self.reranker = reranker
        self.fetch_url = fetch_url
        self._lock = threading.RLock()
        self._encoder = encoder
        self._rows: Rows | None = None
        self._chance: dict[str, Any] | None = None
        self._open(model)

    # -- opening ---------------------------------------------------------------------------
    def _open(self, model: ModelSpec | None) -> None:
        from mmsearch.ann import VectorIndex

        snapshot = read_snapshot(self.index_dir)
        if snapshot is None:
            if ItemStore.exists(self.index_dir):
                raise IndexNotFoundError(
                    f"index at {self.index_dir} has rows but no search index yet; "
                    f"run: mmsearch build-index --index {self.index_dir}"
                )
            raise IndexNotFoundError(
                f"no mmsearch index at {self.index_dir} (create one with: mmsearch index PATH --index {self.index_dir})"
            )
        rows = _read_rows_or_none(self.index_dir, snapshot)
        store: ItemStore | None = None
        if rows is not None:  # no LanceDB needed until something asks for the table
            rows_table, spec, dim = rows
        else:
            store = ItemStore.open(self.index_dir, version=snapshot.table_version)
            rows_table, spec, dim = None, store.model_spec, store.dim
        if model is not None and model != spec:
            raise ModelMismatchError(
                f"index at {self.index_dir} was built with model {spec.key}; cannot query it with {model.key}"
            )
        if self._encoder is not None and getattr(self._encoder, "spec", spec) != spec:
            raise ModelMismatchError(
                f"index at {self.index_dir} was built with model {spec.key}; "
                f"the encoder given is {self._encoder.spec.key}"
            )
        ann = {
            kind: VectorIndex.load(
                snapshot.ann_path(self.index_dir, kind),
                expect_table_version=snapshot.table_version,
                expect_model_key=spec.key,
                verify_checksums=False,  # sizes and ids only; full checks: `mmsearch check`
            )
            for kind in snapshot.ann_dirs
        }
        with self._lock:
            self.snapshot: Snapshot = snapshot
            self._store = store
            self._dim = dim
            self.spec = spec
            self._ann = ann
            self._rows = Rows(rows_table) if rows_table is not None else None
            self._chance = None

    def reload(self) -> bool:
        """Switches to a newer published snapshot, if any; returns whether it changed."""
        if self._remote is not None:
            self._remote.pull()
        latest = read_snapshot(self.index_dir)
        if latest is None or latest == self.snapshot:
            return False
        self._open(self.spec)
        return True

    @property
    def store(self) -> ItemStore:
        """The items table at the snapshot's version (opened on first use)."""
        with self._lock:
            if self._store is None:
                self._store = ItemStore.open(self.index_dir, version=self.snapshot.table_version)
            return self._store

    @property
    def stale(self) -> bool:
        """True when the table has commits newer than the snapshot being served."""
        from mmsearch.maintenance.info import latest_table_version

        latest = latest_table_version(self.index_dir)  # file names only: no LanceDB
        if latest is not None:
            return latest > self.snapshot.table_version
        try:
            return ItemStore.open(self.index_dir).version > self.snapshot.table_version
        except IndexNotFoundError:
            return False

    @property
    def encoder(self) -> Encoder:
        with self._lock:
            if self._encoder is None:
                from mmsearch.models.backends import check_backend, load_encoder

                encoder = load_encoder(self.spec, device=self.device, backend=self.backend, quantize=self.quantize)
                check_backend(self.index_dir, encoder, record=False)
                self._encoder = encoder
            return self._encoder

    @property
    def has_lexical(self) -> bool:
        """True when the snapshot has a full-text index (hybrid and lexical modes work)."""
        return bool(self.snapshot.lexical_index)

    def _rows_view(self) -> Rows:
        with self._lock:
            if self._rows is None:
                self._rows = Rows(self.store.scan(ROW_COLUMNS))
            return self._rows

    def kind_chance(self) -> dict[str, Any]:
        """Per-kind chance levels (:class:`~mmsearch.search.calibrate.Chance`), once per snapshot.

        Relative fusion measures vector hits against them and hybrid's cut-off uses their
        floors (see :mod:`mmsearch.search.calibrate`). Probes search exactly up to
        :data:`EXACT_CHANCE_ROWS` rows of a kind, through the ANN index above that.
        """
        from mmsearch.search.calibrate import CHANCE_DEPTH, kind_chance, probe_texts

        with self._lock:
            if self._chance is None:
                probes = np.asarray(self.encoder.encode_texts(probe_texts()), np.float32)
                top = {}
                for kind, index in self._ann.items():
                    if len(index):
                        depth, exact = min(CHANCE_DEPTH, len(index)), len(index) <= EXACT_CHANCE_ROWS
                        scores, _ = index.search(probes, depth, exact=exact)
                        top[kind] = np.where(scores > -np.inf, scores, np.nan)
                self._chance = kind_chance({k: _dense(v) for k, v in top.items()})
            return self._chance

    def __len__(self) -> int:
        return sum(len(a) for a in self._ann.values())

    def info(self) -> dict[str, Any]:
        """Row count, model, snapshot, full-text index and per-kind ANN parameters."""
        return {
            "index_dir": str(self.index_dir),
            "model": self.spec.key,
            "dim": self._dim,
            "rows": self.store.count(),
            "table_version": self.snapshot.table_version,
            "stale": self.stale,
            "lexical_index": self.snapshot.lexical_index,
            "ann": {kind: dict(a.info) for kind, a in self._ann.items()},
        }

    def image_path(self, item_id: int) -> str | None:
        """Local file path of an indexed image, by id (None for unknown ids and texts)."""
        from mmsearch.uris import uri_to_path

        found = self._rows_view().uri_of(int(item_id))
        if found is None or found[1] != "image":
            return None
        return uri_to_path(found[0])

    # -- building queries ------------------------------------------------------------------
    def query(self) -> QueryBuilder:
        """A fluent query builder bound to this index (see :class:`QueryBuilder`)."""
        return QueryBuilder(self)

    @staticmethod
    def terms_of(query: QueryLike, *, literal: bool = False) -> tuple[QueryTerm, ...]:
        """The terms of a query-language string, a path, a PIL image or an array."""
        if isinstance(query, str):
            return tuple(parse_query(query, literal=literal))
        if isinstance(query, os.PathLike):
            return (QueryTerm(1.0, "image", os.fspath(query)),)
        return (QueryTerm(1.0, "image", query),)

    @staticmethod
    def conditions_of(where: WhereLike) -> tuple[Condition, ...]:
        """Typed conditions from a mapping, one condition string, or a list of them."""
        if not where:
            return ()
        if isinstance(where, Mapping):
            return tuple(from_mapping(where))
        if isinstance(where, str):
            return tuple(parse_where([where]))
        return tuple(parse_where(list(where)))

    def encode_query(self, query: QueryLike) -> npt.NDArray[np.float32]:
        """The unit query vector of a text, a query-language string, an image path, PIL image or array."""
        return encode_terms(
            self.encoder, self.terms_of(query), roots=self.image_roots, fetch_url=self.fetch_url
        )

    # -- searching -------------------------------------------------------------------------
    def search(
        self,
        query: QueryLike,
        k: int = 10,
        *,
        kind: Kind = DEFAULT_KIND,
        where: WhereLike = None,
        mode: str | None = None,
        fusion: str = "relative",
        alpha: float = 0.7,
        offset: int = 0,
        group_by: str | None = None,
        dedup: float | None = None,
        min_score: float | None = None,
        cutoff: bool = False,
        rerank: bool | RerankSpec = False,
        literal: bool = False,
        exact: bool = False,
        nprobe: int | None = None,
        refine: int | None = None,
    ) -> Results:
        """Top-``k`` items for a query (text, query string, image path, PIL image or array).

        ``kind`` restricts results to images or texts; ``where`` filters on metadata:
        ``{"category": "buttons", "price": ("<", 20)}`` or ``["price < 20", "colour in red,blue"]``
        (see :mod:`mmsearch.search.filters`); ``mode`` is ``vector``, ``lexical`` or ``hybrid``
        (default: hybrid when the index has a full-text index and the query has text);
        ``fusion`` is how hybrid merges its legs: ``relative`` (each leg by how far it beats
        the index's chance level; see :mod:`mmsearch.search.fuse`), ``rrf`` or ``weighted``
        (``alpha`` = weight of the vector legs); ``literal`` takes a string as one text term; ``min_score`` drops hits below a cosine
        similarity; ``cutoff`` (hybrid) answers nothing, with a reason, when no hit beats
        the index's calibrated chance level and no word matched. ``exact`` bypasses the ANN index;
        ``nprobe``/``refine`` override its tuned parameters. Returns :class:`Results`.
        """
        check_k(k)
        q = Query(
            terms=self.terms_of(query, literal=literal),
            where=self.conditions_of(where),
            kind=kind,
            mode=mode,  # type: ignore[arg-type]
            fusion=fusion,  # type: ignore[arg-type]
            alpha=alpha,
            k=k,
            offset=offset,
            group_by=group_by,
            dedup=dedup,
            min_score=min_score,
            cutoff=cutoff,
            rerank=(RerankSpec() if rerank is True else (rerank or None)),
            exact=exact,
            nprobe=nprobe,
            refine=refine,
        )
        return self.run(q)

    def search_vector(
        self,
        vector: npt.NDArray[np.float32],
        k: int = 10,
        *,
        kind: Kind = DEFAULT_KIND,
        exact: bool = False,
        nprobe: int | None = None,
        refine: int | None = None,
        allowed_ids: npt.NDArray[np.int64] | None = None,
        query_kind: str | None = None,
    ) -> Results:
        """Top-``k`` items for an already-encoded unit vector (optionally among ``allowed_ids``)."""
        check_k(k)
        q = Query(
            terms=(QueryTerm(1.0, "text", "<vector>"),),
            kind=kind,
            mode="vector",
            k=k,
            exact=exact,
            nprobe=nprobe,
            refine=refine,
        ).validated()
        return self._execute(
            q, vector=np.asarray(vector, np.float32), allowed=allowed_ids, query_kind=query_kind
        )

    def resolve_mode(self, query: Query) -> str:
        """The mode a query runs in: its own, or hybrid/vector by what the index and query hold."""
        has_text = any(t.weight > 0 for t in query.text_terms)
        if query.mode is None:
            return "hybrid" if self.has_lexical and has_text else "vector"
        if query.mode != "vector":
            if not self.has_lexical:
                raise BadQueryError(
                    f"this index has no full-text index for {query.mode} search; "
                    f"rebuild it with: mmsearch build-index --index {self.index_dir}"
                )
            if not has_text:
                raise BadQueryError(f"{query.mode} search needs a text term")
        return query.mode

    def run(self, query: Query) -> Results:
        """Runs a query object through the stages; see :class:`Results` for the answer."""
        q = query.validated()
        started = time.perf_counter()
        allowed = self._rows_view().matching_ids(list(q.where)) if q.where else None
        filter_s = time.perf_counter() - started
        results = self._execute(q, allowed=allowed)
        results.timings["filter"] += filter_s
        return results

    def _execute(
        self,
        q: Query,
        *,
        vector: npt.NDArray[np.float32] | None = None,
        allowed: npt.NDArray[np.int64] | None = None,
        query_kind: str | None = None,
    ) -> Results:
        from mmsearch.search import fuse as fuse_stage
        from mmsearch.search import lexical, rerank, rescore, retrieve, shape

        timings: dict[str, float] = {}

        def tick(stage: str, since: float) -> float:
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + now - since
            return now

        mode = self.resolve_mode(q) if vector is None else "vector"
        rows = self._rows_view()
        wanted = ("image", "text") if q.kind == "any" else (q.kind,)
        kinds = [k for k in wanted if k in self._ann]
        if allowed is not None and len(allowed) == 0:
            shown = " and ".join(repr(_condition_text(c)) for c in q.where)
            return Results(
                timings=timings, reason=f"no item matches the filters {shown}", mode=mode
            )
        if not kinds:
            held = ", ".join(sorted(self._ann)) or "nothing"
            reason = f"the index holds no {q.kind} items; it holds: {held}"
            return Results(timings=timings, reason=reason, mode=mode)
        need = q.offset + q.k
        depth = need * (4 if (q.group_by or q.dedup) else 1)
        if mode != "vector" or len(kinds) > 1:  # fusion needs room for the legs to overlap
            depth = max(depth, FUSION_DEPTH)
        if q.rerank is not None:
            depth = max(depth, q.rerank.depth)
        total = max(len(rows), 1)

        def lexical_legs(depth: int) -> list[Any]:
            return lexical.lexical_legs(
                self.store.table, LEXICAL_COLUMN, q.lexical_text, depth, kinds,
                negative=q.negative_words, allowed_ids=allowed, index_kinds=tuple(self._ann),
                kinds_of=rows.kinds_of,
            )  # fmt: skip

        # The lexical leg needs no query vector: it runs beside encoding and the vector leg.
        pending = _LEGS.submit(lexical_legs, depth) if mode != "vector" else None
        t = time.perf_counter()
        if vector is None and mode != "lexical":
            vector = encode_terms(
                self.encoder, q.terms, roots=self.image_roots, fetch_url=self.fetch_url
            )
            query_kind = modality(q.terms)
        elif vector is not None and vector.reshape(-1).shape[0] != self._dim:
            raise BadQueryError(
                f"query vector has dimension {vector.reshape(-1).shape[0]}, index has {self._dim}"
            )
        t = tick("encode", t)
        floors, chance = None, None
        if mode == "hybrid" and vector is not None and (q.cutoff or q.fusion == "relative"):
            chance = {k: v for k, v in self.kind_chance().items() if k in kinds}
            floors = {k: v.floor for k, v in chance.items()} if q.cutoff else None
        t = tick("rescore", t)
        exact_ids = None
        if mode != "vector" and looks_like_identifier(q.lexical_text):
            exact_ids = rows.identifier_ids(q.lexical_text)
            if allowed is not None:
                exact_ids = exact_ids[np.isin(exact_ids, allowed)]
            id_kinds = rows.kinds_of(exact_ids)
            keep = np.isin(id_kinds, kinds)
            exact_leg = lexical.exact_leg(exact_ids[keep], id_kinds[keep])
        t = tick("retrieve", t)
        while True:
            legs = []
            if mode != "lexical":
                legs += retrieve.vector_legs(
                    self._ann, vector, min(depth, total), kinds, allowed_ids=allowed, query_kind=query_kind,
                    exact=q.exact, nprobe=q.nprobe, refine=q.refine,
                )  # fmt: skip
            if pending is not None:
                legs += pending.result()
                pending = None
            elif mode != "vector":
                legs += lexical_legs(depth)
            saturated = any(leg.num_rows >= depth for leg in legs)
            if exact_ids is not None:
                legs.append(exact_leg)
            t = tick("retrieve", t)
            candidates = fuse_stage.fuse(legs, method=q.fusion, alpha=q.alpha, chance=chance)
            t = tick("fuse", t)
            candidates = rescore.rescore(candidates, vector, self._ann, rows, self._dim)
            t = tick("rescore", t)
            candidates = rerank.rerank_stage(self.reranker, q, candidates)
            t = tick("rerank", t)
            shaped = shape.shape(candidates, q, floors=floors)
            t = tick("shape", t)
            if shaped.available >= need or not saturated or depth >= total:
                break
            depth = min(depth * 4, total)
        hits = self._hits(shaped, q.offset)
        t = tick("shape", t)
        reason = None
        if not hits:
            if shaped.dropped_by_cutoff:
                reason = "no good match: every candidate scored below the cut-off"
            elif shaped.available:
                reason = f"no results past offset {q.offset}"
            elif mode == "lexical":
                reason = "no good match: no item contains the query's words"
            else:
                reason = "no good match: the index has no items of that kind"
        return Results(hits, timings=timings, reason=reason, mode=mode)

    @staticmethod
    def _hits(shaped: Any, offset: int) -> list[SearchResult]:
        table = shaped.table
        cols = {
            name: table.column(name).to_pylist()
            for name in ("id", "uri", "kind", "text", "score", "similarity", "metadata")
        }
        out = []
        for i in range(table.num_rows):
            meta = cols["metadata"][i]
            out.append(
                SearchResult(
                    rank=offset + i + 1,
                    id=int(cols["id"][i]),
                    uri=cols["uri"][i],
                    kind=cols["kind"][i],
                    text=cols["text"][i],
                    score=float(cols["score"][i]),
                    metadata=normalize_metadata(json.loads(meta)) if meta else {},
                    similarity=None
                    if cols["similarity"][i] is None
                    else float(cols["similarity"][i]),
                    group=tuple(shaped.groups[i]),
                    duplicates=tuple(shaped.duplicates[i]),
                )
            )
        return out


def _dense(top: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Probe rows without a missing hit (an ANN search may return fewer than asked)."""
    keep = ~np.isnan(top).any(axis=1)
    return top[keep] if keep.any() else top[:, :1][~np.isnan(top[:, 0])]


def _condition_text(condition: Any) -> str:
    """A filter condition as a person wrote it (``colour in red,blue``)."""
    value = condition.value
    shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
    return f"{condition.column} {condition.op} {shown}"


def _read_rows_or_none(index_dir: Path, snapshot: Snapshot) -> tuple[pa.Table, ModelSpec, int] | None:
    """The snapshot's rows file (see :mod:`mmsearch.storage.rowsfile`), or None to use the table."""
    import pyarrow as pa

    from mmsearch.storage.rowsfile import read_rows_file, rows_file_path

    try:
        return read_rows_file(rows_file_path(index_dir, snapshot))
    except (OSError, KeyError, ValueError, pa.ArrowException):  # absent (older index) or unreadable
        return None


def open_index(index_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> SearchIndex:
    """Opens an index for searching (``$MMSEARCH_INDEX`` or ``./.mmsearch`` by default)."""
    from mmsearch.storage.table import default_index_dir

    return SearchIndex(index_dir if index_dir is not None else default_index_dir(), **kwargs)
