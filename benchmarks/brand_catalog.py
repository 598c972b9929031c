"""A brand/SKU product catalog drawn by the independent renderer, with a classed query set.

The catalog is what a shop indexes: product images (one object each, drawn by
``benchmarks/other_renderer.py``, a renderer no model here was trained on), and a
sidecar whose rows give each image its SKU, a title with an invented brand word
(``Drumlo red circle, size M``), a category and a price. Products come in SKUs of 2–4
images (same colour and shape, different positions); each SKU has one brand.

The query set (``queries.jsonl``, one :mod:`mmsearch eval <mmsearch.evaluation.inputs>`
line each) has five classes:

* ``attribute``: colour and shape words (``red circle``) or a full caption (``a red
  circle on the left``): relevant = the images with those attributes;
* ``sku``: a SKU code (``SKU-00042``): relevant = that SKU's images;
* ``brand``: a brand word (``drumlo``): relevant = that brand's images;
* ``brand_attribute``: brand and attribute words (``drumlo red circle``): relevant =
  that brand's images with those attributes;
* ``image``: a query image drawn by the same renderer (``queries/q-0003.png``):
  relevant = the images of the same colour and shape.

Two draws: ``validation`` (seed 20250, the catalog generator's brand words), used to
choose a fusion, and ``heldout`` (seed 31337, other invented brand words), used only
to check it.

    python benchmarks/brand_catalog.py --split validation --out /tmp/brands-val
    mmsearch index /tmp/brands-val/images --metadata /tmp/brands-val/catalog.jsonl \\
        --model mmsearch-tiny --index /tmp/brands-val/idx
    mmsearch eval /tmp/brands-val/queries.jsonl --index /tmp/brands-val/idx
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.other_renderer import other_single  # noqa: E402
from mmsearch.datasets.synthetic import (  # noqa: E402
    BRANDS,
    CATEGORY_OF_SHAPE,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    caption_for,
    sku_code,
)

#: Invented brand words of the validation draw: the catalog generator's and eight more.
VALIDATION_BRANDS: tuple[str, ...] = (
    *BRANDS, "Morvane", "Sindle", "Quorra", "Velkin", "Trask", "Ombrel", "Fennix", "Gorble",
)  # fmt: skip
#: Invented brand words of the held-out draw (none is a validation brand).
HELDOUT_BRANDS: tuple[str, ...] = (
    "Drumlo", "Wexby", "Ostrav", "Plinque", "Gaskor", "Yorrin", "Tevask", "Humbra", "Civvet",
    "Jolmar", "Kastrel", "Brovik", "Zentha", "Pruvo", "Altiq", "Casmor", "Dwellon", "Ixtra",
    "Norrow", "Upsel",
)  # fmt: skip
SPLITS: dict[str, tuple[int, tuple[str, ...]]] = {
    "validation": (20250, VALIDATION_BRANDS),
    "heldout": (31337, HELDOUT_BRANDS),
}
CLASSES: tuple[str, ...] = ("attribute", "sku", "brand", "brand_attribute", "image")


@dataclass
class BrandCatalog:
    """What :func:`write_brand_catalog` wrote: the sidecar rows and the query lines."""

    root: Path
    rows: list[dict[str, Any]]
    queries: list[dict[str, Any]]


def _plan(rng: np.random.Generator, n: int, brands: tuple[str, ...]) -> list[dict[str, Any]]:
    """SKUs of 2–4 images (one colour+shape, different positions), brands dealt in turn."""
    objects = [(c, s) for c in COLOURS for s in SHAPES]
    rows: list[dict[str, Any]] = []
    sku = 0
    while len(rows) < n:
        sku += 1
        colour, shape = objects[int(rng.integers(0, len(objects)))]
        brand = brands[int(rng.integers(0, len(brands)))]
        size = SIZES[int(rng.integers(0, len(SIZES)))]
        price = round(float(rng.uniform(1.0, 150.0)), 2)
        k = int(rng.integers(2, 5))
        for position in rng.permutation(len(POSITIONS))[:k]:
            if len(rows) == n:
                break
            rows.append(
                {
                    "file": f"images/p-{len(rows):05d}.png",
                    "sku": sku_code(sku),
                    "title": f"{brand} {colour} {shape}, size {size}",
                    "category": CATEGORY_OF_SHAPE[shape],
                    "price": price,
                    # ground truth for the query set (not in the sidecar)
                    "_brand": brand,
                    "_colour": colour,
                    "_shape": shape,
                    "_position": POSITIONS[int(position)],
                }
            )
    return rows


def _where(rows: list[dict[str, Any]], **want: str) -> list[str]:
    return [r["file"] for r in rows if all(r[f"_{k}"] == v for k, v in want.items())]


def _queries(
    rng: np.random.Generator, rows: list[dict[str, Any]], per_class: int, root: Path
) -> list[dict[str, Any]]:
    """Up to ``per_class`` query lines of each class (brand: one per brand)."""
    out: list[dict[str, Any]] = []
    present = sorted({(r["_colour"], r["_shape"]) for r in rows})
    for j in range(per_class):
        if j % 2:  # words
            colour, shape = present[int(rng.integers(0, len(present)))]
            query, relevant = f"{colour} {shape}", _where(rows, colour=colour, shape=shape)
        else:  # a caption of some product: its position too
            row = rows[int(rng.integers(0, len(rows)))]
            colour, shape, pos = row["_colour"], row["_shape"], row["_position"]
            query = caption_for(colour, shape, pos)
            relevant = _where(rows, colour=colour, shape=shape, position=pos)
        out.append({"query": query, "relevant": relevant, "class": "attribute"})
    by_sku: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_sku[r["sku"]].append(r["file"])
    skus = sorted(by_sku)
    for j in rng.choice(len(skus), min(per_class, len(skus)), replace=False):
        out.append({"query": skus[int(j)], "relevant": by_sku[skus[int(j)]], "class": "sku"})
    for j, brand in enumerate(sorted({r["_brand"] for r in rows})[:per_class]):
        form = brand.lower() if j % 2 else brand  # people type either
        out.append({"query": form, "relevant": _where(rows, brand=brand), "class": "brand"})
    combos = sorted({(r["_brand"], r["_colour"], r["_shape"]) for r in rows})
    for j in rng.choice(len(combos), min(per_class, len(combos)), replace=False):
        brand, colour, shape = combos[int(j)]
        out.append(
            {
                "query": f"{brand.lower()} {colour} {shape}",
                "relevant": _where(rows, brand=brand, colour=colour, shape=shape),
                "class": "brand_attribute",
            }
        )
    (root / "queries").mkdir(exist_ok=True)
    for j in range(per_class):
        colour, shape = present[int(rng.integers(0, len(present)))]
        pos = POSITIONS[int(rng.integers(0, len(POSITIONS)))]
        rel = f"queries/q-{j:04d}.png"
        other_single(rng, colour, shape, pos).save(root / rel, "PNG")
        out.append(
            {"query": rel, "relevant": _where(rows, colour=colour, shape=shape), "class": "image"}
        )
    return out


def write_brand_catalog(
    out_dir: str | Path, n: int, seed: int, brands: tuple[str, ...], per_class: int = 40
) -> BrandCatalog:
    """``n`` product images, ``catalog.jsonl`` (the sidecar) and ``queries.jsonl`` under ``out_dir``."""
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = _plan(rng, n, brands)
    for r in rows:
        other_single(rng, r["_colour"], r["_shape"], r["_position"]).save(root / r["file"], "PNG")
    queries = _queries(rng, rows, per_class, root)
    with open(root / "catalog.jsonl", "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps(q) + "\n")
    return BrandCatalog(root, rows, queries)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=sorted(SPLITS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--per-class", type=int, default=40)
    args = ap.parse_args(argv)
    seed, brands = SPLITS[args.split]
    cat = write_brand_catalog(args.out, args.n, seed, brands, args.per_class)
    counts = defaultdict(int)
    for q in cat.queries:
        counts[q["class"]] += 1
    print(f"{len(cat.rows)} images, queries per class: {dict(counts)} -> {cat.root}")


if __name__ == "__main__":
    main()
