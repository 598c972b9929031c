"""mmsearch eval: metrics, query-set and captioned modes against independent brute force."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index
from typer.testing import CliRunner

from mmsearch.datasets.captioned import write_coco_captions
from mmsearch.datasets.synthetic import generate_catalog
from mmsearch.engine import SearchIndex
from mmsearch.evaluation.inputs import read_captioned, read_queries
from mmsearch.evaluation.metrics import ndcg_at_k, query_metrics, reciprocal_rank
from mmsearch.evaluation.runner import evaluate_queries
from mmsearch.maintenance.evaluate import evaluate_captioned
from mmsearch.models.preprocess import fit_square
from tests.conftest import FakeEncoder


def test_metrics_by_hand() -> None:
    ranked = ["a", "b", "c", "d"]
    grades = {"b": 2.0, "d": 1.0, "z": 1.0}  # z is never retrieved
    m = query_metrics(ranked, grades, ks=(1, 2, 4))
    assert (
        m["recall@1"] == 0
        and m["recall@2"] == pytest.approx(1 / 3)
        and m["recall@4"] == pytest.approx(2 / 3)
    )
    assert reciprocal_rank(ranked, grades) == 0.5
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, grades) == pytest.approx(dcg / idcg)
    assert reciprocal_rank(["x"], {"a": 1.0}) == 0.0


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("eval")
    catalog = generate_catalog(base / "catalog", n=80, seed=21)
    opts = IndexOptions(workers=1, batch_size=32, image_metadata=catalog.jsonl_path)
    run_index(
        [catalog.image_dir, catalog.jsonl_path],
        base / "idx",
        tiny_encoder.spec,
        options=opts,
        encoder=tiny_encoder,
    )
    return {
        "base": base,
        "catalog": catalog,
        "index": SearchIndex(base / "idx", encoder=tiny_encoder),
    }


def _write_queries(path: Path, catalog: Any) -> list[dict[str, Any]]:
    """Partial queries (several relevant images each, graded: exact position = 2) + one image query."""
    specs = [
        ("red", None),
        ("star", None),
        ("blue circle", None),
        ("circle", "left"),
        ("square", "top"),
        ("green", "right"),
    ]
    lines = []
    for words, position in specs:
        text = words + (f" on the {position}" if position else "")
        grades: dict[str, float] = {}
        for row in catalog.rows:
            attrs = {row["colour"], row["shape"]}
            if all(w in attrs for w in words.split()):
                grades[str(row["file"])] = (
                    2.0 if position in (None, row["position"]) else (1.0 if position else 2.0)
                )
        lines.append({"query": text, "relevant": grades, "kind": "image"})
    lines.append(
        {
            "query": str(catalog.rows[5]["file"]),
            "relevant": [str(catalog.rows[5]["file"])],
            "kind": "image",
        }
    )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return lines


def _brute_force(
    index: SearchIndex, encoder: Any, lines: list[dict[str, Any]], root: Path
) -> dict[str, float]:
    """recall@k, MRR (depth 50) and nDCG@10 from a full score matrix, with plain loops."""
    from mmsearch.indexer.discover import path_to_uri

    ids, vectors = index.store.vectors("image")
    table = index.store.scan(["id", "uri"])
    uri_of = dict(zip(table.column("id").to_pylist(), table.column("uri").to_pylist(), strict=True))
    per_query = []
    for line in lines:
        query = line["query"]
        if (root / query).is_file():
            from PIL import Image

            with Image.open(root / query) as im:
                qvec = encoder.encode_images(
                    fit_square(im.convert("RGB"), encoder.image_size)[None]
                )[0]
        else:
            qvec = encoder.encode_texts([query])[0]
        scores = vectors @ qvec
        order = sorted(range(len(ids)), key=lambda i: -scores[i])[:50]
        ranked = [uri_of[int(ids[i])] for i in order]
        rel = line["relevant"]
        grades = {
            path_to_uri(str((root / k).resolve())): float(g)
            for k, g in (rel.items() if isinstance(rel, dict) else [(r, 1.0) for r in rel])
        }
        n_rel = sum(1 for g in grades.values() if g > 0)
        out = {
            f"recall@{k}": sum(1 for u in ranked[:k] if grades.get(u, 0) > 0) / n_rel
            for k in (1, 5, 10)
        }
        out["mrr"] = next((1 / r for r, u in enumerate(ranked, 1) if grades.get(u, 0) > 0), 0.0)
        dcg = sum(grades.get(u, 0) / math.log2(r + 1) for r, u in enumerate(ranked[:10], 1))
        ideal = sorted(grades.values(), reverse=True)[:10]
        out["ndcg@10"] = dcg / sum(g / math.log2(r + 1) for r, g in enumerate(ideal, 1))
        per_query.append(out)
    return {k: float(np.mean([q[k] for q in per_query])) for k in per_query[0]}


def test_query_set_figures_equal_brute_force(tiny_index: dict[str, Any], tiny_encoder: Any) -> None:
    catalog = tiny_index["catalog"]
    path = catalog.root / "queries.jsonl"
    lines = _write_queries(path, catalog)
    report = evaluate_queries(tiny_index["index"], read_queries(path))
    expected = _brute_force(tiny_index["index"], tiny_encoder, lines, catalog.root)
    hybrid = ["+hybrid", "+rrf", "+weighted"] if tiny_index["index"].has_lexical else []
    assert report.variants == ["exact", "ann", *hybrid]
    assert report.n_queries == len(lines) and not report.skipped
    for variant in ("exact", "ann"):
        assert report.figures[variant] == pytest.approx(expected, abs=1e-9)
    assert 0.05 < expected["recall@5"] < 0.9  # the figures are not trivially 0 or 1
    assert set(report.to_dict()["overall"]) == {
        "recall@1",
        "recall@5",
        "recall@10",
        "mrr",
        "ndcg@10",
    }
    assert len(report.curves["exact"]) == 50 and report.curves["exact"][9] == pytest.approx(
        expected["recall@10"]
    )


def test_cli_json_and_missing_relevant(tiny_index: dict[str, Any]) -> None:
    from mmsearch.cli import app

    catalog = tiny_index["catalog"]
    path = catalog.root / "cli-queries.jsonl"
    path.write_text(
        json.dumps(
            {
                "query": "a red circle on the left",
                "relevant": [str(catalog.rows[0]["file"]), "nowhere.jpg"],
            }
        )
        + "\n"
        + json.dumps({"query": "blue", "relevant": ["gone.jpg"]})
        + "\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        app, ["eval", str(path), "--index", str(tiny_index["base"] / "idx"), "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out["overall"]) == {"recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"}
    assert (
        out["n_queries"] == 1 and out["overall"]["recall@10"] <= 0.5
    )  # nowhere.jpg counts as missed
    assert any("nowhere.jpg" in s for s in out["skipped"]) and any(
        "line 2" in s for s in out["skipped"]
    )
    nowhere = catalog.root / "nowhere.jsonl"  # no query can be scored: one line, not a crash
    nowhere.write_text(
        json.dumps({"query": "blue", "relevant": ["images/gone.jpg"]}) + "\n", encoding="utf-8"
    )
    for extra in (["--json"], ["--html", str(catalog.root / "r.html")]):
        result = CliRunner().invoke(
            app, ["eval", str(nowhere), "--index", str(tiny_index["base"] / "idx"), *extra]
        )
        assert result.exit_code == 2, result.output
        assert "none of the 1 queries has a relevant item in the index" in result.output
        assert "images/gone.jpg" in result.output and not (catalog.root / "r.html").exists()
    bad = catalog.root / "bad.jsonl"
    bad.write_text('{"query": "x", "relevant": []}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", str(bad), "--index", str(tiny_index["base"] / "idx")])
    assert result.exit_code != 0


def test_captioned_mode_equals_clip_benchmark_brute_force(tmp_path: Path) -> None:
    """COCO-style file, 5 captions per image; a deliberately weak encoder gives mid-range figures."""
    path = write_coco_captions(tmp_path / "coco", n=30, seed=3)
    data = read_captioned(path)
    assert len(data.images) == 30 and len(data.captions) == 150
    encoder = FakeEncoder(dim=16)
    report = evaluate_captioned(data, encoder.spec, encoder=encoder, work_dir=tmp_path / "work")
    from mmsearch.indexer.decode import decode_file

    # The pixels the indexer embeds (its decoder scales JPEGs while decoding); the
    # metric, not the decoder, is what this test computes independently.
    images = np.stack([decode_file(str(p), encoder.image_size)[0] for p in data.images])
    img = encoder.encode_images(images)
    txt = encoder.encode_texts(data.captions)
    scores = txt @ img.T  # (texts, images), as CLIP_benchmark
    expected: dict[str, float] = {}
    for k in (1, 5, 10):
        t2i = [
            int(data.caption_image[j] in np.argsort(-scores[j], kind="stable")[:k])
            for j in range(len(txt))
        ]
        i2t = [
            int(
                any(
                    data.caption_image[j] == i for j in np.argsort(-scores[:, i], kind="stable")[:k]
                )
            )
            for i in range(len(img))
        ]
        expected[f"t2i_recall@{k}"] = float(np.mean(t2i))
        expected[f"i2t_recall@{k}"] = float(np.mean(i2t))
    assert report.figures["exact"] == pytest.approx(expected, abs=1e-9)
    assert report.figures["ann"] == pytest.approx(expected, abs=1e-9)
    assert 0.0 < expected["t2i_recall@5"] < 1.0
    assert report.n_queries == 180 and report.worst


def test_variants_are_pluggable(tiny_index: dict[str, Any]) -> None:
    from mmsearch.errors import BadQueryError
    from mmsearch.evaluation.variants import Variant, available_variants, register_variant

    index = tiny_index["index"]
    names = [v.name for v in available_variants(index)]
    assert (
        names[:2] == ["exact", "ann"] and "+rerank" not in names
    )  # shown once search accepts rerank=
    register_variant(Variant("refine-1", {"refine": 1}, "ANN with the least re-scoring"))
    try:
        queries = read_queries(_write_one(tiny_index["catalog"]))
        report = evaluate_queries(index, queries, variants=["exact", "refine-1"])
        assert report.variants == ["exact", "refine-1"] and set(report.figures) == {
            "exact",
            "refine-1",
        }
        with pytest.raises(BadQueryError, match="unknown variant"):
            evaluate_queries(index, queries, variants=["nope"])
        if "+rerank" not in names:
            with pytest.raises(BadQueryError, match=r"\+rerank cannot run"):
                evaluate_queries(index, queries, variants=["+rerank"])
    finally:
        from mmsearch.evaluation import variants

        variants._REGISTRY[:] = [v for v in variants._REGISTRY if v.name != "refine-1"]


def _write_one(catalog: Any) -> Path:
    path = catalog.root / "one.jsonl"
    row = catalog.rows[3]
    path.write_text(
        json.dumps({"query": row["caption"], "relevant": [row["file"]]}) + "\n", encoding="utf-8"
    )
    return path


def test_input_formats(tmp_path: Path) -> None:
    from PIL import Image

    from mmsearch.errors import BadQueryError, TextCollectionError

    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": 2, "caption": "two"},
            {"image_id": 1, "caption": "one"},
            {"image_id": 2, "caption": "deux"},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    data = read_captioned(tmp_path / "coco.json")
    assert [p.name for p in data.images] == ["b.jpg", "a.jpg"] and data.caption_image == [0, 1, 0]
    (tmp_path / "caps.csv").write_text("image,caption\na.jpg,one\nb.jpg,two\na.jpg,uno\n")
    data = read_captioned(tmp_path / "caps.csv")
    assert data.captions == ["one", "two", "uno"] and data.caption_image == [0, 1, 0]
    (tmp_path / "list.json").write_text(
        json.dumps(
            [{"image": "a.jpg", "caption": ["x", "y"]}, {"image": "gone.jpg", "caption": "z"}]
        )
    )
    with pytest.raises(TextCollectionError, match="not found"):
        read_captioned(tmp_path / "list.json")
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        json.dumps(
            {
                "query": {
                    "terms": [
                        {"text": "red dress", "weight": 2},
                        {"image": "a.jpg"},
                        {"text": "stripes", "weight": -1},
                    ],
                    "where": ["price < 9"],
                },
                "relevant": {"b.jpg": 2, "a.jpg": 0},
            }
        )
        + "\n"
    )
    (q,) = read_queries(queries)
    assert q.query == f'"2:red dress" + {tmp_path / "a.jpg"} - "stripes"' and q.where == [
        "price < 9"
    ]
    assert q.relevant == {str(tmp_path / "b.jpg"): 2.0, str(tmp_path / "a.jpg"): 0.0}
    queries.write_text('{"query": "x", "relevant": {"a.jpg": 0}}\n')
    with pytest.raises(BadQueryError, match="line 1"):
        read_queries(queries)
