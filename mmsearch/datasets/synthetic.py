"""A seeded synthetic product catalog with exact ground truth.

Every image shows one filled shape of one colour at one position on a varied
background; its caption is exactly ``a {colour} {shape} on the {position}``.
Backgrounds, shape sizes and small offsets vary but are *not* in the caption, so
a model must learn colour, shape and position, and nothing else.

>>> info = generate_catalog("/tmp/cat", n=20, seed=0)   # doctest: +SKIP
>>> info.rows[0]["caption"]                              # doctest: +SKIP
'a red star on the top'
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (245, 220, 35),
    "purple": (135, 45, 175),
    "orange": (245, 135, 20),
    "white": (250, 250, 250),
    "black": (12, 12, 12),
}

# Product category of each shape (metadata for filters; not in the caption).
CATEGORY_OF_SHAPE: dict[str, str] = {
    "circle": "buttons",
    "square": "tiles",
    "triangle": "pennants",
    "star": "badges",
}

# Background palette: muted tones plus white/black. A background is only used
# when it is far enough from the shape colour to keep the shape unambiguous.
_BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (236, 228, 206),
    (205, 205, 205),
    (150, 150, 150),
    (70, 78, 90),
    (20, 20, 24),
    (190, 222, 218),
    (238, 208, 220),
    (200, 210, 240),
    (215, 235, 195),
)
_MIN_BG_DISTANCE = 110.0  # Euclidean RGB distance between shape colour and any bg pixel

# Centre of the shape for each position, as a fraction of the image side.
_POSITION_CENTRE: dict[str, tuple[float, float]] = {
    "left": (0.22, 0.5),
    "right": (0.78, 0.5),
    "top": (0.5, 0.22),
    "bottom": (0.5, 0.78),
    "center": (0.5, 0.5),
}


def caption_for(colour: str, shape: str, position: str) -> str:
    """The exact caption of an item: ``a {colour} {shape} on the {position}``."""
    return f"a {colour} {shape} on the {position}"


def _allowed_backgrounds(colour: str) -> list[np.ndarray]:
    shape_rgb = np.asarray(COLOUR_RGB[colour], dtype=np.float64)
    return [
        np.asarray(bg, dtype=np.float64)
        for bg in _BACKGROUNDS
        if float(np.linalg.norm(np.asarray(bg, dtype=np.float64) - shape_rgb)) >= _MIN_BG_DISTANCE
    ]


_ALLOWED_BG: dict[str, list[np.ndarray]] = {c: _allowed_backgrounds(c) for c in COLOURS}


def _background(rng: np.random.Generator, colour: str, size: int) -> np.ndarray:
    """Solid, gradient or lightly noisy background, never close to ``colour``."""
    palette = _ALLOWED_BG[colour]
    kind = rng.integers(0, 3)
    a = palette[rng.integers(0, len(palette))]
    if kind == 0:
        arr = np.broadcast_to(a, (size, size, 3)).copy()
    elif kind == 1:
        b = palette[rng.integers(0, len(palette))]
        t = np.linspace(0.0, 1.0, size)[:, None]
        ramp = (1 - t) * a + t * b  # (size, 3)
        arr = (
            np.broadcast_to(ramp[:, None, :], (size, size, 3))
            if rng.random() < 0.5
            else np.broadcast_to(ramp[None, :, :], (size, size, 3))
        ).copy()
    else:
        arr = a + rng.normal(0.0, 9.0, size=(size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _shape_polygon(
    shape: str, cx: float, cy: float, r: float, rot: float
) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [
            (cx + r * math.cos(rot + a), cy + r * math.sin(rot + a))
            for a in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)
        ]
    # star: five points, inner radius 0.45 r
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        ang = rot - math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return pts


def render_item(
    rng: np.random.Generator, colour: str, shape: str, position: str, size: int = 128
) -> Image.Image:
    """Draws one filled ``colour`` ``shape`` at ``position`` on a random background.

    Shape size, small offsets, slight colour jitter and the background come from
    ``rng``; the same generator state gives the same image. Returns an RGB image
    of ``size``×``size``.
    """
    if colour not in COLOUR_RGB or shape not in SHAPES or position not in _POSITION_CENTRE:
        raise ValueError(f"unknown item ({colour!r}, {shape!r}, {position!r})")
    img = Image.fromarray(_background(rng, colour, size), "RGB")
    fx, fy = _POSITION_CENTRE[position]
    r = size * float(rng.uniform(0.11, 0.17))
    cx = size * (fx + float(rng.uniform(-0.035, 0.035)))
    cy = size * (fy + float(rng.uniform(-0.035, 0.035)))
    jitter = rng.integers(-12, 13, size=3)
    fill = tuple(int(v) for v in np.clip(np.asarray(COLOUR_RGB[colour]) + jitter, 0, 255))
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        rot = float(rng.uniform(-0.12, 0.12)) if shape != "square" else 0.0
        draw.polygon(_shape_polygon(shape, cx, cy, r, rot), fill=fill)
    return img


def random_item(rng: np.random.Generator, size: int = 128) -> tuple[Image.Image, str, str, str]:
    """Renders a uniformly random item; returns ``(image, colour, shape, position)``."""
    colour = COLOURS[rng.integers(0, len(COLOURS))]
    shape = SHAPES[rng.integers(0, len(SHAPES))]
    position = POSITIONS[rng.integers(0, len(POSITIONS))]
    return render_item(rng, colour, shape, position, size), colour, shape, position


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
) -> CatalogInfo:
    """Writes ``n`` images plus ``catalog.jsonl`` and ``catalog.csv`` under ``out_dir``.

    Images go to ``images/<category>/item-NNNNNN.{jpg,png}`` (about 70 % JPEG).
    The output is byte-identical for the same ``seed`` and arguments.
    ``corrupt=k`` also writes ``k`` undecodable files, listed in
    :attr:`CatalogInfo.corrupt_files` and absent from the rows.

    >>> info = generate_catalog(tmp_path, n=100, seed=1)   # doctest: +SKIP
    >>> len(info.rows)                                     # doctest: +SKIP
    100
    """
    if n < 0 or corrupt < 0:
        raise ValueError("n and corrupt must be >= 0")
    root = Path(out_dir)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = _plan_rows(rng, n)
    made: set[Path] = set()
    for row in rows:
        is_png = rng.random() < 0.3
        rel = f"images/{row['category']}/{row['id']}.{'png' if is_png else 'jpg'}"
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        img = render_item(
            rng, str(row["colour"]), str(row["shape"]), str(row["position"]), image_size
        )
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


def distinct_captions(rows: Sequence[dict[str, str | float]]) -> list[str]:
    """Sorted distinct captions present in ``rows``."""
    return sorted({str(r["caption"]) for r in rows})
