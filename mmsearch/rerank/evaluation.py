"""Caption-match recall of a first stage alone and re-ranked by an ITM model.

On a catalog folder (``catalog.jsonl`` rows with ``file`` and ``caption``):

* text → image: each distinct caption is a query; the first stage (CLIP cosine)
  ranks every image; the ITM model re-scores the top ``depth``. ``R@k`` = share of
  queries with an exact-caption image in the top ``k``; ``R@depth`` of the first
  stage is the ceiling of any re-ranker.
* image → text: each image is a query against every possible caption of the
  catalog's scene kinds; ``R@k`` = share of images whose own caption is in the top ``k``.

The ITM side encodes each image once (:meth:`ItmScorer.encode_images`) and scores
the candidates of each query from those embeddings, the same arithmetic as the
re-rank stage, without decoding an image once per query.

>>> rerank_recall(load_encoder(ModelSpec("mmsearch-tiny")), ItmScorer.load("mmsearch-tiny-itm"), "/tmp/pairs")  # doctest: +SKIP
{'t2i': {'first_r1': 0.31, 'rerank_r1': 0.95, ...}, 'i2t': {...}, ...}
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mmsearch.datasets.synthetic import COLOURS, POSITIONS, SHAPES, caption_for, pair_caption
from mmsearch.imageio import load_image
from mmsearch.models.encoder import ClipEncoder
from mmsearch.models.preprocess import fit_square
from mmsearch.rerank.itm import ItmScorer
from mmsearch.search.rerank import blend_scores


def possible_captions(has_singles: bool, has_pairs: bool) -> list[str]:
    """Every caption the synthetic catalog can write, for the kinds of scene present."""
    out: list[str] = []
    if has_singles:
        out += [caption_for(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]
    if has_pairs:
        objects = [(c, s) for c in COLOURS for s in SHAPES]
        out += [pair_caption(a, b) for a in objects for b in objects if a != b]
    return out


def _recalls(hit_rank: list[int], ks: tuple[int, ...]) -> dict[str, float]:
    ranks = np.asarray(hit_rank)
    return {f"r{k}": float((ranks < k).mean()) if len(ranks) else float("nan") for k in ks}


def _first_hit(labels: npt.NDArray[Any], order: npt.NDArray[np.int64], want: str) -> int:
    hits = np.flatnonzero(labels[order] == want)
    return int(hits[0]) if len(hits) else 1 << 30


def _recall_pair(
    labels: npt.NDArray[Any],
    orders: npt.NDArray[np.int64],
    top: npt.NDArray[np.int64],
    scores: npt.NDArray[np.floating[Any]],
    wanted: list[str],
    ks: tuple[int, ...],
) -> dict[str, float]:
    """First-stage R@k (``first_rK``) and re-ranked R@1/R@5 (``rerank_rK``) of one direction."""
    first, reranked = [], []
    for q, want in enumerate(wanted):
        first.append(_first_hit(labels, orders[q], want))
        order = top[q][np.argsort(-scores[q], kind="stable")]
        reranked.append(_first_hit(labels, order, want))
    out = {f"first_{k}": v for k, v in _recalls(first, ks).items()}
    return out | {f"rerank_{k}": v for k, v in _recalls(reranked, (1, 5)).items()}


def _final(
    match: npt.NDArray[np.floating[Any]], first: npt.NDArray[np.floating[Any]], blend: float | None
) -> npt.NDArray[np.floating[Any]]:
    """Per query row, the re-rank stage's final score of its candidates."""
    if blend is None:
        return match
    return np.stack([blend_scores(m, f, blend) for m, f in zip(match, first, strict=True)])


def rerank_recall(
    encoder: ClipEncoder,
    scorer: ItmScorer,
    catalog_dir: str | Path,
    *,
    depth: int = 50,
    max_queries: int | None = None,
    seed: int = 0,
    blend: float | None = None,
) -> dict[str, Any]:
    """Text→image and image→text caption recall, first stage vs re-ranked at ``depth``.

    ``max_queries`` evaluates a seeded sample of the queries (all when ``None``);
    ``blend`` mixes the ITM probability with the first-stage score exactly as the query
    pipeline's rerank stage does (:func:`mmsearch.search.rerank.blend_scores`); ``None``
    uses the model's recommended blend (``scorer.default_blend``), or the ITM alone.
    """
    mix = blend if blend is not None else scorer.default_blend
    return rerank_recall_by_blend(
        encoder, scorer, catalog_dir, [mix], depth=depth, max_queries=max_queries, seed=seed
    )[0]


def rerank_recall_by_blend(
    encoder: ClipEncoder,
    scorer: ItmScorer,
    catalog_dir: str | Path,
    blends: Sequence[float | None],
    *,
    depth: int = 50,
    max_queries: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """:func:`rerank_recall` for each blend of ``blends`` (``None``: the ITM alone), scored once.

    Choosing a blend on a validation catalog compares many blends of the same ITM
    probabilities: the models run once, only the mix and the recall are per blend.
    """
    start = time.perf_counter()
    root = Path(catalog_dir)
    with open(root / "catalog.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    images = [load_image(root / row["file"]) for row in rows]
    labels = np.array([row["caption"] for row in rows])
    image_vecs = encoder.encode_images(
        np.stack([fit_square(im, encoder.image_size) for im in images])
    )
    image_embeds = scorer.encode_images(images)
    rng = np.random.default_rng(seed)
    ks = (1, 5, depth)

    queries = sorted(set(labels.tolist()))
    if max_queries is not None and len(queries) > max_queries:
        queries = [
            queries[int(i)] for i in sorted(rng.choice(len(queries), max_queries, replace=False))
        ]
    sims = encoder.encode_texts(queries) @ image_vecs.T
    t2i_orders = np.argsort(-sims, axis=1, kind="stable")
    t2i_top = t2i_orders[:, :depth]
    t2i_match = scorer.score_pairs(
        image_embeds, t2i_top.ravel().tolist(), np.repeat(queries, t2i_top.shape[1]).tolist()
    ).reshape(t2i_top.shape)
    t2i_first = np.take_along_axis(sims, t2i_top, axis=1)

    corpus = possible_captions(
        any(" on the " in t for t in labels), any(" to the left of " in t for t in labels)
    )
    corpus_arr = np.array(corpus)
    text_vecs = encoder.encode_texts(corpus)
    picks = np.arange(len(rows))
    if max_queries is not None and len(rows) > max_queries:
        picks = np.sort(rng.choice(len(rows), max_queries, replace=False))
    cos = image_vecs[picks] @ text_vecs.T
    i2t_orders = np.argsort(-cos, axis=1, kind="stable")
    i2t_top = i2t_orders[:, :depth]
    i2t_match = scorer.score_pairs(
        image_embeds,
        np.repeat(picks, i2t_top.shape[1]).tolist(),
        corpus_arr[i2t_top].ravel().tolist(),
    ).reshape(i2t_top.shape)
    i2t_first = np.take_along_axis(cos, i2t_top, axis=1)
    seconds = time.perf_counter() - start
    out = []
    for mix in blends:
        t2i = _recall_pair(
            labels, t2i_orders, t2i_top, _final(t2i_match, t2i_first, mix), queries, ks
        )
        i2t = _recall_pair(
            corpus_arr, i2t_orders, i2t_top, _final(i2t_match, i2t_first, mix),
            labels[picks].tolist(), ks,
        )  # fmt: skip
        out.append(
            {
                "n_images": len(rows),
                "t2i_queries": len(queries),
                "i2t_queries": len(picks),
                "i2t_corpus": len(corpus),
                "depth": depth,
                "blend": mix,
                "t2i": t2i,
                "i2t": i2t,
                "seconds": seconds,
            }
        )
    return out
