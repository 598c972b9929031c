"""The ITM re-ranker: first-stage candidates (Arrow) in, ITM-scored candidates (Arrow) out.

:class:`ItmReranker` implements the query pipeline's
:class:`~mmsearch.search.rerank.Reranker` protocol and only scores: the re-rank stage
(:func:`mmsearch.search.rerank.rerank_stage`) cuts the candidates to ``depth``,
applies ``min_match`` and ``blend``, sorts and reports what it dropped.

Input: the :class:`~mmsearch.search.types.Query` and an Arrow table of candidates with
at least ``id``, ``kind`` (``image`` | ``text``) and ``score``; image rows need
``uri`` (and, to notice changed files, ``mtime_ns`` and ``size`` as indexed), text
rows need ``text``. Output: the same rows with ``score`` = ``match`` (the ITM
probability) and a ``match`` column.

* A positive text term re-ranks image candidates; the first positive image term
  re-ranks text candidates. Several text terms are combined as the weighted mean of
  their probabilities. A row no term can be matched against (a text candidate of a
  text-only query) keeps its first-stage score and a null ``match``, after the
  scored rows.
* Candidate images are re-read from disk with the indexer's safe loader
  (:func:`mmsearch.imageio.load_image`). A file that vanished, changed since it was
  indexed (size or mtime differ) or no longer decodes is not scored: its row carries
  the reason in ``drop_reason`` and the stage reports it, never fatal.

>>> reranker = ItmReranker(ItmScorer.load("mmsearch-tiny-itm"))  # doctest: +SKIP
>>> out = reranker.rerank(query, table)  # doctest: +SKIP
>>> out.column("match")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from PIL import Image

from mmsearch.errors import BadQueryError, ImageDecodeError
from mmsearch.imageio import DEFAULT_MAX_PIXELS, load_image
from mmsearch.search.language import QueryTerm
from mmsearch.search.rerank import DROP_REASON
from mmsearch.search.types import Query
from mmsearch.uris import uri_to_path


class MatchScorer(Protocol):
    """What the re-ranker needs from a model (``ItmScorer`` implements it)."""

    name: str

    def score_images(self, text: str, images: list[Image.Image]) -> npt.NDArray[np.float32]: ...

    def score_texts(self, image: Image.Image, texts: list[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class MatchQuery:
    """The parts of a query a matching model can read: positive text terms as
    ``(text, weight)`` and the first positive image term."""

    texts: tuple[tuple[str, float], ...] = ()
    image: Image.Image | None = None

    @classmethod
    def of_terms(cls, terms: Sequence[QueryTerm]) -> MatchQuery:
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
            else:  # a path the encode stage already checked against the allowed roots
                image = load_image(value)
            break
        return cls(texts=texts, image=image)


def _check_unchanged(path: str, mtime_ns: int | None, size: int | None) -> str | None:
    """A reason when the file at ``path`` vanished or changed, else ``None``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "vanished since indexing"
    except OSError as exc:
        return f"unreadable ({type(exc).__name__})"
    if size is not None and st.st_size != size:
        return "changed since indexing (size)"
    if mtime_ns is not None and st.st_mtime_ns != mtime_ns:
        return "changed since indexing (mtime)"
    return None


def _column(table: pa.Table, name: str) -> list[object]:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


class ItmReranker:
    """Scores candidates with an image-text matching model (a :class:`Reranker`).

    ``default_blend`` is the blend the model recommends (see :class:`ItmScorer`); the
    re-rank stage uses it when a query sets none.
    """

    def __init__(self, scorer: MatchScorer, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.scorer = scorer
        self.max_pixels = max_pixels

    @property
    def default_blend(self) -> float | None:
        return getattr(self.scorer, "default_blend", None)

    def _load_images(
        self, rows: pa.Table, positions: list[int]
    ) -> tuple[list[int], list[Image.Image], dict[int, str]]:
        uris, mtimes, sizes = _column(rows, "uri"), _column(rows, "mtime_ns"), _column(rows, "size")
        kept: list[int] = []
        images: list[Image.Image] = []
        dropped: dict[int, str] = {}
        for pos in positions:
            path = uri_to_path(str(uris[pos]))
            reason = _check_unchanged(path, mtimes[pos], sizes[pos])  # type: ignore[arg-type]
            if reason is None:
                try:
                    images.append(load_image(path, max_pixels=self.max_pixels))
                except ImageDecodeError as exc:
                    reason = f"unreadable ({exc.reason})"
            if reason is None:
                kept.append(pos)
            else:
                dropped[pos] = reason
        return kept, images, dropped

    def _score_images(
        self, query: MatchQuery, images: list[Image.Image]
    ) -> npt.NDArray[np.float32]:
        total = sum(w for _, w in query.texts)
        acc = np.zeros(len(images), dtype=np.float64)
        for text, weight in query.texts:
            acc += weight * self.scorer.score_images(text, images)
        return (acc / total).astype(np.float32)

    def rerank(self, query: Query, candidates: pa.Table) -> pa.Table:
        """Scores every candidate row it is given; see the module docstring."""
        for name in ("id", "kind", "score"):
            if name not in candidates.column_names:
                raise BadQueryError(f"rerank candidates lack the {name!r} column")
        match_query = MatchQuery.of_terms(query.terms)
        rows = candidates
        kinds = _column(rows, "kind")
        match = np.full(rows.num_rows, np.nan, dtype=np.float32)
        dropped: dict[int, str] = {}
        image_pos = [i for i, k in enumerate(kinds) if k == "image"] if match_query.texts else []
        if image_pos:
            kept, images, dropped = self._load_images(rows, image_pos)
            if kept:
                match[kept] = self._score_images(match_query, images)
        if match_query.image is not None:
            text_pos = [i for i, k in enumerate(kinds) if k == "text"]
            if text_pos:
                texts = [str(t or "") for t in (_column(rows, "text")[i] for i in text_pos)]
                match[text_pos] = self.scorer.score_texts(match_query.image, texts)
        first = np.asarray(rows.column("score").to_numpy(), dtype=np.float64)
        scored = ~np.isnan(match)
        # Scored rows by match; rows no term can be matched against keep their
        # first-stage score and order after them; rows not scored for a reason last.
        final = np.where(scored, match, -np.inf)
        gone = np.zeros(rows.num_rows, bool)
        gone[list(dropped)] = True
        order = np.lexsort((-first, -final, gone))
        out = rows.take(pa.array(order, type=pa.int64()))
        score = np.where(scored, match, first)[order]
        out = out.set_column(
            out.column_names.index("score"), "score", pa.array(score, pa.float32())
        )
        out = out.append_column(
            "match",
            pa.array([None if np.isnan(m) else float(m) for m in match[order]], pa.float32()),
        )
        reasons = [dropped.get(int(i)) for i in order]
        return out.append_column(DROP_REASON, pa.array(reasons, pa.string()))
