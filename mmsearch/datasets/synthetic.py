"""A seeded synthetic product catalog with exact ground truth.

Product rows (SKU, title, category, price, colour, shape, position, caption) over the
pictures of :mod:`mmsearch.datasets.scenes`, written as image files plus
``catalog.jsonl`` and ``catalog.csv``. The scene vocabulary (``COLOURS``, ``SHAPES``,
``POSITIONS``...) and renderers are re-exported here, where the catalog's users look.

>>> info = generate_catalog("/tmp/cat", n=20, seed=0)   # doctest: +SKIP
>>> info.rows[0]["caption"]                              # doctest: +SKIP
'a red star on the top'
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmsearch.datasets.scenes import (
    CATEGORY_OF_SHAPE,
    COLOUR_RGB,
    COLOURS,
    POSITIONS,
    SHAPES,
    caption_for,
    pair_caption,
    random_pair,
    render_item,
    render_pair,
)

__all__ = [
    "BRANDS",
    "CATALOG_COLUMNS",
    "CATEGORY_OF_SHAPE",
    "COLOURS",
    "COLOUR_RGB",
    "POSITIONS",
    "SCENES",
    "SHAPES",
    "SIZES",
    "CatalogInfo",
    "caption_for",
    "catalog_rows",
    "generate_catalog",
    "pair_caption",
    "random_pair",
    "render_item",
    "render_pair",
    "sku_code",
    "title_for",
]

#: Kinds of catalog: one object per image, two-object scenes, or about half of each.
SCENES: tuple[str, ...] = ("single", "pairs", "mixed")


#: Invented brand words (no model knows them: only a lexical search finds them).
BRANDS: tuple[str, ...] = (
    "Zorvex", "Quillo", "Brantic", "Pelloz", "Tamsk", "Vindro", "Okkra", "Lumeth", "Straz", "Nubbo",
    "Krell", "Faxon",
)  # fmt: skip
SIZES: tuple[str, ...] = ("XS", "S", "M", "L", "XL")


def sku_code(ordinal: int) -> str:
    """The SKU of the ``ordinal``-th product (1-based): ``SKU-00042``."""
    return f"SKU-{ordinal:05d}"


def title_for(ordinal: int, colour: str, shape: str) -> str:
    """A product title: brand word, colour and shape words, size (``Zorvex red circle, size XL``).

    Brand and size follow from the SKU's ordinal, so they cost no random draws and the
    images of a seed stay the same.
    """
    brand = BRANDS[(ordinal * 7) % len(BRANDS)]
    size = SIZES[(ordinal * 3) % len(SIZES)]
    return f"{brand} {colour} {shape}, size {size}"


CATALOG_COLUMNS: tuple[str, ...] = (
    "id",
    "file",
    "caption",
    "sku",
    "title",
    "category",
    "price",
    "colour",
    "shape",
    "position",
)


@dataclass
class CatalogInfo:
    """What :func:`generate_catalog` wrote."""

    root: Path
    jsonl_path: Path
    csv_path: Path
    image_dir: Path
    n: int
    rows: list[dict[str, str | float]]
    corrupt_files: list[Path] = field(default_factory=list)


def _plan_rows(rng: np.random.Generator, n: int) -> list[dict[str, str | float]]:
    """SKUs of 2–4 images each (same colour+shape, different positions).

    Colour+shape pairs are drawn round-robin from shuffled cycles and each pair walks
    through shuffled cycles of positions, so every caption appears about equally often:
    a catalog of n ≥ 320 holds every one of the 160 captions at least once.
    """
    rows: list[dict[str, str | float]] = []
    n_skus = 0
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    pair_cycle: list[tuple[str, str]] = []
    position_queue: dict[tuple[str, str], list[str]] = {}
    while len(rows) < n:
        if not pair_cycle:
            pair_cycle = [pairs[int(i)] for i in rng.permutation(len(pairs))]
        colour, shape = pair_cycle.pop()
        n_skus += 1
        sku = sku_code(n_skus)
        title = title_for(n_skus, colour, shape)
        price = round(float(rng.uniform(1.0, 150.0)), 2)
        k = int(rng.integers(2, 5))
        queue = position_queue.setdefault((colour, shape), [])
        chosen: list[str] = []
        while len(chosen) < k:
            if not any(p not in chosen for p in queue):
                queue.extend(POSITIONS[int(i)] for i in rng.permutation(len(POSITIONS)))
            pick = next(p for p in queue if p not in chosen)
            queue.remove(pick)
            chosen.append(pick)
        for pos in chosen:
            if len(rows) >= n:
                break
            i = len(rows)
            rows.append(
                {
                    "id": f"item-{i:06d}",
                    "file": "",
                    "caption": caption_for(colour, shape, pos),
                    "sku": sku,
                    "title": title,
                    "category": CATEGORY_OF_SHAPE[shape],
                    "price": price,
                    "colour": colour,
                    "shape": shape,
                    "position": pos,
                }
            )
    return rows


def catalog_rows(n: int, seed: int = 0) -> list[dict[str, str | float]]:
    """The product rows (sku, title, caption, price, ...) of a catalog, without images.

    The same SKU plan :func:`generate_catalog` uses; ``file`` is empty. For large text
    collections (benchmarks) where rendering images would cost more than it tells.
    """
    return _plan_rows(np.random.default_rng(seed), n)


def _pair_row(rng: np.random.Generator, i: int, sku_index: int) -> dict[str, str | float]:
    """One two-object row; colour/shape/position hold both objects, left first."""
    left, right = random_pair(rng)
    return {
        "id": f"item-{i:06d}",
        "file": "",
        "caption": pair_caption(left, right),
        "sku": sku_code(sku_index),
        "title": title_for(sku_index, left[0], f"{left[1]} and {right[0]} {right[1]}"),
        "category": CATEGORY_OF_SHAPE[left[1]],
        "price": round(float(rng.uniform(1.0, 150.0)), 2),
        "colour": f"{left[0]},{right[0]}",
        "shape": f"{left[1]},{right[1]}",
        "position": "left,right",
    }


def _plan_scene_rows(rng: np.random.Generator, n: int, scenes: str) -> list[dict[str, str | float]]:
    """Rows for ``pairs`` (every item a two-object scene) or ``mixed`` (about half each)."""
    if scenes == "pairs":
        return [_pair_row(rng, i, i + 1) for i in range(n)]
    singles = _plan_rows(rng, n)
    rows: list[dict[str, str | float]] = []
    for i in range(n):
        if rng.random() < 0.5:  # SKU ordinals after every single-object SKU (at most n)
            rows.append(_pair_row(rng, i, n + i + 1))
        else:
            row = dict(singles[i])
            row["id"] = f"item-{i:06d}"
            rows.append(row)
    return rows


def _render_row(
    rng: np.random.Generator, row: dict[str, str | float], image_size: int
) -> Image.Image:
    if row["position"] == "left,right":
        colours, shapes = str(row["colour"]).split(","), str(row["shape"]).split(",")
        return render_pair(rng, (colours[0], shapes[0]), (colours[1], shapes[1]), image_size)
    return render_item(rng, str(row["colour"]), str(row["shape"]), str(row["position"]), image_size)


def _write_corrupt(image_dir: Path, k: int, rng: np.random.Generator) -> list[Path]:
    """Truncated JPEGs, zero-byte files and text files named ``.jpg``."""
    out: list[Path] = []
    cats = sorted(CATEGORY_OF_SHAPE.values())
    for j in range(k):
        folder = image_dir / cats[j % len(cats)]
        folder.mkdir(parents=True, exist_ok=True)
        kind = j % 3
        if kind == 0:
            buf = io.BytesIO()
            render_item(rng, "red", "circle", "center", 64).save(buf, "JPEG", quality=85)
            data = buf.getvalue()
            path = folder / f"broken-{j:04d}.jpg"
            path.write_bytes(data[: len(data) // 3])
        elif kind == 1:
            path = folder / f"empty-{j:04d}.png"
            path.write_bytes(b"")
        else:
            path = folder / f"notes-{j:04d}.jpg"
            path.write_text("this is not an image\n", encoding="utf-8")
        out.append(path)
    return out


def generate_catalog(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    image_size: int = 128,
    corrupt: int = 0,
    scenes: str = "single",
) -> CatalogInfo:
    """Writes ``n`` images plus ``catalog.jsonl`` and ``catalog.csv`` under ``out_dir``.

    Images go to ``images/<category>/item-NNNNNN.{jpg,png}`` (about 70 % JPEG).
    The output is byte-identical for the same ``seed`` and arguments.
    ``corrupt=k`` also writes ``k`` undecodable files, listed in
    :attr:`CatalogInfo.corrupt_files` and absent from the rows.
    ``scenes`` is ``single`` (one object, ``a red star on the top``), ``pairs``
    (two objects, ``a red circle to the left of a blue square``; ``colour``,
    ``shape`` and ``position`` hold both objects, left first: ``red,blue``) or
    ``mixed`` (about half of each).

    >>> info = generate_catalog(tmp_path, n=100, seed=1)   # doctest: +SKIP
    >>> len(info.rows)                                     # doctest: +SKIP
    100
    """
    if n < 0 or corrupt < 0:
        raise ValueError("n and corrupt must be >= 0")
    if scenes not in SCENES:
        raise ValueError(f"unknown scenes {scenes!r}; choose one of {', '.join(SCENES)}")
    root = Path(out_dir)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = _plan_rows(rng, n) if scenes == "single" else _plan_scene_rows(rng, n, scenes)
    made: set[Path] = set()
    for row in rows:
        is_png = rng.random() < 0.3
        rel = f"images/{row['category']}/{row['id']}.{'png' if is_png else 'jpg'}"
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        img = _render_row(rng, row, image_size)
        if is_png:
            img.save(path, "PNG", compress_level=1)
        else:
            img.save(path, "JPEG", quality=int(rng.integers(80, 96)))
        row["file"] = rel
    corrupt_files = _write_corrupt(image_dir, corrupt, rng)
    jsonl_path = root / "catalog.jsonl"
    csv_path = root / "catalog.csv"
    with open(jsonl_path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps({c: row[c] for c in CATALOG_COLUMNS}) + "\n")
    with open(csv_path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CATALOG_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {c: (f"{row[c]:.2f}" if c == "price" else row[c]) for c in CATALOG_COLUMNS}
            )
    return CatalogInfo(
        root=root,
        jsonl_path=jsonl_path,
        csv_path=csv_path,
        image_dir=image_dir,
        n=len(rows),
        rows=rows,
        corrupt_files=corrupt_files,
    )
