"""Hybrid search on the synthetic catalog with the real mmsearch-tiny model, LanceDB FTS and FAISS.

The catalog's product rows (caption text + sku, title with an invented brand word,
colour, shape, price) are indexed as a text collection: cheap to embed, and the SKU
codes and brand words are exactly what a CLIP vector cannot know.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from indexer.pipeline import IndexOptions, run_index
from mmsearch.cli import app
from mmsearch.datasets.synthetic import BRANDS
from mmsearch.engine import SearchIndex
from mmsearch.errors import BadQueryError


@pytest.fixture(scope="module")
def catalog_index(tmp_path_factory, tiny_encoder):
    from types import SimpleNamespace

    from mmsearch.datasets.synthetic import catalog_rows

    root = tmp_path_factory.mktemp("hybrid")
    rows = catalog_rows(330, seed=3)
    jsonl = root / "catalog.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run_index([jsonl], root / "idx", tiny_encoder.spec, options=IndexOptions(batch_size=128),
              encoder=tiny_encoder)  # fmt: skip
    return SearchIndex(root / "idx", encoder=tiny_encoder), SimpleNamespace(rows=rows)


def test_sku_codes_top1_hybrid_vs_vector(catalog_index, record_property) -> None:
    idx, cat = catalog_index
    assert idx.has_lexical
    skus = sorted({str(r["sku"]) for r in cat.rows})[:100]
    assert len(skus) == 100
    forms = [
        s if i % 3 == 0 else (s.lower() if i % 3 == 1 else s.split("-")[1])
        for i, s in enumerate(skus)
    ]
    hybrid = sum(
        idx.search(q, k=1)[0].metadata["sku"] == s for q, s in zip(forms, skus, strict=True)
    )
    vector = sum(
        (hits := idx.search(q, k=1, mode="vector")) and hits[0].metadata["sku"] == s
        for q, s in zip(forms, skus, strict=True)
    )
    record_property("sku_top1_hybrid", hybrid)
    record_property("sku_top1_vector", vector)
    assert hybrid >= 95, f"hybrid {hybrid}/100, vector-only {vector}/100"
    assert vector < hybrid


def test_brand_words_hybrid_vs_vector(catalog_index, record_property) -> None:
    idx, _ = catalog_index
    hybrid = sum(
        BRANDS[i] in idx.search(b.lower(), k=1)[0].metadata["title"] for i, b in enumerate(BRANDS)
    )
    vector = sum(
        BRANDS[i] in idx.search(b, k=1, mode="vector")[0].metadata["title"]
        for i, b in enumerate(BRANDS)
    )
    record_property("brand_top1_vector", vector)
    assert hybrid == len(BRANDS), f"hybrid {hybrid}, vector-only {vector} of {len(BRANDS)}"


def test_negative_term_excludes_red_circles(catalog_index) -> None:
    idx, _ = catalog_index
    hits = idx.search('"circle" - "red"', k=10)
    assert hits.mode == "hybrid" and len(hits) == 10
    assert not [
        h for h in hits if h.metadata["colour"] == "red" and h.metadata["shape"] == "circle"
    ]
    assert sum(h.metadata["shape"] == "circle" for h in hits) >= 8


@pytest.mark.parametrize("mode", ["vector", "lexical", "hybrid"])
def test_filters_give_k_matching_rows_in_every_mode(catalog_index, mode: str) -> None:
    idx, cat = catalog_index
    for where, ok in (
        (["colour = blue"], lambda m: m["colour"] == "blue"),
        ({"price": ("<", 30), "shape": "star"}, lambda m: m["price"] < 30 and m["shape"] == "star"),
    ):
        n_match = sum(ok(r) for r in cat.rows)
        assert n_match >= 12
        hits = idx.search("star on the left", k=12, mode=mode, where=where)
        assert len(hits) == 12 and all(ok(h.metadata) for h in hits), (mode, where)


def test_group_by_sku_paging_and_builder(catalog_index) -> None:
    idx, _ = catalog_index
    grouped = idx.query().text("a red circle").group_by("sku").limit(10).results()
    skus = [h.metadata["sku"] for h in grouped]
    assert len(skus) == 10 and len(set(skus)) == 10
    by_id = {h.id: h for h in idx.search("a red circle", k=200)}
    for hit in grouped:
        assert all(by_id[i].metadata["sku"] == hit.metadata["sku"] for i in hit.group if i in by_id)
    assert any(hit.group for hit in grouped)
    page = idx.query().text("a red circle").group_by("sku").limit(5).offset(5).results()
    assert [h.id for h in page] == [h.id for h in grouped][5:] and page[0].rank == 6
    rows = idx.query().text("Zorvex").where(price__lt=100).mode("lexical").limit(3).to_list()
    assert rows and all(
        "Zorvex" in r["metadata"]["title"] and r["metadata"]["price"] < 100 for r in rows
    )
    assert set(grouped.timings) >= {
        "encode",
        "retrieve",
        "fuse",
        "filter",
        "rescore",
        "rerank",
        "shape",
    }


def test_cutoff_min_score_and_no_good_match(catalog_index) -> None:
    idx, _ = catalog_index
    assert idx.search("a blue star on the top", k=5, cutoff=True)  # words match: never cut
    nothing = idx.search("qzxv wplok", k=5, cutoff=True)
    assert nothing == [] and nothing.reason.startswith("no good match")
    assert idx.search("qzxv wplok", k=5)  # off by default: least-bad items
    hits = idx.search("a blue star on the top", k=50, mode="vector", min_score=0.8)
    assert hits and all(h.similarity >= 0.8 for h in hits) and len(hits) < 50
    assert idx.search("qzxv wplok", k=5, mode="lexical").reason.startswith("no good match")
    with pytest.raises(BadQueryError, match="needs a text term"):
        idx.query().image("ref.png").mode("lexical").results()


def test_cli_modes_literal_and_k_cap(catalog_index) -> None:
    idx, cat = catalog_index
    title = str(cat.rows[0]["title"])
    runner = CliRunner()
    base = ["query", "--index", str(idx.index_dir), "--json"]
    literal = [*base[:1], f"{title} - slim fit", *base[1:], "--literal", "--mode", "lexical"]
    done = runner.invoke(app, literal)
    assert done.exit_code == 0, done.output
    hits = json.loads(done.stdout)
    assert hits and hits[0]["metadata"]["title"] == title
    done = runner.invoke(app, [*base[:1], "qzxv wplok", *base[1:], "--cutoff"])
    assert done.exit_code == 3 and json.loads(done.stdout) == [] and "no good match" in done.output
    done = runner.invoke(app, [*base[:1], "red + missing-ref.jpg", *base[1:]])
    assert done.exit_code == 2 and "image not found: missing-ref.jpg" in done.output
    done = runner.invoke(app, [*base[:1], "red", *base[1:], "--top", "1001"])
    assert done.exit_code == 2 and "1000" in done.output
    done = runner.invoke(
        app, [*base[:1], "red", *base[1:], "--group-by", "sku", "--top", "4", "--offset", "2"]
    )
    assert done.exit_code == 0 and [h["rank"] for h in json.loads(done.stdout)] == [3, 4, 5, 6]
    counts = Counter(h["metadata"]["sku"] for h in json.loads(done.stdout))
    assert max(counts.values()) == 1
