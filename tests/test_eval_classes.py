"""Query classes in ``mmsearch eval``, and the fusions on the brand/SKU catalog of the independent renderer.

The catalog (``benchmarks/brand_catalog.py``) is what a shop indexes: product images
drawn by a renderer no model here was trained on, with a sidecar of SKUs and titles
holding invented brand words. Its query set has five classes (attribute words, SKU
codes, brand words, brand + attribute, image queries); ``mmsearch eval`` reports each
class per variant. These tests check the class figures against plain loops, the CLI's
output, and that the default (relative) fusion answers brand words with that brand
where reciprocal rank fusion mixes in the vector leg's chance hits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index
from typer.testing import CliRunner

from benchmarks.brand_catalog import CLASSES, VALIDATION_BRANDS, write_brand_catalog
from mmsearch.engine import SearchIndex
from mmsearch.errors import BadQueryError
from mmsearch.evaluation.inputs import read_queries
from mmsearch.evaluation.metrics import class_metrics, only_relevant_at_k
from mmsearch.evaluation.runner import evaluate_queries


def test_class_metrics_by_hand() -> None:
    grades = {"a": 1.0, "b": 1.0, "c": 0.0}
    assert class_metrics(["a", "x", "b"], grades) == {
        "recall@10": 1.0,
        "mrr": 1.0,
        "hit@1": 1.0,
        "only@5": 0.0,  # two relevant items: the first two results must both be
    }
    assert class_metrics(["x", "b", "a"], grades)["hit@1"] == 0.0
    assert only_relevant_at_k(["b", "a", "x", "y"], grades, 5) == 1.0
    many = {str(i): 1.0 for i in range(9)}
    assert only_relevant_at_k(list("01234x"), many, 5) == 1.0
    assert only_relevant_at_k(list("0123x4"), many, 5) == 0.0
    assert only_relevant_at_k(list("012"), many, 5) == 0.0  # fewer than five returned
    with pytest.raises(ValueError):
        only_relevant_at_k(["a"], {"a": 0.0}, 5)


def test_query_class_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(
        json.dumps({"query": "red", "relevant": [1], "class": "attribute"})
        + "\n"
        + json.dumps({"query": "blue", "relevant": [2]})
        + "\n",
        encoding="utf-8",
    )
    assert [q.group for q in read_queries(path)] == ["attribute", None]
    for bad in (3, "", ["brand"]):
        path.write_text(json.dumps({"query": "x", "relevant": [1], "class": bad}) + "\n")
        with pytest.raises(BadQueryError, match="line 1: 'class' must be a non-empty string"):
            read_queries(path)


@pytest.fixture(scope="module")
def brand_index(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("brands")
    catalog = write_brand_catalog(root, n=160, seed=7, brands=VALIDATION_BRANDS[:8], per_class=8)
    options = IndexOptions(workers=1, batch_size=64, image_metadata=root / "catalog.jsonl")
    run_index([root / "images"], root / "idx", tiny_encoder.spec, options=options,
              encoder=tiny_encoder)  # fmt: skip
    return {
        "root": root,
        "catalog": catalog,
        "index": SearchIndex(root / "idx", encoder=tiny_encoder),
    }


def test_brand_catalog_classes_and_ground_truth(brand_index: dict[str, Any]) -> None:
    catalog = brand_index["catalog"]
    counts = {c: sum(q["class"] == c for q in catalog.queries) for c in CLASSES}
    assert counts == {"attribute": 8, "sku": 8, "brand": 8, "brand_attribute": 8, "image": 8}
    by_file = {r["file"]: r for r in catalog.rows}
    for q in catalog.queries:
        assert q["relevant"], q
        rows = [by_file[f] for f in q["relevant"]]
        if q["class"] == "brand":
            assert all(r["title"].lower().startswith(q["query"].lower() + " ") for r in rows)
            assert len(rows) == sum(r["_brand"].lower() == q["query"].lower() for r in catalog.rows)
        elif q["class"] == "sku":
            assert {r["sku"] for r in rows} == {q["query"]}
        elif q["class"] == "brand_attribute":
            brand, colour, shape = q["query"].split()
            assert all(r["title"].lower().startswith(f"{brand} {colour} {shape},") for r in rows)
        elif q["class"] == "image":
            assert (brand_index["root"] / q["query"]).is_file()
    sidecar = (brand_index["root"] / "catalog.jsonl").read_text(encoding="utf-8")
    assert "_brand" not in sidecar and "position" not in sidecar  # ground truth stays out


def test_eval_reports_each_class_per_variant(brand_index: dict[str, Any]) -> None:
    from mmsearch.indexer.discover import path_to_uri

    index = brand_index["index"]
    queries = read_queries(brand_index["root"] / "queries.jsonl")
    variants = ["ann", "+hybrid", "+rrf"]
    report = evaluate_queries(index, queries, variants=variants)
    assert set(report.classes) == set(CLASSES) and report.class_sizes["brand"] == 8
    for group in CLASSES:  # each figure equals the mean of its queries, by plain loops
        mine = [q for q in queries if q.group == group]
        for variant in variants:
            options = {"mode": "vector"} if variant == "ann" else {}
            if variant == "+rrf":
                options["fusion"] = "rrf"
            sums = {"recall@10": 0.0, "mrr": 0.0, "hit@1": 0.0, "only@5": 0.0}
            for q in mine:
                ranked = [r.uri for r in index.search(q.query, k=50, kind=q.kind, **options)]
                relevant = {k for k, g in q.relevant.items() if g > 0}
                uris = {path_to_uri(str(k)) for k in relevant}
                first = next((i for i, u in enumerate(ranked, 1) if u in uris), None)
                sums["recall@10"] += len(uris & set(ranked[:10])) / len(uris)
                sums["mrr"] += 1 / first if first else 0.0
                sums["hit@1"] += float(first == 1)
                top = ranked[: min(5, len(uris))]
                sums["only@5"] += float(len(top) == min(5, len(uris)) and set(top) <= uris)
            expected = {k: v / len(mine) for k, v in sums.items()}
            assert report.classes[group][variant] == pytest.approx(expected), (group, variant)
    classes = report.classes
    # SKU codes: the exact-identifier leg in every fusion; the vector leg alone never.
    assert classes["sku"]["+hybrid"]["hit@1"] == 1.0 and classes["sku"]["ann"]["hit@1"] < 0.5
    # Brand words: the default fusion keeps the vector leg's chance hits out of the top 5.
    assert classes["brand"]["+hybrid"]["only@5"] == 1.0
    assert classes["brand"]["+rrf"]["only@5"] < classes["brand"]["+hybrid"]["only@5"]
    assert classes["brand_attribute"]["+hybrid"]["mrr"] >= classes["brand_attribute"]["+rrf"]["mrr"]
    # Image queries run the vector leg whatever the fusion.
    assert classes["image"]["+hybrid"] == classes["image"]["ann"] == classes["image"]["+rrf"]


def test_cli_eval_prints_and_exports_classes(brand_index: dict[str, Any]) -> None:
    from mmsearch.cli import app

    args = [
        "eval",
        str(brand_index["root"] / "queries.jsonl"),
        "--index",
        str(brand_index["root"] / "idx"),
    ]
    shown = CliRunner().invoke(app, [*args, "--variant", "ann", "--variant", "+hybrid"])
    assert shown.exit_code == 0, shown.output
    assert "per class of query" in shown.stdout and "brand_attribute" in shown.stdout
    assert "only@5" in shown.stdout and "hit@1" in shown.stdout
    out = CliRunner().invoke(app, [*args, "--variant", "+hybrid", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["classes"]["sku"]["queries"] == 8
    assert set(data["classes"]["brand"]["variants"]["+hybrid"]) == {
        "recall@10",
        "mrr",
        "hit@1",
        "only@5",
    }
    assert {q["class"] for q in data["queries"]} == set(CLASSES)
