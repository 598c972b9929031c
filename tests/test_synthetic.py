"""Tests of the seeded synthetic catalog."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsearch.datasets.synthetic import (
    COLOUR_RGB,
    COLOURS,
    POSITIONS,
    SHAPES,
    generate_catalog,
    render_item,
)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_catalog_is_deterministic(tmp_path: Path) -> None:
    a = generate_catalog(tmp_path / "a", n=30, seed=7, corrupt=3)
    b = generate_catalog(tmp_path / "b", n=30, seed=7, corrupt=3)
    c = generate_catalog(tmp_path / "c", n=30, seed=8)
    assert _digest(a.root) == _digest(b.root)
    assert a.rows != c.rows or _digest(a.root) != _digest(c.root)


def test_rows_files_and_columns(tmp_path: Path) -> None:
    info = generate_catalog(tmp_path, n=60, seed=1)
    assert info.n == 60 and len(info.rows) == 60
    jsonl = [json.loads(line) for line in info.jsonl_path.read_text().splitlines()]
    with open(info.csv_path, newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert (
        [r["id"] for r in jsonl]
        == [r["id"] for r in csv_rows]
        == [f"item-{i:06d}" for i in range(60)]
    )
    suffixes = set()
    for row, crow in zip(jsonl, csv_rows, strict=True):
        assert row["caption"] == f"a {row['colour']} {row['shape']} on the {row['position']}"
        assert crow["caption"] == row["caption"] and float(crow["price"]) == row["price"]
        assert round(row["price"], 2) == row["price"]
        path = tmp_path / row["file"]
        suffixes.add(path.suffix)
        with Image.open(path) as im:
            assert im.size == (128, 128)
    assert suffixes == {".jpg", ".png"}
    skus = Counter(r["sku"] for r in jsonl)
    # Every SKU except possibly the last (cut off at n) has 2-4 images of one colour+shape.
    for sku, count in list(skus.items())[:-1]:
        assert 2 <= count <= 4
        kinds = {(r["colour"], r["shape"]) for r in jsonl if r["sku"] == sku}
        assert len(kinds) == 1


def test_corrupt_files_are_listed_and_undecodable(tmp_path: Path) -> None:
    info = generate_catalog(tmp_path, n=5, seed=2, corrupt=3)
    assert len(info.corrupt_files) == 3
    listed = {r["file"] for r in info.rows}
    for path in info.corrupt_files:
        assert path.exists()
        assert path.relative_to(tmp_path).as_posix() not in listed
        with pytest.raises((OSError, SyntaxError, ValueError)):
            with Image.open(path) as im:
                im.load()


@pytest.mark.parametrize("position", POSITIONS)
def test_shape_sits_at_its_position(position: str) -> None:
    rng = np.random.default_rng(0)
    for colour in COLOURS:
        for shape in SHAPES:
            arr = np.asarray(render_item(rng, colour, shape, position, 128)).astype(int)
            target = np.asarray(COLOUR_RGB[colour])
            mask = np.abs(arr - target).sum(axis=2) < 60
            ys, xs = np.nonzero(mask)
            assert len(xs) > 50, (colour, shape, position)
            cx, cy = xs.mean() / 128, ys.mean() / 128
            expected = {
                "left": (0.22, 0.5),
                "right": (0.78, 0.5),
                "top": (0.5, 0.22),
                "bottom": (0.5, 0.78),
                "center": (0.5, 0.5),
            }[position]
            assert abs(cx - expected[0]) < 0.08 and abs(cy - expected[1]) < 0.08


def test_pair_scenes_captions_metadata_and_halves(tmp_path: Path) -> None:
    from mmsearch.datasets.synthetic import CATALOG_COLUMNS

    info = generate_catalog(tmp_path, n=40, seed=5, scenes="pairs")
    for row in info.rows:
        assert set(row) == set(CATALOG_COLUMNS)
        (lc, rc), (ls, rs) = str(row["colour"]).split(","), str(row["shape"]).split(",")
        assert row["caption"] == f"a {lc} {ls} to the left of a {rc} {rs}"
        assert (lc, ls) != (rc, rs) and row["position"] == "left,right"
        with Image.open(tmp_path / str(row["file"])) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float64)
        # Each half holds pixels close to its own object's colour.
        for half, colour in ((arr[:, :64], lc), (arr[:, 64:], rc)):
            dist = np.linalg.norm(half - np.asarray(COLOUR_RGB[colour]), axis=-1)
            assert (dist < 40).sum() > 40, (row["caption"], colour)


def test_mixed_scenes_hold_both_kinds(tmp_path: Path) -> None:
    info = generate_catalog(tmp_path, n=60, seed=2, scenes="mixed")
    pairs = [r for r in info.rows if r["position"] == "left,right"]
    assert 15 < len(pairs) < 45
    assert all(" on the " in str(r["caption"]) for r in info.rows if r not in pairs)
    with pytest.raises(ValueError, match="scenes"):
        generate_catalog(tmp_path / "x", n=2, scenes="triples")
