"""The query engine: one engine behind the library, the CLI and the server.

A :class:`SearchIndex` holds the index's published snapshot open
(:class:`~mmsearch.engine.snapshot.IndexSnapshot`) and runs
:class:`~mmsearch.search.types.Query` objects on it with
:func:`mmsearch.search.pipeline.run`. It only builds queries, swaps snapshots and
loads the re-ranker on demand; the snapshot and the stages do the work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mmsearch.engine.records import RecordWriter
from mmsearch.engine.snapshot import IndexSnapshot, LazyEncoder
from mmsearch.models.base import Encoder
from mmsearch.models.spec import ModelSpec
from mmsearch.search import pipeline
from mmsearch.search.builder import QueryBuilder
from mmsearch.search.encode import UrlFetcher, encode_terms
from mmsearch.search.language import QueryTerm
from mmsearch.search.limits import DEFAULT_KIND
from mmsearch.search.request import QueryLike, WhereLike, make_query, query_terms
from mmsearch.search.rerank import Reranker
from mmsearch.search.types import Kind, Query, RerankSpec, Results, SearchResult
from mmsearch.storage.snapshot import Snapshot
from mmsearch.storage.table import ItemStore

__all__ = ["Query", "QueryBuilder", "Results", "SearchIndex", "SearchResult", "open_index"]

#: The terms of a query that arrives as a vector (they are never encoded).
_VECTOR_TERMS = (QueryTerm(1.0, "text", "<vector>"),)


class SearchIndex(RecordWriter):
    """A searchable index directory (or object-store URI, served from its local cache).

    ``reranker``: the :class:`~mmsearch.search.rerank.Reranker` of re-ranked queries, or an
    ITM model name; without it the first such query loads the index's recorded model, else
    the default, as ``query --rerank`` does (:func:`mmsearch.rerank.reranker_for`).

    >>> idx = mmsearch.open(".mmsearch")  # doctest: +SKIP
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
        reranker: Reranker | str | None = None,
        fetch_url: UrlFetcher | None = None,
        backend: str = "torch",
        quantize: str | None = None,
    ) -> None:
        self.device = device
        encoders = LazyEncoder(encoder, device=device, backend=backend, quantize=quantize)
        self.current = IndexSnapshot.open(
            index_dir, encoders=encoders, model=model, image_roots=image_roots, fetch_url=fetch_url
        )
        self.index_dir: Path = self.current.index_dir
        self.reranker: Reranker | None = _reranker_for(self.index_dir, reranker, device=device) if isinstance(reranker, str) else reranker  # fmt: skip
        self._lock = threading.Lock()
        self._location = index_dir  # as given: writers work on it (a folder, or the URI)

    def reload(self) -> bool:
        """Switches to a newer published snapshot, if any; returns whether it changed."""
        latest, before = self.current.reload(), self.current
        self.current = latest  # queries already running finish on the one they took
        return latest is not before

    @property
    def snapshot(self) -> Snapshot:
        """The published snapshot record being served."""
        return self.current.published

    @property
    def spec(self) -> ModelSpec:
        return self.current.spec

    @property
    def store(self) -> ItemStore:
        """The items table at the snapshot's version (opened on first use)."""
        return self.current.store

    @property
    def stale(self) -> bool:
        """True when the table has commits newer than the snapshot being served."""
        return self.current.stale

    @property
    def encoder(self) -> Encoder:
        return self.current.encoder

    @property
    def has_lexical(self) -> bool:
        """True when the snapshot has a full-text index (hybrid and lexical modes work)."""
        return self.current.has_lexical

    def __len__(self) -> int:
        return len(self.current)

    def info(self) -> dict[str, Any]:
        """Row count, model, snapshot, full-text index and per-kind ANN parameters."""
        return self.current.info()

    def query(self) -> QueryBuilder:
        """A fluent query builder bound to this index (see :class:`QueryBuilder`)."""
        return QueryBuilder(self)

    def encode_query(self, query: QueryLike) -> npt.NDArray[np.float32]:
        """The unit query vector of a text, a query-language string, an image path, PIL image or array."""
        snap = self.current
        terms = query_terms(query)
        return encode_terms(snap.encoder, terms, roots=snap.image_roots, fetch_url=snap.fetch_url)

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

        ``where``: ``{"category": "buttons", "price": ("<", 20)}`` or ``["price < 20"]``
        (:mod:`mmsearch.search.filters`); ``mode``: ``vector``, ``lexical`` or ``hybrid``
        (default: hybrid when the index has a full-text index and the query has text);
        ``fusion`` (hybrid): ``relative`` (each leg by how far it beats the index's chance
        level, :mod:`mmsearch.search.fuse`), ``rrf`` or ``weighted`` (``alpha``: vector legs);
        ``literal``: a string is one text term; ``cutoff`` (hybrid): nothing, with a reason,
        when no hit beats the index's chance level and no word matched; ``rerank``: True or
        a :class:`RerankSpec`; ``exact``/``nprobe``/``refine``: ANN overrides. See :class:`Query`.
        """
        return self.run(make_query(
            query, literal=literal, where=where, rerank=rerank, kind=kind, mode=mode, fusion=fusion,
            alpha=alpha, k=k, offset=offset, group_by=group_by, dedup=dedup, min_score=min_score,
            cutoff=cutoff, exact=exact, nprobe=nprobe, refine=refine,
        ))  # fmt: skip

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
        q = Query(terms=_VECTOR_TERMS, kind=kind, mode="vector", k=k, exact=exact, nprobe=nprobe, refine=refine)  # fmt: skip
        with (snap := self.current).store_reads():  # one snapshot, whatever a reload swaps in
            return pipeline.run(snap, q, vector=np.asarray(vector, np.float32), allowed_ids=allowed_ids, query_kind=query_kind)  # fmt: skip

    def run(self, query: Query) -> Results:
        """Runs a query object through the stages; see :class:`Results` for the answer."""
        reranker = self.reranker
        if query.rerank is not None and reranker is None:
            with self._lock:  # one load, however many queries ask at once
                if self.reranker is None:
                    self.reranker = _reranker_for(self.index_dir, None, device=self.device)
                reranker = self.reranker
        with (snap := self.current).store_reads():
            return pipeline.run(snap, query, reranker=reranker)


def _reranker_for(index_dir: Path, model: str | None, *, device: str | None) -> Reranker:
    # Imported on use: the ITM code (PIL, transformers) costs a plain query's start-up.
    from mmsearch.rerank import reranker_for

    return reranker_for(index_dir, model, device=device)


def open_index(index_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> SearchIndex:
    """Opens an index for searching (``$MMSEARCH_INDEX`` or ``./.mmsearch`` by default)."""
    from mmsearch.storage.table import default_index_dir

    return SearchIndex(index_dir if index_dir is not None else default_index_dir(), **kwargs)
