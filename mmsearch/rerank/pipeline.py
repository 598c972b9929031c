"""The ITM re-ranker in the query pipeline's rerank slot (:class:`mmsearch.search.rerank.Reranker`).

``SearchIndex(..., reranker=ItmStageReranker(scorer, store=idx.store, image_roots=roots))`` makes
``idx.search(q, rerank=True)`` and ``idx.query()...rerank(depth=50)`` re-score their
top candidates with ITM. The pipeline's stage keeps the retrieval score and applies
``min_match`` and ``blend``; this class only scores.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from mmsearch.rerank.scoring import DroppedCandidate, ItmReranker, MatchScorer, RerankQuery
from mmsearch.search.encode import check_image_path


def rerank_query_from_terms(terms: Any, *, roots: Sequence[Path] | None = None) -> RerankQuery:
    """Positive text terms and the first positive image term of a pipeline query.

    An image path is opened only once :func:`~mmsearch.search.encode.check_image_path`
    accepts it: under one of ``roots`` (resolved folders; None: any path) and an
    existing file, as the encode stage requires (:class:`~mmsearch.errors.UnsafePathError`
    otherwise, whether or not the file exists).
    """
    from mmsearch.imageio import load_image

    texts = tuple(
        (str(t.value), float(t.weight)) for t in terms if t.kind == "text" and t.weight > 0
    )
    image = None
    for term in terms:
        if term.kind != "image" or term.weight <= 0:
            continue
        value = term.value
        if isinstance(value, Image.Image):
            image = value.convert("RGB")
        elif isinstance(value, np.ndarray):
            image = Image.fromarray(np.ascontiguousarray(value, dtype=np.uint8), "RGB")
        else:  # a path: checked here too, so this class is safe however it is called
            image = load_image(check_image_path(value, roots))
        break
    return RerankQuery(texts=texts, image=image)


class ItmStageReranker:
    """Arrow in, Arrow out: ``score`` becomes the ITM match probability.

    ``store`` (the index's :class:`~mmsearch.storage.table.ItemStore`) supplies each
    candidate file's size and mtime as indexed, so a file changed since indexing is
    dropped; :attr:`dropped` lists the candidates the calling thread's last call dropped.
    ``image_roots``: the folders a query's image path must resolve under (the index's
    own policy, ``SearchIndex(image_roots=...)``; None: any path).
    """

    def __init__(
        self,
        scorer: MatchScorer,
        *,
        store: Any | None = None,
        image_roots: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        self.scorer = scorer
        self.store = store
        self.image_roots = (
            [Path(os.path.realpath(r)) for r in image_roots] if image_roots is not None else None
        )
        self._local = threading.local()

    @property
    def default_blend(self) -> float | None:
        """The blend the model recommends when a query sets none (see :class:`ItmScorer`)."""
        return getattr(self.scorer, "default_blend", None)

    @property
    def dropped(self) -> list[DroppedCandidate]:
        return getattr(self._local, "dropped", [])

    def _with_stat(self, candidates: pa.Table) -> pa.Table:
        if self.store is None or "mtime_ns" in candidates.column_names or candidates.num_rows == 0:
            return candidates
        ids = [int(i) for i in candidates.column("id").to_pylist()]
        rows = self.store.scan(
            ["id", "mtime_ns", "size"], where=f"id IN ({', '.join(str(i) for i in ids)})"
        ).to_pydict()
        stat = {
            int(i): (m, s)
            for i, m, s in zip(rows["id"], rows["mtime_ns"], rows["size"], strict=True)
        }
        return candidates.append_column(
            "mtime_ns", pa.array([stat.get(i, (None, None))[0] for i in ids], pa.int64())
        ).append_column("size", pa.array([stat.get(i, (None, None))[1] for i in ids], pa.int64()))

    def rerank(self, query: Any, candidates: pa.Table) -> pa.Table:
        """Scores every candidate row it is given (the stage has cut them to the depth)."""
        # blend 1: the match probability alone; the pipeline's stage applies min_match
        # and the mix with the retrieval score (the query's blend, else default_blend).
        reranker = ItmReranker(self.scorer, depth=max(1, candidates.num_rows), blend=1.0)
        terms = rerank_query_from_terms(query.terms, roots=self.image_roots)
        outcome = reranker.rerank(terms, self._with_stat(candidates))
        self._local.dropped = outcome.dropped
        return outcome.table
