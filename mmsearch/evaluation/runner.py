"""Run an evaluation against an index through the public search API.

:func:`evaluate_queries` runs a query set (``mmsearch eval QUERIES.jsonl``);
:func:`evaluate_captioned` indexes a captioned collection and measures text→image and
image→text retrieval as CLIP_benchmark does (``mmsearch eval CAPTIONS --captioned``).
Both run every :mod:`~mmsearch.evaluation.variants` variant side by side and return
an :class:`EvalReport`; the library never prints (``progress`` reports work done).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch.evaluation.inputs import CaptionedSet, EvalQuery
from mmsearch.evaluation.metrics import (
    DEFAULT_KS,
    first_relevant_rank,
    hit_curve,
    mean_metrics,
    query_metrics,
)
from mmsearch.evaluation.variants import PRIMARY, Variant, available_variants

#: progress(stage, advance, more_total), as the indexing pipeline reports it.
ProgressFn = Callable[[str, int, int | None], None]


def _noop(stage: str, advance: int, total: int | None) -> None:
    return None


@dataclass
class Shown:
    """An item shown in a report: its uri, local image path (images only), text, relevance."""

    id: int
    uri: str
    kind: str
    path: str | None
    text: str | None
    relevant: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uri": self.uri,
            "kind": self.kind,
            "text": self.text,
            "relevant": self.relevant,
        }


@dataclass
class WorstCase:
    """A poorly served query, with what it should have found and what it got."""

    label: str
    query_image: str | None
    score: float
    score_name: str
    expected: list[Shown]
    retrieved: list[Shown]
    direction: str = ""


@dataclass
class EvalReport:
    """Figures of one evaluation run; ``overall`` holds the primary variant's figures."""

    mode: str
    model: str
    variants: list[str]
    figures: dict[str, dict[str, float]]
    curves: dict[str, list[float]]
    queries: list[dict[str, Any]] = field(default_factory=list)
    worst: list[WorstCase] = field(default_factory=list)
    n_queries: int = 0
    n_items: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def primary(self) -> str:
        return PRIMARY if PRIMARY in self.figures else self.variants[0]

    @property
    def overall(self) -> dict[str, float]:
        return self.figures[self.primary]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "model": self.model,
            "overall": self.overall,
            "overall_variant": self.primary,
            "variants": self.figures,
            "curves": self.curves,
            "n_queries": self.n_queries,
            "n_items": self.n_items,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "queries": self.queries,
        }


class _Catalog:
    """id → (uri, kind, text) of every row the index serves, and uri → id."""

    def __init__(self, index: Any) -> None:
        from indexer.discover import path_to_uri, uri_to_path

        table = index.store.scan(["id", "uri", "kind", "text"])
        self.ids = table.column("id").to_pylist()
        self.uri = dict(zip(self.ids, table.column("uri").to_pylist(), strict=True))
        self.kind = dict(zip(self.ids, table.column("kind").to_pylist(), strict=True))
        self.text = dict(zip(self.ids, table.column("text").to_pylist(), strict=True))
        self.by_uri = {u: i for i, u in self.uri.items()}
        #: Image paths to show instead of the indexed ones (the originals of linked files).
        self.original_path: dict[int, str] = {}
        self._path_to_uri = path_to_uri
        self._uri_to_path = uri_to_path

    def resolve(self, key: str | int) -> int | None:
        """The id of a relevant item named by id, uri or local path."""
        if isinstance(key, int):
            return key if key in self.uri else None
        if key in self.by_uri:
            return self.by_uri[key]
        if os.path.exists(key):
            return self.by_uri.get(self._path_to_uri(os.path.abspath(key)))
        return None

    def shown(self, item_id: int, relevant: bool = False) -> Shown:
        kind = self.kind.get(item_id, "")
        uri = self.uri.get(item_id, "")
        path = self.original_path.get(item_id) or (
            self._uri_to_path(uri) if kind == "image" and uri else None
        )
        return Shown(item_id, uri, kind, path, self.text.get(item_id), relevant)


def evaluate_queries(
    index: Any,
    queries: Sequence[EvalQuery],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    depth: int = 50,
    variants: Sequence[str] | None = None,
    worst: int = 8,
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Runs a query set against an open :class:`~mmsearch.engine.SearchIndex`.

    Each query is searched once per variant with ``k = depth``; recall@k, MRR (within
    ``depth``) and nDCG@10 are computed per query and averaged. Relevant items absent
    from the index still count as relevant (they lower recall) and are listed in
    ``skipped``; a query with no relevant item in the index at all is skipped.
    """
    started = time.perf_counter()
    progress = progress or _noop
    chosen = available_variants(index, list(variants) if variants else None)
    depth = max(depth, max(ks), 10)
    catalog = _Catalog(index)
    progress("queries", 0, len(queries) * len(chosen))
    per_variant: dict[str, list[dict[str, float]]] = {v.name: [] for v in chosen}
    hits: dict[str, list[list[bool]]] = {v.name: [] for v in chosen}
    rows: list[dict[str, Any]] = []
    cases: list[tuple[float, WorstCase]] = []
    skipped: list[str] = []
    for query in queries:
        grades: dict[Any, float] = {}
        for key, grade in query.relevant.items():
            item = catalog.resolve(key)
            if item is None:
                skipped.append(f"line {query.line}: relevant item {key!r} is not in the index")
                grades[("missing", key)] = grade
            else:
                grades[item] = max(grade, grades.get(item, 0.0))
        if not any(isinstance(k, int) for k in grades):
            skipped.append(f"line {query.line}: no relevant item is in the index; query skipped")
            progress("queries", len(chosen), None)
            continue
        row: dict[str, Any] = {
            "line": query.line,
            "query": query.query,
            "relevant": len(grades),
            "metrics": {},
            "top": {},
        }
        ranked_by: dict[str, list[int]] = {}
        for variant in chosen:
            results = index.search(
                query.query,
                k=depth,
                kind=query.kind,
                where=query.where or None,
                **dict(variant.options),
            )
            ranked = [r.id for r in results]
            ranked_by[variant.name] = ranked
            metrics = query_metrics(ranked, grades, ks)
            per_variant[variant.name].append(metrics)
            relevant = {k for k, g in grades.items() if g > 0}
            hits[variant.name].append(
                [i in relevant for i in ranked] + [False] * (depth - len(ranked))
            )
            row["metrics"][variant.name] = {k: round(v, 6) for k, v in metrics.items()}
            row["top"][variant.name] = [catalog.uri[i] for i in ranked[:10]]
            progress("queries", 1, None)
        rows.append(row)
        primary = PRIMARY if PRIMARY in ranked_by else chosen[0].name
        m = row["metrics"][primary]
        ranked = ranked_by[primary]
        expected = [
            catalog.shown(k, True)
            for k, g in sorted(grades.items(), key=lambda kv: -kv[1])
            if isinstance(k, int) and g > 0
        ]
        image_query = query.query if os.path.isfile(query.query) else None
        cases.append(
            (
                m["ndcg@10"] + 1e-3 * m["mrr"],
                WorstCase(
                    query.label,
                    image_query,
                    m["ndcg@10"],
                    "nDCG@10",
                    expected[:5],
                    [catalog.shown(i, grades.get(i, 0.0) > 0) for i in ranked[:5]],
                ),
            )
        )
    figures = {name: mean_metrics(values) for name, values in per_variant.items() if values}
    curves = {
        name: [round(float(x), 6) for x in _recall_curve(h, rows, name)]
        for name, h in hits.items()
        if h
    }
    cases.sort(key=lambda c: c[0])
    return EvalReport(
        mode="queries",
        model=index.spec.key,
        variants=[v.name for v in chosen],
        figures=figures,
        curves=curves,
        queries=rows,
        worst=[c for _, c in cases[:worst]],
        n_queries=len(rows),
        n_items=len(catalog.ids),
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )


def _recall_curve(hits: list[list[bool]], rows: list[dict[str, Any]], name: str) -> list[float]:
    """Mean recall@K for K = 1..depth (fraction of each query's relevant items in its top K)."""
    arr = np.asarray(hits, dtype=np.float64)
    relevant = np.asarray([row["relevant"] for row in rows], dtype=np.float64)[:, None]
    return list((np.cumsum(arr, axis=1) / relevant).mean(axis=0))


# -- captioned collections -----------------------------------------------------------------


def index_captioned(
    data: CaptionedSet,
    work_dir: Path,
    spec: Any,
    encoder: Any,
    progress: ProgressFn,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Indexes a captioned collection into ``work_dir`` with the regular pipeline.

    The images are linked into ``work_dir/images`` as ``NNNNNNN<ext>`` (their position),
    the captions written to ``work_dir/captions.jsonl`` with ids ``c<position>``.
    """
    from indexer.pipeline import IndexOptions, run_index

    image_dir = work_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(data.images):
        link = image_dir / f"{i:07d}{src.suffix.lower()}"
        if not link.exists():
            os.symlink(os.path.abspath(src), link)
    captions = work_dir / "captions.jsonl"
    with open(captions, "w", encoding="utf-8") as fh:
        for j, text in enumerate(data.captions):
            fh.write(json.dumps({"id": f"c{j}", "caption": text}, ensure_ascii=False) + "\n")
    report = run_index(
        [image_dir, captions],
        work_dir / "index",
        spec,
        options=IndexOptions(batch_size=batch_size),
        progress=progress,
        encoder=encoder,
    )
    return {"failed": report.failed, "failures": [f"{f.path}: {f.reason}" for f in report.failures]}


def _position_of(catalog: _Catalog) -> tuple[dict[int, int], dict[int, int]]:
    """id → image position and id → caption position, from the names index_captioned gives."""
    images: dict[int, int] = {}
    texts: dict[int, int] = {}
    for item_id, uri in catalog.uri.items():
        if catalog.kind[item_id] == "image":
            images[item_id] = int(Path(catalog._uri_to_path(uri)).stem)
        else:
            texts[item_id] = int(uri.rsplit("#c", 1)[1])
    return images, texts


def evaluate_captioned(
    data: CaptionedSet,
    spec: Any,
    *,
    encoder: Any | None = None,
    device: str | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    variants: Sequence[str] | None = None,
    worst: int = 8,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Text→image and image→text R@k of ``spec`` on a captioned collection, per variant.

    The collection is indexed (images and captions) into ``work_dir`` (a temporary
    folder by default) with one model load; every caption then queries the images and
    every image (its stored vector) queries the captions. R@k is CLIP_benchmark's: the
    share of queries with a positive in the top k (a caption's one image; any of an
    image's captions).
    """
    from mmsearch.engine import SearchIndex

    started = time.perf_counter()
    progress = progress or _noop
    if encoder is None:
        from mmsearch.models import load_encoder

        encoder = load_encoder(spec, device=device)
    with tempfile.TemporaryDirectory(prefix="mmsearch-eval-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        built = index_captioned(data, root, spec, encoder, progress, batch_size)
        index = SearchIndex(root / "index", encoder=encoder)
        report = _captioned_report(index, data, ks, variants, worst, progress)
    report.skipped = built["failures"]
    report.seconds = time.perf_counter() - started
    return report


def _captioned_report(
    index: Any,
    data: CaptionedSet,
    ks: Sequence[int],
    variants: Sequence[str] | None,
    worst: int,
    progress: ProgressFn,
) -> EvalReport:
    chosen = [
        v
        for v in available_variants(index, list(variants) if variants else None)
        if _vector_variant(v)
    ]
    depth = max(max(ks), 10)
    catalog = _Catalog(index)
    image_pos, text_pos = _position_of(catalog)
    catalog.original_path = {
        i: str(data.images[p]) for i, p in image_pos.items()
    }  # the work dir goes away
    id_of_image = {p: i for i, p in image_pos.items()}
    image_ids = [id_of_image[p] for p in sorted(id_of_image)]
    text_ids = sorted(text_pos, key=text_pos.get)
    t2i_positive = {i: {id_of_image.get(data.caption_image[text_pos[i]])} for i in text_ids}
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


def _vector_variant(variant: Variant) -> bool:
    """Captioned mode queries by vector: only variants made of ANN options apply."""
    return set(variant.options) <= {"exact", "nprobe", "refine"}


def _stored_vectors(index: Any, ids: list[int]) -> np.ndarray:
    ids_all, vectors = index.store.vectors("image")
    pos = {int(i): n for n, i in enumerate(ids_all)}
    return vectors[[pos[i] for i in ids]]


def _ranked_hits(
    index: Any,
    vectors: np.ndarray,
    query_ids: list[int],
    positives: dict[int, set[int | None]],
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
            vector, depth, kind=kind, query_kind=query_kind, **dict(variant.options)
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
    catalog: _Catalog,
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
