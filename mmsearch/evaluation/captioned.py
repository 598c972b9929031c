"""Captioned-collection evaluation: text→image and image→text R@k as CLIP_benchmark computes it.

Over an index of the collection (COCO / Flickr30k Karpathy JSON, CSV/JSONL of
image,caption), every caption queries the images and every image (its stored vector)
queries the captions, once per search variant. Indexing the collection into a work
folder and opening it is :func:`mmsearch.maintenance.evaluate.evaluate_captioned`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch.evaluation.inputs import CaptionedSet
from mmsearch.evaluation.metrics import first_relevant_rank, hit_curve
from mmsearch.evaluation.runner import EvalReport, ItemCatalog, ProgressFn, WorstCase
from mmsearch.evaluation.variants import (
    PRIMARY,
    EvaluatedIndex,
    Variant,
    available_variants,
    vector_options,
)


def _position_of(catalog: ItemCatalog) -> tuple[dict[int, int], dict[int, int]]:
    """id → image position and id → caption position, from the names ``index_captioned`` gives."""
    images: dict[int, int] = {}
    texts: dict[int, int] = {}
    for item_id, uri in catalog.uri.items():
        if catalog.kind[item_id] == "image":
            images[item_id] = int(Path(catalog.local_path(uri)).stem)
        else:
            texts[item_id] = int(uri.rsplit("#c", 1)[1])
    return images, texts


def captioned_report(
    index: EvaluatedIndex,
    data: CaptionedSet,
    ks: Sequence[int],
    variants: Sequence[str] | None,
    worst: int,
    progress: ProgressFn,
) -> EvalReport:
    """Text→image and image→text R@k over an open index of a captioned collection.

    ``index`` holds ``data`` as :func:`mmsearch.maintenance.evaluate.index_captioned`
    writes it (images named by position, captions with ids ``c<position>``); every
    caption queries the images and every image (its stored vector) queries the
    captions, once per search variant. R@k is CLIP_benchmark's: the share of queries
    with a positive in the top k (a caption's one image; any of an image's captions).
    """
    chosen = [
        v
        for v in available_variants(index, list(variants) if variants else None)
        if vector_options(v) is not None
    ]
    depth = max(max(ks), 10)
    catalog = ItemCatalog(index)
    image_pos, text_pos = _position_of(catalog)
    catalog.original_path = {
        i: str(data.images[p]) for i, p in image_pos.items()
    }  # the work dir goes away
    id_of_image = {p: i for i, p in image_pos.items()}
    image_ids = [id_of_image[p] for p in sorted(id_of_image)]
    text_ids = sorted(text_pos, key=lambda i: text_pos[i])
    t2i_positive: dict[int, set[int | None]] = {
        i: {id_of_image.get(data.caption_image[text_pos[i]])} for i in text_ids
    }
    i2t_positive: dict[int, set[int]] = {i: set() for i in image_ids}
    for t in text_ids:
        image = id_of_image.get(data.caption_image[text_pos[t]])
        if image is not None:
            i2t_positive[image].add(t)
    text_vectors = index.encoder.encode_texts([catalog.text[i] for i in text_ids])
    image_vectors = _stored_vectors(index, image_ids)
    progress("queries", 0, (len(text_ids) + len(image_ids)) * len(chosen))
    figures: dict[str, dict[str, float]] = {}
    curves: dict[str, list[float]] = {}
    cases_by_direction: dict[str, list[tuple[float, WorstCase]]] = {}
    for variant in chosen:
        runs = {
            "t2i": _ranked_hits(
                index,
                text_vectors,
                text_ids,
                t2i_positive,
                "image",
                "text",
                depth,
                variant,
                progress,
            ),
            "i2t": _ranked_hits(
                index,
                image_vectors,
                image_ids,
                i2t_positive,
                "text",
                "image",
                depth,
                variant,
                progress,
            ),
        }
        figures[variant.name] = {}
        for direction, (hit_rows, ranked) in runs.items():
            curve = hit_curve(hit_rows)
            curves[f"{variant.name} {direction}"] = [round(float(x), 6) for x in curve]
            for k in ks:
                figures[variant.name][f"{direction}_recall@{k}"] = (
                    float(curve[k - 1]) if len(curve) else 0.0
                )
            if variant.name == (
                PRIMARY if any(v.name == PRIMARY for v in chosen) else chosen[0].name
            ):
                cases_by_direction[direction] = _captioned_cases(
                    direction,
                    hit_rows,
                    ranked,
                    text_ids,
                    image_ids,
                    t2i_positive,
                    i2t_positive,
                    catalog,
                    data,
                    text_pos,
                )
    # The worst of each direction, alternating: text→image, image→text, text→image, ...
    ordered = [sorted(c, key=lambda x: x[0]) for c in cases_by_direction.values()]
    interleaved = [case for group in zip_longest(*ordered) for case in group if case is not None]
    return EvalReport(
        mode="captioned",
        model=index.spec.key,
        variants=[v.name for v in chosen],
        figures=figures,
        curves=curves,
        worst=[c for _, c in interleaved[:worst]],
        n_queries=len(text_ids) + len(image_ids),
        n_items=len(catalog.ids),
    )


def _stored_vectors(index: EvaluatedIndex, ids: list[int]) -> np.ndarray:
    ids_all, vectors = index.store.vectors("image")
    pos = {int(i): n for n, i in enumerate(ids_all)}
    return vectors[[pos[i] for i in ids]]


def _ranked_hits(
    index: EvaluatedIndex,
    vectors: np.ndarray,
    query_ids: list[int],
    positives: Mapping[int, Set[int | None]],
    kind: str,
    query_kind: str,
    depth: int,
    variant: Variant,
    progress: ProgressFn,
) -> tuple[np.ndarray, list[list[int]]]:
    hits = np.zeros((len(query_ids), depth), dtype=bool)
    ranked_all: list[list[int]] = []
    for row, (qid, vector) in enumerate(zip(query_ids, vectors, strict=True)):
        results = index.search_vector(
            vector, depth, kind=kind, query_kind=query_kind, **(vector_options(variant) or {})
        )
        ranked = [r.id for r in results]
        ranked_all.append(ranked)
        hits[row, : len(ranked)] = [i in positives[qid] for i in ranked]
        progress("queries", 1, None)
    return hits, ranked_all


def _captioned_cases(
    direction: str,
    hit_rows: np.ndarray,
    ranked: list[list[int]],
    text_ids: list[int],
    image_ids: list[int],
    t2i_positive: dict[int, set[int | None]],
    i2t_positive: dict[int, set[int]],
    catalog: ItemCatalog,
    data: CaptionedSet,
    text_pos: dict[int, int],
) -> list[tuple[float, WorstCase]]:
    out: list[tuple[float, WorstCase]] = []
    ids = text_ids if direction == "t2i" else image_ids
    positives: dict[int, Any] = t2i_positive if direction == "t2i" else i2t_positive
    for row, qid in enumerate(ids):
        first = first_relevant_rank(ranked[row], {p: 1.0 for p in positives[qid] if p is not None})
        rank = float(first) if first is not None else math.inf
        if rank == 1:
            continue
        shown = catalog.shown(qid)
        label = (
            (shown.text or "")
            if direction == "t2i"
            else f"image {Path(shown.path or shown.uri).name}"
        )
        out.append(
            (
                -rank,
                WorstCase(
                    label,
                    None if direction == "t2i" else shown.path,
                    rank,
                    "rank of the first match",
                    [
                        catalog.shown(p, True)
                        for p in sorted(p for p in positives[qid] if p is not None)
                    ][:5],
                    [catalog.shown(i, i in positives[qid]) for i in ranked[row][:5]],
                    direction="text → image" if direction == "t2i" else "image → text",
                ),
            )
        )
    return out
