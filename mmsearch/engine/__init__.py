"""The query engine: one engine behind the library, the CLI and the server.

A :class:`SearchIndex` holds the index's published snapshot open
(:class:`~mmsearch.engine.snapshot.IndexSnapshot`) and runs
:class:`~mmsearch.search.types.Query` objects on it with
:func:`mmsearch.search.pipeline.run`. It only builds queries, swaps snapshots and
loads the re-ranker on demand; the snapshot and the stages do the work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mmsearch.engine.snapshot import IndexSnapshot, LazyEncoder
from mmsearch.models.base import Encoder
from mmsearch.models.spec import ModelSpec
from mmsearch.search import pipeline
from mmsearch.search.builder import QueryBuilder
from mmsearch.search.encode import UrlFetcher, encode_terms
from mmsearch.search.language import QueryTerm
from mmsearch.search.request import QueryLike, WhereLike, make_query, query_terms
from mmsearch.search.rerank import Reranker
from mmsearch.search.types import DEFAULT_KIND, Kind, Query, RerankSpec, Results, SearchResult
from mmsearch.storage.snapshot import Snapshot
from mmsearch.storage.table import ItemStore

__all__ = ["Query", "QueryBuilder", "Results", "SearchIndex", "SearchResult", "open_index"]


class SearchIndex:
    """A searchable index directory (or object-store URI, served from its local cache).

    ``reranker``: the :class:`~mmsearch.search.rerank.Reranker` of queries that ask for
    re-ranking.

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
        self.device = device
        encoders = LazyEncoder(encoder, device=device, backend=backend, quantize=quantize)
        self.current = IndexSnapshot.open(
            index_dir, encoders=encoders, model=model, image_roots=image_roots, fetch_url=fetch_url
        )
        self.index_dir: Path = self.current.index_dir
        self.reranker = reranker

    # -- the snapshot served ---------------------------------------------------------------
    def reload(self) -> bool:
        """Switches to a newer published snapshot, if any; returns whether it changed."""
        latest = self.current.reload()
        changed = latest is not self.current
        self.current = latest  # queries already running finish on the one they took
        return changed

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

    # -- queries ---------------------------------------------------------------------------
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

        ``kind`` restricts results to images or texts; ``where`` filters on metadata:
        ``{"category": "buttons", "price": ("<", 20)}`` or ``["price < 20", "colour in red,blue"]``
        (see :mod:`mmsearch.search.filters`); ``mode`` is ``vector``, ``lexical`` or ``hybrid``
        (default: hybrid when the index has a full-text index and the query has text);
        ``fusion`` is how hybrid merges its legs: ``relative`` (each leg by how far it beats
        the index's chance level; see :mod:`mmsearch.search.fuse`), ``rrf`` or ``weighted``
        (``alpha`` = weight of the vector legs); ``literal`` takes a string as one text term; ``min_score`` drops hits below a cosine
        similarity; ``cutoff`` (hybrid) answers nothing, with a reason, when no hit beats
        the index's calibrated chance level and no word matched. ``rerank`` (True or a
        :class:`RerankSpec`) re-scores the top candidates with the index's re-ranker.
        ``exact`` bypasses the ANN index; ``nprobe``/``refine`` override its tuned
        parameters. Returns :class:`Results`.
        """
        return self.run(
            make_query(
                query, literal=literal, where=where, rerank=rerank, kind=kind, mode=mode,
                fusion=fusion, alpha=alpha, k=k, offset=offset, group_by=group_by, dedup=dedup,
                min_score=min_score, cutoff=cutoff, exact=exact, nprobe=nprobe, refine=refine,
            )
        )  # fmt: skip

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
        q = Query(
            terms=(QueryTerm(1.0, "text", "<vector>"),), kind=kind, mode="vector", k=k,
            exact=exact, nprobe=nprobe, refine=refine,
        )  # fmt: skip
        return pipeline.run(
            self.current, q, vector=np.asarray(vector, np.float32), allowed_ids=allowed_ids,
            query_kind=query_kind,
        )  # fmt: skip

    def run(self, query: Query) -> Results:
        """Runs a query object through the stages; see :class:`Results` for the answer."""
        return pipeline.run(self.current, query, reranker=self.reranker)


def open_index(index_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> SearchIndex:
    """Opens an index for searching (``$MMSEARCH_INDEX`` or ``./.mmsearch`` by default)."""
    from mmsearch.storage.table import default_index_dir

    return SearchIndex(index_dir if index_dir is not None else default_index_dir(), **kwargs)
