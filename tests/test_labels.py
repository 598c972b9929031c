"""Zero-shot labels with mmsearch-tiny: accuracy on generated images, filters, incremental runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mmsearch.indexer.labels import label_index
from mmsearch.indexer.pipeline import IndexOptions, run_index
from typer.testing import CliRunner

from mmsearch.datasets.synthetic import COLOURS, SHAPES, generate_catalog
from mmsearch.engine import SearchIndex
from mmsearch.errors import BadQueryError
from mmsearch.labels import LabelSet, classify, load_label_sets

TINY_TEMPLATES = ("{}", "a {}")


def _accuracy(index_dir: Path, column: str, truth: str) -> tuple[float, int]:
    idx = SearchIndex(index_dir)
    metas = [
        json.loads(m)
        for m in idx.store.scan(["metadata"], "kind = 'image'").column("metadata").to_pylist()
    ]
    return float(np.mean([m[column] == m[truth] for m in metas])), len(metas)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("labels")
    catalog = generate_catalog(base / "catalog", n=64, seed=31)
    opts = IndexOptions(workers=1, batch_size=48, image_metadata=catalog.jsonl_path)
    run_index(
        [catalog.image_dir], base / "idx", tiny_encoder.spec, options=opts, encoder=tiny_encoder
    )
    shapes = label_index(
        base / "idx", LabelSet("shape_zs", SHAPES, TINY_TEMPLATES), encoder=tiny_encoder
    )
    colours = label_index(
        base / "idx", LabelSet("colour_zs", COLOURS, TINY_TEMPLATES), encoder=tiny_encoder
    )
    return {"base": base, "catalog": catalog, "opts": opts, "shapes": shapes, "colours": colours}


def test_shape_and_colour_accuracy(labelled: dict[str, Any]) -> None:
    assert labelled["shapes"].labelled == 64 and labelled["colours"].labelled == 64
    shape_acc, n = _accuracy(labelled["base"] / "idx", "shape_zs", "shape")
    colour_acc, _ = _accuracy(labelled["base"] / "idx", "colour_zs", "colour")
    assert n == 64
    assert shape_acc >= 0.9, shape_acc
    assert colour_acc >= 0.9, colour_acc
    assert [s.column for s in load_label_sets(labelled["base"] / "idx")] == [
        "shape_zs",
        "colour_zs",
    ]


def test_filters_on_the_label_column_and_new_items_get_labels(
    labelled: dict[str, Any], tiny_encoder: Any
) -> None:
    base, catalog = labelled["base"], labelled["catalog"]
    idx = SearchIndex(base / "idx", encoder=tiny_encoder)
    hits = idx.search(
        "a star", k=50, kind="image", where=["shape_zs = star", "shape_zs_prob > 0.5"]
    )
    assert hits and all(
        h.metadata["shape_zs"] == "star" and h.metadata["shape_zs_prob"] > 0.5 for h in hits
    )
    n_star = sum(1 for m in _metas(idx) if m["shape_zs"] == "star" and m["shape_zs_prob"] > 0.5)
    assert len(hits) == n_star
    # An incremental run with new images labels exactly those (existing labels are kept).
    extra = generate_catalog(base / "extra", n=12, seed=32)
    shutil.copytree(extra.image_dir, catalog.image_dir / "more")
    report = run_index(
        [catalog.image_dir],
        base / "idx",
        tiny_encoder.spec,
        options=labelled["opts"],
        encoder=tiny_encoder,
    )
    assert report.added == 12 and report.unchanged == 64
    metas = _metas(SearchIndex(base / "idx", encoder=tiny_encoder))
    assert len(metas) == 76 and all("shape_zs" in m and "colour_zs" in m for m in metas)
    truth = {Path(str(r["file"])).name: r for r in extra.rows}
    new = [m for m in metas if "sku" not in m]  # not in the metadata sidecar: the new images
    names = [Path(m["file"]).name for m in new]  # file: the path relative to the indexed folder
    assert sorted(names) == sorted(truth)
    assert (
        np.mean([m["shape_zs"] == truth[n]["shape"] for m, n in zip(new, names, strict=True)])
        >= 0.9
    )


def _metas(idx: SearchIndex) -> list[dict[str, Any]]:
    return [
        json.loads(m)
        for m in idx.store.scan(["metadata"], "kind = 'image'").column("metadata").to_pylist()
    ]


def test_cli_label_and_results_show_it(labelled: dict[str, Any]) -> None:
    from mmsearch.cli import app

    index_dir = str(labelled["base"] / "idx")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "label",
            "--index",
            index_dir,
            "--labels",
            "left,right",
            "--column",
            "side",
            "-t",
            "{}",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["labelled"] > 64 and set(out["counts"]) <= {"left", "right"}
    result = runner.invoke(
        app, ["query", "circle", "--index", index_dir, "--kind", "image", "-k", "3", "--json"]
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert all(
        h["metadata"]["side"] in ("left", "right") and "side_prob" in h["metadata"] for h in hits
    )
    from rich.console import Console

    from mmsearch.cli.render import result_table

    console = Console(width=400, record=True)
    console.print(result_table(SearchIndex(index_dir).search("circle", k=3, kind="image")))
    text = console.export_text()
    assert "side=" in text and "shape_zs=" in text and "side_prob" not in text
    result = runner.invoke(app, ["label", "--index", index_dir, "--labels", "one", "--column", "x"])
    assert result.exit_code == 2 and "two distinct labels" in result.output
    result = runner.invoke(
        app, ["label", "--index", index_dir, "--labels", "a,b", "--column", "colour"]
    )
    assert (
        result.exit_code == 2 and "already have a 'colour'" in result.output
    )  # catalog metadata is kept


def test_classify_and_label_set_checks() -> None:
    labels = np.eye(3, dtype=np.float32)
    best, prob = classify(np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.95]], np.float32), labels, 100.0)
    assert best.tolist() == [0, 2] and (prob > 0.99).all()
    with pytest.raises(BadQueryError):
        LabelSet("bad column", ("a", "b"))
    with pytest.raises(BadQueryError):
        LabelSet("ok", ("a", "b"), ("no placeholder",))
