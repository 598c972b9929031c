"""Retrieval metrics: pure functions over ranked lists and score matrices.

Two families, each computed the way its reference computes it:

* Query-set metrics (graded relevance): ``recall@k`` = the fraction of a query's
  relevant items (grade > 0) found in its top ``k``; ``mrr`` = 1 / rank of the first
  relevant item within the retrieved depth (0 when none); ``ndcg@k`` with linear gain
  (``grade / log2(rank + 1)``, as trec_eval and scikit-learn's ``ndcg_score``), divided
  by the ideal ordering's DCG. Overall figures are means over queries. Per class of
  query (a query set's ``class`` field) the report adds ``hit@1`` (the first result is
  relevant: an identifier's item) and ``only@5`` (the first five results, or as many
  as the query has relevant items, are all relevant: a brand's top 5 holds only it).
* Captioned-collection retrieval, as LAION's CLIP_benchmark computes it
  (``clip_benchmark/metrics/zeroshot_retrieval.py``): for each query, the top-``k``
  candidates by score; the query scores 1 when at least one positive is among them,
  else 0; ``R@k`` is the mean over queries. Text→image: one positive image per caption;
  image→text: every caption of the image is a positive. With one relevant item per
  query this is also the query-set ``recall@k``.

>>> recall_at_k([3, 1, 2], {1: 1.0}, 1), recall_at_k([3, 1, 2], {1: 1.0}, 2)
(0.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

#: The cut-offs every report shows.
DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
NDCG_K = 10


def _relevant(grades: Mapping[Hashable, float]) -> set[Hashable]:
    return {key for key, grade in grades.items() if grade > 0}


def recall_at_k(ranked: Sequence[Hashable], grades: Mapping[Hashable, float], k: int) -> float:
    """Share of the relevant items (grade > 0) that appear in ``ranked[:k]``."""
    relevant = _relevant(grades)
    if not relevant:
        raise ValueError("a query needs at least one relevant item")
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def reciprocal_rank(ranked: Sequence[Hashable], grades: Mapping[Hashable, float]) -> float:
    """1 / rank of the first relevant item of ``ranked`` (0.0 when none is retrieved)."""
    relevant = _relevant(grades)
    for rank, key in enumerate(ranked, start=1):
        if key in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(
    ranked: Sequence[Hashable], grades: Mapping[Hashable, float], k: int = NDCG_K
) -> float:
    """Normalised discounted cumulative gain at ``k`` with linear gain."""
    dcg = sum(
        max(grades.get(key, 0.0), 0.0) / math.log2(rank + 1)
        for rank, key in enumerate(ranked[:k], start=1)
    )
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def only_relevant_at_k(
    ranked: Sequence[Hashable], grades: Mapping[Hashable, float], k: int
) -> float:
    """1.0 when the first ``min(k, relevant)`` results are all relevant, else 0.0."""
    relevant = _relevant(grades)
    if not relevant:
        raise ValueError("a query needs at least one relevant item")
    top = list(ranked[: min(k, len(relevant))])
    return float(len(top) == min(k, len(relevant)) and all(key in relevant for key in top))


def class_metrics(ranked: Sequence[Hashable], grades: Mapping[Hashable, float]) -> dict[str, float]:
    """The figures shown per class of query: recall@10, MRR, hit@1 and only@5."""
    return {
        "recall@10": recall_at_k(ranked, grades, 10),
        "mrr": reciprocal_rank(ranked, grades),
        "hit@1": reciprocal_rank(ranked[:1], grades),
        "only@5": only_relevant_at_k(ranked, grades, 5),
    }


def first_relevant_rank(ranked: Sequence[Hashable], grades: Mapping[Hashable, float]) -> int | None:
    """1-based rank of the first relevant item, or None when none was retrieved."""
    relevant = _relevant(grades)
    return next((rank for rank, key in enumerate(ranked, start=1) if key in relevant), None)


def query_metrics(
    ranked: Sequence[Hashable], grades: Mapping[Hashable, float], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """``recall@k`` for each k, ``mrr`` and ``ndcg@10`` of one query."""
    out = {f"recall@{k}": recall_at_k(ranked, grades, k) for k in ks}
    out["mrr"] = reciprocal_rank(ranked, grades)
    out[f"ndcg@{NDCG_K}"] = ndcg_at_k(ranked, grades, NDCG_K)
    return out


def mean_metrics(per_query: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of every metric over queries (NaN when there are none)."""
    if not per_query:
        return {}
    keys = list(per_query[0])
    return {key: float(np.mean([q[key] for q in per_query])) for key in keys}


def hit_curve(ranked_hits: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """``curve[k-1]`` = share of queries with a positive in their top ``k`` (CLIP_benchmark R@k).

    ``ranked_hits[q, r]`` says whether the candidate at rank ``r + 1`` of query ``q`` is
    one of its positives.
    """
    if ranked_hits.ndim != 2:
        raise ValueError("ranked_hits must be (queries, depth)")
    if ranked_hits.shape[0] == 0:
        return np.zeros(ranked_hits.shape[1])
    return np.logical_or.accumulate(ranked_hits, axis=1).mean(axis=0)


def topk_hits(
    scores: npt.NDArray[np.floating], positives: npt.NDArray[np.bool_], depth: int
) -> npt.NDArray[np.bool_]:
    """``ranked_hits`` of the top ``depth`` candidates of each row of a full score matrix.

    Candidates are ordered by decreasing score (stable on ties: lower index first).
    """
    depth = min(depth, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return np.take_along_axis(positives, order, axis=1)


def clip_benchmark_recall(
    scores: npt.NDArray[np.floating],
    positives: npt.NDArray[np.bool_],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[int, float]:
    """CLIP_benchmark's recall@k of a (queries × candidates) score matrix: ``{k: R@k}``."""
    curve = hit_curve(topk_hits(scores, positives, max(ks)))
    return {k: float(curve[min(k, len(curve)) - 1]) if len(curve) else 0.0 for k in ks}
