"""Run an evaluation against an index through the public search API.

:func:`evaluate_queries` runs a query set (``mmsearch eval QUERIES.jsonl``);
:func:`mmsearch.maintenance.evaluate.evaluate_captioned` indexes a captioned collection
and measures text→image and image→text retrieval as CLIP_benchmark does. Both run
every :mod:`~mmsearch.evaluation.variants` variant side by side and return an
:class:`EvalReport`; the library never prints (``progress`` reports work done).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmsearch.errors import BadQueryError
from mmsearch.evaluation.inputs import EvalQuery
from mmsearch.evaluation.metrics import (
    DEFAULT_KS,
    class_metrics,
    mean_metrics,
    query_metrics,
)
from mmsearch.evaluation.variants import (
    PRIMARY,
    EvaluatedIndex,
    available_variants,
    search_options,
)
from mmsearch.search.limits import MAX_K
from mmsearch.uris import path_to_uri, uri_to_path

#: progress(stage, advance, more_total), as the indexing pipeline reports it.
ProgressFn = Callable[[str, int, int | None], None]


def no_progress(stage: str, advance: int, total: int | None) -> None:
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
    """Figures of one evaluation run; ``overall`` holds the primary variant's figures.

    ``classes`` maps each class of query (the query set's ``class`` field) to its
    figures per variant (:func:`~mmsearch.evaluation.metrics.class_metrics`, averaged
    over that class's queries); ``class_sizes`` counts its queries.
    """

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
    classes: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    class_sizes: dict[str, int] = field(default_factory=dict)

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
            "classes": {
                name: {"queries": self.class_sizes[name], "variants": figures}
                for name, figures in self.classes.items()
            },
            "queries": self.queries,
        }


class ItemCatalog:
    """The rows an index serves: id → (uri, kind, text) of every row the index serves, and uri → id."""

    def __init__(self, index: EvaluatedIndex) -> None:
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

    def local_path(self, uri: str) -> str:
        """The local file path of an image uri."""
        return self._uri_to_path(uri)

    def shown(self, item_id: int, relevant: bool = False) -> Shown:
        kind = self.kind.get(item_id, "")
        uri = self.uri.get(item_id, "")
        path = self.original_path.get(item_id) or (
            self._uri_to_path(uri) if kind == "image" and uri else None
        )
        return Shown(item_id, uri, kind, path, self.text.get(item_id), relevant)


def evaluate_queries(
    index: EvaluatedIndex,
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
    ``depth``) and nDCG@10 are computed per query and averaged, and per class of query
    (:attr:`EvalQuery.group`) recall@10, MRR, hit@1 and only@5. Relevant items absent
    from the index still count as relevant (they lower recall) and are listed in
    ``skipped``; a query with no relevant item in the index at all is skipped. An image
    query whose own file is indexed finds itself first: unless the set lists that file
    among the query's relevant items, it is left out of the query's ranking, so that it
    counts neither as a hit nor as a miss (as in query-by-example benchmarks).
    """
    started = time.perf_counter()
    progress = progress or no_progress
    chosen = available_variants(index, list(variants) if variants else None)
    depth = max(depth, max(ks), 10)
    catalog = ItemCatalog(index)
    progress("queries", 0, len(queries) * len(chosen))
    per_variant: dict[str, list[dict[str, float]]] = {v.name: [] for v in chosen}
    hits: dict[str, list[list[bool]]] = {v.name: [] for v in chosen}
    by_class: dict[str, dict[str, list[dict[str, float]]]] = {}
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
            "class": query.group,
            "relevant": sum(1 for g in grades.values() if g > 0),
            "metrics": {},
            "top": {},
        }
        ranked_by: dict[str, list[int]] = {}
        # Query by example: the query image itself, when indexed and not listed as relevant,
        # is left out of its own ranking (finding itself is neither a hit nor a miss).
        own = catalog.resolve(query.query) if os.path.isfile(query.query) else None
        if own is not None and grades.get(own, 0.0) > 0:
            own = None
        for variant in chosen:
            results = index.search(
                query.query,
                k=min(depth + (own is not None), MAX_K),
                kind=query.kind,
                where=query.where or None,
                **(search_options(index.search, variant) or {}),
            )
            ranked = [r.id for r in results if r.id != own][:depth]
            ranked_by[variant.name] = ranked
            metrics = query_metrics(ranked, grades, ks)
            per_variant[variant.name].append(metrics)
            relevant = {k for k, g in grades.items() if g > 0}
            hits[variant.name].append(
                [i in relevant for i in ranked] + [False] * (depth - len(ranked))
            )
            if query.group is not None:
                per_class = by_class.setdefault(query.group, {v.name: [] for v in chosen})
                per_class[variant.name].append(class_metrics(ranked, grades))
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
    if not rows:
        raise BadQueryError(
            f"none of the {len(queries)} queries has a relevant item in the index "
            f"({skipped[0] if skipped else 'the set is empty'}); "
            "relevant paths are relative to the query file"
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
        classes={
            name: {v: mean_metrics(values) for v, values in figures.items()}
            for name, figures in by_class.items()
        },
        class_sizes={name: len(next(iter(f.values()))) for name, f in by_class.items()},
    )


def _recall_curve(hits: list[list[bool]], rows: list[dict[str, Any]], name: str) -> list[float]:
    """Mean recall@K for K = 1..depth (fraction of each query's relevant items in its top K)."""
    arr = np.asarray(hits, dtype=np.float64)
    relevant = np.asarray([row["relevant"] for row in rows], dtype=np.float64)[:, None]
    return list((np.cumsum(arr, axis=1) / relevant).mean(axis=0))
