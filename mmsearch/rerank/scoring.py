"""The re-rank stage: first-stage candidates (Arrow) in, ITM-scored candidates (Arrow) out.

Input: a :class:`RerankQuery` (the query's positive text terms with weights, and its
image term if any) and an Arrow table of candidates ordered by the first stage, with
at least ``id``, ``kind`` (``image`` | ``text``) and ``score``; image rows need
``uri`` (and, to notice changed files, ``mtime_ns`` and ``size`` as indexed), text
rows need ``text``. Output: the top ``depth`` candidates re-scored and sorted, with
two added columns, ``first_stage_score`` and ``match`` (the ITM probability).

* A text term re-ranks image candidates; the image term re-ranks text candidates.
  Several text terms are combined as the weighted mean of their probabilities.
* ``score = match``, or with ``blend`` (given, or recommended by the model's folder)
  ``blend * match + (1 - blend) * first_stage_score`` min-max scaled over the candidates
  (:func:`mmsearch.search.rerank.blend_scores`, the query pipeline's mix).
* ``min_match``: candidates below it are removed; when none is left the answer is
  empty and :attr:`RerankOutcome.empty_reason` says why (an honest "no good match").
* Candidate images are re-read from disk with the indexer's safe loader
  (:func:`mmsearch.imageio.load_image`). A file that vanished, changed since it was
  indexed (size or mtime differ) or no longer decodes is dropped and reported in
  :attr:`RerankOutcome.dropped`, never fatal.

>>> reranker = ItmReranker(ItmScorer.load("mmsearch-tiny-itm"), depth=50)  # doctest: +SKIP
>>> out = reranker.rerank(RerankQuery(texts=(("a red circle to the left of a blue square", 1.0),)), table)  # doctest: +SKIP
>>> out.table.column("match")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from PIL import Image

from mmsearch.errors import BadQueryError, ImageDecodeError
from mmsearch.imageio import DEFAULT_MAX_PIXELS, load_image
from mmsearch.search.rerank import blend_scores

DEFAULT_DEPTH = 50


class MatchScorer(Protocol):
    """What the stage needs from a model (``ItmScorer`` implements it)."""

    name: str

    def score_images(self, text: str, images: list[Image.Image]) -> npt.NDArray[np.float32]: ...

    def score_texts(self, image: Image.Image, texts: list[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class RerankQuery:
    """The parts of a query a matching model can read.

    ``texts``: positive text terms as ``(text, weight)``; ``image``: the positive
    image term (the first one, when a query has several).
    """

    texts: tuple[tuple[str, float], ...] = ()
    image: Image.Image | None = None

    @classmethod
    def of_text(cls, text: str) -> RerankQuery:
        return cls(texts=((text, 1.0),))

    @classmethod
    def of_image(cls, image: Image.Image) -> RerankQuery:
        return cls(image=image)


@dataclass(frozen=True)
class DroppedCandidate:
    """A candidate left out of re-ranking, with the reason (``vanished``, ``changed since indexing``...)."""

    id: int
    uri: str
    reason: str


@dataclass
class RerankOutcome:
    """The re-scored candidates and what happened on the way."""

    table: pa.Table
    dropped: list[DroppedCandidate] = field(default_factory=list)
    empty_reason: str | None = None
    not_scored: int = 0  # candidates of a kind no query term can be matched against


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
    """Re-ranks first-stage candidates with an image-text matching model.

    ``depth``: how many of the first stage's best candidates are re-scored;
    ``min_match``: the lowest ITM probability kept (``None`` keeps all);
    ``blend``: weight of the ITM probability against the first-stage score (``None``:
    the scorer's ``default_blend``, else the ITM probability alone).
    """

    def __init__(
        self,
        scorer: MatchScorer,
        *,
        depth: int = DEFAULT_DEPTH,
        min_match: float | None = None,
        blend: float | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if depth < 1:
            raise BadQueryError(f"rerank depth must be >= 1, got {depth}")
        if min_match is not None and not 0.0 <= min_match <= 1.0:
            raise BadQueryError(f"min_match must be a probability in [0, 1], got {min_match}")
        if blend is not None and not 0.0 <= blend <= 1.0:
            raise BadQueryError(f"blend must be in [0, 1], got {blend}")
        self.scorer = scorer
        self.depth = depth
        self.min_match = min_match
        self.blend = blend if blend is not None else getattr(scorer, "default_blend", None)
        self.max_pixels = max_pixels

    def _load_images(
        self, rows: pa.Table, positions: list[int]
    ) -> tuple[list[int], list[Image.Image], list[DroppedCandidate]]:
        from mmsearch.indexer.discover import uri_to_path

        ids, uris = _column(rows, "id"), _column(rows, "uri")
        mtimes, sizes = _column(rows, "mtime_ns"), _column(rows, "size")
        kept: list[int] = []
        images: list[Image.Image] = []
        dropped: list[DroppedCandidate] = []
        for pos in positions:
            uri = str(uris[pos])
            path = uri_to_path(uri)
            reason = _check_unchanged(path, mtimes[pos], sizes[pos])  # type: ignore[arg-type]
            if reason is None:
                try:
                    images.append(load_image(path, max_pixels=self.max_pixels))
                except ImageDecodeError as exc:
                    reason = f"unreadable ({exc.reason})"
            if reason is None:
                kept.append(pos)
            else:
                dropped.append(DroppedCandidate(int(ids[pos]), uri, reason))  # type: ignore[arg-type]
        return kept, images, dropped

    def _score_images(
        self, query: RerankQuery, images: list[Image.Image]
    ) -> npt.NDArray[np.float32]:
        total = sum(w for _, w in query.texts)
        acc = np.zeros(len(images), dtype=np.float64)
        for text, weight in query.texts:
            acc += weight * self.scorer.score_images(text, images)
        return (acc / total).astype(np.float32)

    def rerank(self, query: RerankQuery, candidates: pa.Table) -> RerankOutcome:
        """Re-scores the top ``depth`` rows of ``candidates``; see the module docstring."""
        if query.texts and sum(w for _, w in query.texts) <= 0:
            raise BadQueryError("rerank needs positive text-term weights")
        for name in ("id", "kind", "score"):
            if name not in candidates.column_names:
                raise BadQueryError(f"rerank candidates lack the {name!r} column")
        order = np.argsort(
            -np.asarray(candidates.column("score").to_numpy(), dtype=np.float64), kind="stable"
        )
        rows = candidates.take(pa.array(order[: self.depth], type=pa.int64()))
        kinds = _column(rows, "kind")
        match = np.full(rows.num_rows, np.nan, dtype=np.float32)
        dropped: list[DroppedCandidate] = []
        image_pos = [i for i, k in enumerate(kinds) if k == "image"] if query.texts else []
        text_pos = (
            [i for i, k in enumerate(kinds) if k == "text"] if query.image is not None else []
        )
        if image_pos:
            kept, images, dropped = self._load_images(rows, image_pos)
            if kept:
                match[kept] = self._score_images(query, images)
        if text_pos and query.image is not None:
            texts = [str(t or "") for t in (_column(rows, "text")[i] for i in text_pos)]
            match[text_pos] = self.scorer.score_texts(query.image, texts)
        dropped_ids = {d.id for d in dropped}
        keep = np.array([int(i) not in dropped_ids for i in _column(rows, "id")], dtype=bool)
        scored = keep & ~np.isnan(match)
        first = np.asarray(rows.column("score").to_numpy(), dtype=np.float32)
        mixed = match if self.blend is None else blend_scores(match, first, self.blend)
        final = np.where(scored, mixed, -np.inf)
        not_scored = int((keep & ~scored).sum())
        if self.min_match is not None:
            keep &= scored & (match >= self.min_match)
        idx = np.flatnonzero(keep)
        # Scored rows by final score; rows no term can be matched against keep their
        # first-stage order after them.
        idx = idx[np.lexsort((-first[idx], -final[idx]))]
        out = rows.take(pa.array(idx, type=pa.int64()))
        out = out.set_column(
            out.column_names.index("score"),
            "score",
            pa.array(np.where(np.isfinite(final[idx]), final[idx], first[idx]), pa.float32()),
        )
        out = out.append_column("first_stage_score", pa.array(first[idx], pa.float32()))
        out = out.append_column(
            "match", pa.array([None if np.isnan(m) else float(m) for m in match[idx]], pa.float32())
        )
        reason = None
        if out.num_rows == 0:
            best = np.nanmax(match) if np.isfinite(match).any() else None
            if self.min_match is not None and best is not None:
                reason = (
                    f"no good match: no candidate reached match probability {self.min_match:.2f} "
                    f"(best {best:.2f} among {int(np.isfinite(match).sum())} re-ranked)"
                )
            elif dropped and len(dropped) == rows.num_rows:
                reason = "no good match: every candidate file vanished or changed since indexing"
            else:
                reason = "no good match: no candidates"
        return RerankOutcome(out, dropped, reason, not_scored)
