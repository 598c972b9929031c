"""A second, independently written drawing routine for honest evaluation.

Never used in training. It draws the same *concepts* as the catalog generator (eight
colour names, four shapes, five positions, two-object scenes) with different
primitives and backdrops, so a model that learned one generator's house style,
not the concepts, fails here:

* shapes are rasterised from signed-distance masks with 4× supersampling (not
  Pillow polygons), with other proportions: rounded squares, isosceles triangles,
  fat five-point stars (inner radius 0.55), circles with a rim highlight;
* a soft drop shadow under every object;
* backdrops: radial vignettes, wood-like grain, paper fibre noise, two-tone
  split floors, diagonal soft bands;
* its own palette (e.g. crimson for red, teal-ish green, navy-to-azure blue),
  sizes 80–200 px, JPEG quality 40–90 or PNG.

>>> rng = np.random.default_rng(0)
>>> other_single(rng, "red", "star", "left").mode
'RGB'
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

# Own palette: several tones per name, none equal to the catalog's.
PALETTE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((200, 16, 46), (178, 34, 34), (230, 40, 60)),
    "green": ((0, 128, 96), (60, 160, 40), (20, 110, 40)),
    "blue": ((20, 40, 140), (30, 110, 230), (60, 90, 200)),
    "yellow": ((255, 210, 0), (240, 230, 60), (250, 200, 40)),
    "purple": ((110, 40, 150), (150, 60, 190), (90, 30, 120)),
    "orange": ((255, 120, 0), (235, 110, 40), (255, 150, 30)),
    "white": ((245, 245, 240), (255, 255, 255), (238, 240, 245)),
    "black": ((25, 25, 30), (5, 5, 5), (40, 35, 35)),
}
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star")
POSITION_NAMES: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
_SS = 4  # supersampling factor

# Centre region per position (x range, y range), fractions of the side.
_REGION: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "left": ((0.18, 0.28), (0.42, 0.58)),
    "right": ((0.72, 0.82), (0.42, 0.58)),
    "top": ((0.42, 0.58), (0.18, 0.28)),
    "bottom": ((0.42, 0.58), (0.72, 0.82)),
    "center": ((0.45, 0.55), (0.45, 0.55)),
}


def _mask(shape: str, n: int, cx: float, cy: float, r: float, rot: float) -> npt.NDArray[np.bool_]:
    """Boolean mask of ``shape`` on an ``n``×``n`` grid (pixel centres)."""
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5).astype(np.float64)
    x, y = xx - cx, yy - cy
    c, s = math.cos(rot), math.sin(rot)
    u, v = c * x + s * y, -s * x + c * y
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":  # rounded square: half side 0.78 r, corner radius 0.2 r
        h, k = 0.78 * r, 0.2 * r
        qx, qy = np.abs(u) - (h - k), np.abs(v) - (h - k)
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0) <= k
    if shape == "triangle":  # isosceles, apex up, base 1.7 r, height 1.8 r
        top, base = -1.0 * r, 0.8 * r
        half_w = 0.85 * r * (v - top) / (base - top)
        return (v >= top) & (v <= base) & (np.abs(u) <= half_w)
    if shape == "star":  # five points, inner radius 0.55 r, point up
        ang = np.arctan2(v, u) + math.pi / 2
        seg = (ang % (2 * math.pi / 5)) / (2 * math.pi / 5)  # 0..1 within one point
        frac = np.abs(seg - 0.5) * 2  # 1 at a point, 0 between points
        limit = 0.55 * r + (r - 0.55 * r) * frac**1.6
        return np.hypot(u, v) <= limit
    raise ValueError(f"unknown shape {shape!r}")


_BASES: tuple[tuple[int, int, int], ...] = (
    (228, 222, 210),
    (180, 186, 190),
    (120, 110, 100),
    (60, 64, 70),
    (210, 225, 230),
    (240, 240, 236),
    (150, 160, 120),
)


def _backdrop(rng: np.random.Generator, n: int, colours: list[str]) -> npt.NDArray[np.float64]:
    """A backdrop whose base tone keeps away from every tone of ``colours``."""
    tones = [np.asarray(t, dtype=float) for c in colours for t in PALETTE[c]]
    bases = [b for b in _BASES if all(np.linalg.norm(np.asarray(b) - t) > 100 for t in tones)]
    bases = bases or [(128, 128, 128)]
    yy, xx = np.mgrid[0:n, 0:n] / n
    base = np.asarray(bases[int(rng.integers(0, len(bases)))], dtype=float)
    base = base + rng.normal(0, 8, size=3)
    kind = int(rng.integers(0, 5))
    if kind == 0:  # radial vignette
        d = np.hypot(xx - 0.5, yy - 0.5)
        arr = base[None, None, :] * (1.0 - 0.5 * d[..., None] ** 1.5)
    elif kind == 1:  # wood-like grain
        grain = np.sin((yy * 40 + 3 * np.sin(xx * 7 + rng.uniform(0, 6))) * rng.uniform(0.6, 1.4))
        arr = base[None, None, :] * (0.88 + 0.08 * grain[..., None])
    elif kind == 2:  # paper fibre noise (blurred along x)
        noise = rng.normal(0, 1, size=(n, n))
        noise = (noise + np.roll(noise, 1, 1) + np.roll(noise, 2, 1) + np.roll(noise, -1, 1)) / 4
        arr = base[None, None, :] + 10 * noise[..., None]
    elif kind == 3:  # two-tone floor: wall above, floor below
        floor = base * 0.7
        horizon = rng.uniform(0.55, 0.8)
        arr = np.where((yy > horizon)[..., None], floor, base)
    else:  # soft diagonal bands
        band = 0.5 + 0.5 * np.sin((xx + yy) * rng.uniform(3, 8))
        arr = base[None, None, :] * (0.85 + 0.15 * band[..., None])
    return arr


def _paint(
    canvas: npt.NDArray[np.float64],
    rng: np.random.Generator,
    colour: str,
    shape: str,
    cx: float,
    cy: float,
    r: float,
) -> None:
    n = canvas.shape[0]
    rot = {"circle": 0.0, "square": 0.25, "triangle": 0.25, "star": 0.5}[shape]
    rot = float(rng.uniform(-rot, rot))
    off = r * 0.12
    shadow = _mask(shape, n, cx + off, cy + off, r, rot)
    canvas[shadow] *= 0.75
    body = _mask(shape, n, cx, cy, r, rot)
    palette = PALETTE[colour]
    rgb = np.asarray(palette[int(rng.integers(0, len(palette)))], dtype=float)
    # A gentle top-left light: brighter at the top of the object.
    yy = np.mgrid[0:n, 0:n][0]
    shade = 1.0 + 0.12 * np.clip((cy - yy) / max(r, 1.0), -1, 1)
    canvas[body] = np.clip(rgb[None, :] * shade[body][:, None], 0, 255)


def _finish(rng: np.random.Generator, canvas: npt.NDArray[np.float64], size: int) -> Image.Image:
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    img = img.resize((size, size), Image.Resampling.BOX)
    if rng.random() < 0.7:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(40, 91)))
        buf.seek(0)
        with Image.open(buf) as decoded:
            img = decoded.convert("RGB")
    return img


def other_single(
    rng: np.random.Generator, colour: str, shape: str, position: str, size: int | None = None
) -> Image.Image:
    """One object of ``colour`` and ``shape`` at ``position``, this renderer's style."""
    size = size or int(rng.integers(80, 201))
    n = size * _SS
    canvas = _backdrop(rng, n, [colour])
    (x0, x1), (y0, y1) = _REGION[position]
    r = n * float(rng.uniform(0.1, 0.15))
    _paint(canvas, rng, colour, shape, n * rng.uniform(x0, x1), n * rng.uniform(y0, y1), r)
    return _finish(rng, canvas, size)


def other_pair(
    rng: np.random.Generator,
    left: tuple[str, str],
    right: tuple[str, str],
    size: int | None = None,
) -> Image.Image:
    """Two objects side by side, ``left`` = (colour, shape) in the left half."""
    size = size or int(rng.integers(80, 201))
    n = size * _SS
    canvas = _backdrop(rng, n, [left[0], right[0]])
    cy = float(rng.uniform(0.4, 0.6))
    for (colour, shape), fx in zip((left, right), (0.27, 0.73), strict=True):
        r = n * float(rng.uniform(0.1, 0.14))
        cx = n * (fx + float(rng.uniform(-0.03, 0.03)))
        _paint(canvas, rng, colour, shape, cx, n * (cy + float(rng.uniform(-0.06, 0.06))), r)
    return _finish(rng, canvas, size)


@dataclass
class OtherCatalog:
    """What :func:`write_other_catalog` wrote: rows like the catalog's (``file``, ``caption``...)."""

    root: Path
    rows: list[dict[str, str]]


def write_other_catalog(out_dir: str | Path, n: int, seed: int, scenes: str) -> OtherCatalog:
    """``n`` images (``scenes`` = ``single`` or ``pairs``) plus ``catalog.jsonl`` under ``out_dir``.

    Captions follow the product's wording (``a red star on the left``,
    ``a red circle to the left of a blue square``).
    """
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    colours = list(PALETTE)
    for i in range(n):
        if scenes == "pairs":
            while True:
                left = (colours[rng.integers(0, 8)], SHAPE_NAMES[rng.integers(0, 4)])
                right = (colours[rng.integers(0, 8)], SHAPE_NAMES[rng.integers(0, 4)])
                if left != right:
                    break
            img = other_pair(rng, left, right)
            caption = f"a {left[0]} {left[1]} to the left of a {right[0]} {right[1]}"
            meta = {
                "colour": f"{left[0]},{right[0]}",
                "shape": f"{left[1]},{right[1]}",
                "position": "left,right",
            }
        else:
            colour = colours[rng.integers(0, 8)]
            shape = SHAPE_NAMES[rng.integers(0, 4)]
            position = POSITION_NAMES[rng.integers(0, 5)]
            img = other_single(rng, colour, shape, position)
            caption = f"a {colour} {shape} on the {position}"
            meta = {"colour": colour, "shape": shape, "position": position}
        rel = f"images/other-{i:05d}.png"
        img.save(root / rel, "PNG")
        rows.append({"id": f"other-{i:05d}", "file": rel, "caption": caption, **meta})
    with open(root / "catalog.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return OtherCatalog(root=root, rows=rows)
