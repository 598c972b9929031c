"""Fuse stage: leg tables → one candidates table, best first.

* One leg alone keeps its own score (the cosine of a one-kind vector search, BM25
  of a one-kind lexical search), so such queries rank and score as they always did.
* ``relative`` (default): each leg says how much it knows about *this* query. A
  lexical hit scores its BM25 relative to the leg's best (1 for the best match; BM25
  already weighs rare words, high IDF, above common ones). A vector hit scores how far
  its cosine lies above its kind's chance level, in units of chance's own spread
  (:class:`~mmsearch.search.calibrate.Chance`), smoothly:
  ``softplus((cosine − level) / scale)``, weighted :data:`RELATIVE_VECTOR_WEIGHT`. A
  vector leg at chance (a brand word or a code the model never learned) adds about the
  same little to every hit, too little to reorder what the words found; a query the
  model understands lifts its hits by as much as they stand out from chance. Without
  a kind's chance level, the leg's own worst hit and spread stand in for it.
* ``rrf``: reciprocal rank fusion, ``Σ 1 / (60 + rank)`` over the legs that found an
  item. Ranks, not raw scores, so BM25 and cosine need no common scale; but a vector
  leg at chance counts as much as a lexical leg that found the exact word.
* ``weighted``: each leg's scores min-max normalised to [0, 1], vector legs weighted
  ``alpha`` and lexical legs ``1 − alpha``, summed.

With several kinds, each kind's leg counts alike (fair ``kind=any`` answers): a kind
found by fewer legs (images without text get no lexical hits) has its scores scaled
to the same total leg weight, so kinds interleave by their own legs. With ``relative``
each kind's scores are then taken relative to its own best hit (a height above one
kind's chance level says nothing about another kind's), so each kind's best scores 1.

An exact identifier match (leg ``exact``) adds at least :data:`EXACT_BOOST`, above
anything the fusion gave, so the named item comes first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from mmsearch.search.calibrate import Chance
from mmsearch.search.types import CANDIDATES_SCHEMA, RRF_K

EXACT_BOOST = 1.0
#: Weight of a vector hit's height above chance (in chance spreads) against a lexical
#: hit's BM25 relative to the best (chosen on a validation catalog: benchmarks/RESULTS.md,
#: "Fusion per class of query").
RELATIVE_VECTOR_WEIGHT = 0.25


def _normalised(scores: np.ndarray) -> np.ndarray:
    if len(scores) == 0:
        return scores
    lo, hi = float(scores.min()), float(scores.max())
    if hi - lo < 1e-12:
        return np.ones_like(scores)
    return (scores - lo) / (hi - lo)


def above_chance(cosines: np.ndarray, chance: Chance | None) -> np.ndarray:
    """How far each cosine lies above ``chance.level``, in units of ``chance.scale``, smoothly.

    ``softplus((cosine − level) / scale)``: about 0 well under the level, ln 2 at it,
    growing like the height itself above it. Hits under chance keep their order (a weak
    cosine still tells two otherwise equal hits apart) while adding almost nothing.
    Without a chance level the leg's own lowest cosine and spread stand in for it.
    """
    if len(cosines) == 0:
        return cosines
    if chance is None:
        lo, hi = float(cosines.min()), float(cosines.max())
        chance = Chance(level=lo, scale=max(hi - lo, 1e-12), floor=hi)
    return np.logaddexp(0.0, (cosines - chance.level) / chance.scale)  # softplus


def _relative_lexical(scores: np.ndarray) -> np.ndarray:
    """BM25 relative to the leg's best hit (1 for the best; 0 for no match)."""
    if len(scores) == 0:
        return scores
    top = float(scores.max())
    return scores / top if top > 0 else np.zeros_like(scores)


def _leg_weight(name: str, method: str, alpha: float) -> float:
    vector = name.startswith("vector:")
    if method == "weighted":
        return alpha if vector else 1.0 - alpha
    if method == "relative":
        return RELATIVE_VECTOR_WEIGHT if vector else 1.0
    return 1.0


def _score_kind(ranked: Sequence[pa.Table], method: str) -> str:
    """What the fused ``score`` is: one leg keeps its own (cosine or BM25), else the method's."""
    if len(ranked) > 1:
        return method
    if ranked and ranked[0].column("leg")[0].as_py().startswith("vector:"):
        return "cosine"
    return "bm25"  # one lexical leg (or only the exact identifier, whose rows BM25 finds too)


def _even_out_kinds(
    score: np.ndarray, kinds: np.ndarray, ranked: Sequence[pa.Table], method: str, alpha: float
) -> None:
    """Scales each kind's fused scores to the same total leg weight (in place).

    A kind that lacks a leg (images without any text have no lexical hits) would
    otherwise rank wholly under a kind that two legs found: captions would crowd images
    out of ``kind=any``. Within a kind the order is unchanged; across kinds, items
    interleave by how their own kind's legs ranked them.
    """
    weight: dict[str, float] = {}
    for leg in ranked:
        name = leg.column("leg")[0].as_py()
        w = _leg_weight(name, method, alpha)
        kind = leg.column("kind")[0].as_py()
        weight[kind] = weight.get(kind, 0.0) + w
    if len(weight) < 2 or min(weight.values()) <= 0:
        return
    top = max(weight.values())
    for kind, w in weight.items():
        if w < top:
            score[kinds == kind] *= top / w


def _relative_to_kind_best(score: np.ndarray, kinds: np.ndarray) -> None:
    """With several kinds, each kind's relative scores divided by its best (in place).

    Heights above chance are not comparable across kinds (a caption's text->text cosine
    stands far higher above its chance level than any image's text->image cosine), so
    each kind's best hit scores 1 and the kinds interleave by how close each hit comes to
    its own kind's best. One kind alone is left as it is.
    """
    present = [kind for kind in set(kinds.tolist()) if kind is not None]
    if len(present) < 2:
        return
    for kind in present:
        members = kinds == kind
        best = float(score[members].max())
        if best > 0:
            score[members] /= best


def _leg_lists(found_by: np.ndarray, leg_names: Sequence[str]) -> list[str]:
    """Each item's legs as ``a,b`` (sorted names) from its bit mask of the legs that found it."""
    shown: dict[int, str] = {}
    for mask in set(found_by.tolist()):
        picked = {name for j, name in enumerate(leg_names) if mask >> j & 1}
        shown[mask] = ",".join(sorted(picked))
    return [shown[mask] for mask in found_by.tolist()]


def fuse(
    legs: Sequence[pa.Table],
    *,
    method: str = "relative",
    alpha: float = 0.7,
    rrf_k: int = RRF_K,
    chance: Mapping[str, Chance] | None = None,
) -> pa.Table:
    """Candidates (see :data:`CANDIDATES_SCHEMA`) from leg tables, sorted by score, best first.

    ``chance`` holds each kind's chance level (relative fusion; see
    :func:`mmsearch.search.calibrate.kind_chance`).
    """
    legs = [leg for leg in legs if leg.num_rows]
    if not legs:
        return CANDIDATES_SCHEMA.empty_table()
    leg_names = [leg.column("leg")[0].as_py() for leg in legs]
    ranked = [leg for leg, name in zip(legs, leg_names, strict=True) if name != "exact"]
    score_kind = _score_kind(ranked, method)
    exact = len(ranked) < len(legs)
    ids = np.concatenate([leg.column("id").to_numpy() for leg in legs]).astype(np.int64)
    uniq, inverse = np.unique(ids, return_inverse=True)
    score = np.zeros(len(uniq), np.float64)
    similarity = np.full(len(uniq), np.nan, np.float32)
    is_exact = np.zeros(len(uniq), bool)
    kinds = np.empty(len(uniq), dtype=object)
    found_by = np.zeros(len(uniq), np.int64)  # bit j set: legs[j] found the item
    best_rank = np.full(len(uniq), np.iinfo(np.int32).max, np.int64)
    offset = 0
    for j, (leg, name) in enumerate(zip(legs, leg_names, strict=True)):
        n = leg.num_rows
        pos = inverse[offset : offset + n]
        offset += n
        raw = leg.column("score").to_numpy().astype(np.float64)
        rank = leg.column("rank").to_numpy().astype(np.int64)
        kinds[pos] = leg.column("kind").to_numpy(zero_copy_only=False)
        found_by[pos] |= 1 << j
        np.minimum.at(best_rank, pos, rank)
        if name.startswith("vector:"):
            similarity[pos] = raw.astype(np.float32)
        if name == "exact":
            is_exact[pos] = True
            continue
        weight = _leg_weight(name, method, alpha)
        if len(ranked) == 1:
            score[pos] = raw
        elif method == "weighted":
            np.add.at(score, pos, weight * _normalised(raw))
        elif method == "relative" and name.startswith("vector:"):
            kind = name.split(":", 1)[1]
            np.add.at(score, pos, weight * above_chance(raw, (chance or {}).get(kind)))
        elif method == "relative":
            np.add.at(score, pos, weight * _relative_lexical(raw))
        else:
            np.add.at(score, pos, 1.0 / (rrf_k + rank))
    if len(ranked) > 1:
        _even_out_kinds(score, kinds, ranked, method, alpha)
    if method == "relative" and len(ranked) > 1:
        _relative_to_kind_best(score, kinds)
    if exact:
        score[is_exact] += max(EXACT_BOOST, float(score.max()))
    order = np.lexsort((uniq, best_rank, -score))
    return pa.table(
        {
            "id": pa.array(uniq[order]),
            "kind": pa.array(kinds[order].tolist(), pa.string()),
            "score": pa.array(score[order]),
            "similarity": pa.array(similarity[order], pa.float32(), from_pandas=True),
            "exact": pa.array(is_exact[order]),
            "legs": pa.array(_leg_lists(found_by[order], leg_names), pa.string()),
            "score_kind": pa.array([score_kind] * len(order), pa.string()),
        },
        schema=CANDIDATES_SCHEMA,
    )
