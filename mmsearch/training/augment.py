"""Augmented renderings of synthetic scenes for training the tiny models.

The catalog generator (:mod:`mmsearch.datasets.synthetic`) draws one house style.
A model trained only on it learns that style, not the concepts: another renderer's
proportions, backdrops or JPEG settings throw it off. This module draws the same
scenes (one object at a named position, or two objects side by side) with what
real renderings vary:

* rotation, scale and aspect jitter, outline instead of fill, small objects;
* shape proportions: squares with rounded corners, stars with thin or fat points and
  straight or curved flanks, triangles from flat to tall (each shape keeps its name: a star has five points, a
  square four straight sides);
* light: a shading gradient across an object, a drop shadow under it;
* position jitter anywhere inside the named region;
* hue / saturation / brightness sampled inside each colour name's range;
* solid, gradient, noise, textured (stripes, checks, blotches), vignetted, grained,
  two-tone (wall and floor) and banded backgrounds;
* blur and JPEG quality 30–95.

Every random choice comes from the ``rng`` passed in, so a seeded training run is
reproducible.

>>> rng = np.random.default_rng(0)
>>> augmented_single(rng, "red", "star", "left", 96).size
(96, 96)
"""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Per colour name: hue ranges in degrees (any of them), saturation and value ranges.
# Chromatic names keep saturation and value high enough that the name is unambiguous.
COLOUR_HSV: dict[
    str, tuple[tuple[tuple[float, float], ...], tuple[float, float], tuple[float, float]]
] = {
    "red": (((-10.0, 8.0),), (0.7, 1.0), (0.6, 1.0)),
    "orange": (((20.0, 34.0),), (0.75, 1.0), (0.85, 1.0)),
    "yellow": (((48.0, 60.0),), (0.7, 1.0), (0.85, 1.0)),
    "green": (((95.0, 145.0),), (0.55, 1.0), (0.45, 0.9)),
    "blue": (((205.0, 238.0),), (0.6, 1.0), (0.55, 1.0)),
    "purple": (((268.0, 295.0),), (0.5, 0.9), (0.45, 0.8)),
    "white": (((0.0, 360.0),), (0.0, 0.06), (0.93, 1.0)),
    "black": (((0.0, 360.0),), (0.0, 0.3), (0.0, 0.12)),
}

# Where the centre of a single object may fall, per position name: (x range, y range)
# as fractions of the side. Regions do not overlap, so the name stays true.
POSITION_REGION: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "left": ((0.12, 0.3), (0.36, 0.64)),
    "right": ((0.7, 0.88), (0.36, 0.64)),
    "top": ((0.36, 0.64), (0.12, 0.3)),
    "bottom": ((0.36, 0.64), (0.7, 0.88)),
    "center": ((0.42, 0.58), (0.42, 0.58)),
}

_SUPERSAMPLE = 2
_MIN_CONTRAST = 100.0  # RGB distance between an object colour and its background


def sample_colour(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    """An RGB colour inside ``name``'s hue / saturation / value range."""
    hues, (s0, s1), (v0, v1) = COLOUR_HSV[name]
    lo, hi = hues[int(rng.integers(0, len(hues)))]
    h = (float(rng.uniform(lo, hi)) % 360.0) / 360.0
    r, g, b = colorsys.hsv_to_rgb(h, float(rng.uniform(s0, s1)), float(rng.uniform(v0, v1)))
    return int(r * 255), int(g * 255), int(b * 255)


def _background_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    """A muted colour at least ``_MIN_CONTRAST`` away from every colour in ``avoid``."""
    for _ in range(64):
        h, s, v = float(rng.random()), float(rng.uniform(0.0, 0.35)), float(rng.uniform(0.05, 1.0))
        rgb = np.asarray(colorsys.hsv_to_rgb(h, s, v)) * 255.0
        if all(np.linalg.norm(rgb - a) >= _MIN_CONTRAST for a in avoid):
            return rgb
    # Far from all: mid grey works against saturated colours, black/white otherwise.
    for fallback in ((128.0, 128.0, 128.0), (255.0, 255.0, 255.0), (0.0, 0.0, 0.0)):
        rgb = np.asarray(fallback)
        if all(np.linalg.norm(rgb - a) >= _MIN_CONTRAST for a in avoid):
            return rgb
    return np.asarray((128.0, 128.0, 128.0))


def random_background(
    rng: np.random.Generator, size: int, avoid: list[tuple[int, int, int]]
) -> Image.Image:
    """Solid, gradient, noise or textured background that keeps away from ``avoid``."""
    far = [np.asarray(a, dtype=np.float64) for a in avoid]
    a = _background_colour(rng, far)
    kind = int(rng.integers(0, 10))
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    if kind == 0:
        arr = np.broadcast_to(a, (size, size, 3))
    elif kind == 1:  # linear gradient in a random direction
        b = _background_colour(rng, far)
        ang = float(rng.uniform(0, 2 * math.pi))
        t = (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)) / math.sqrt(0.5) + 0.5
        t = np.clip(t, 0, 1)[..., None]
        arr = (1 - t) * a + t * b
    elif kind == 2:  # noise
        arr = a + rng.normal(0.0, float(rng.uniform(4, 18)), size=(size, size, 3))
    elif kind == 3:  # stripes
        b = _background_colour(rng, far)
        ang = float(rng.uniform(0, math.pi))
        period = float(rng.uniform(0.05, 0.2))
        t = (np.sin((np.cos(ang) * xx + np.sin(ang) * yy) * 2 * math.pi / period) > 0)[..., None]
        arr = np.where(t, a, b)
    elif kind == 4:  # checks
        b = _background_colour(rng, far)
        cells = int(rng.integers(3, 12))
        t = (((xx * cells).astype(int) + (yy * cells).astype(int)) % 2 == 0)[..., None]
        arr = np.where(t, a, b)
    elif kind == 5:  # blotchy texture: upsampled coarse noise
        k = int(rng.integers(3, 9))
        coarse = rng.normal(0.0, 22.0, size=(k, k, 1)) + rng.normal(0.0, 6.0, size=(k, k, 3))
        up = np.asarray(
            Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
                (size, size), Image.Resampling.BICUBIC
            ),
            dtype=np.float64,
        )
        arr = a + (up - 128.0)
    else:
        arr = _lit_background(rng, kind, a, xx, yy)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _lit_background(
    rng: np.random.Generator, kind: int, a: np.ndarray, xx: np.ndarray, yy: np.ndarray
) -> np.ndarray:
    """Backgrounds lit or textured around one tone: vignette, grain, wall/floor, soft bands."""
    if kind == 6:  # vignette: darker towards the corners, centre anywhere near the middle
        cx, cy = rng.uniform(0.3, 0.7, size=2)
        d = np.hypot(xx - cx, yy - cy)
        return a * (1.0 - float(rng.uniform(0.2, 0.6)) * np.clip(d, 0, 1)[..., None] ** 1.5)
    if kind == 7:  # grain: wavy lines in one direction
        ang = float(rng.uniform(0, math.pi))
        u, v = np.cos(ang) * xx + np.sin(ang) * yy, -np.sin(ang) * xx + np.cos(ang) * yy
        wave = np.sin(u * rng.uniform(20, 60) + 3 * np.sin(v * rng.uniform(3, 9)))
        return a * (1.0 + float(rng.uniform(0.04, 0.12)) * wave[..., None])
    if kind == 8:  # wall and floor: a horizontal split, the lower part darker or lighter
        horizon = float(rng.uniform(0.5, 0.85))
        floor = a * float(rng.choice((rng.uniform(0.6, 0.85), rng.uniform(1.1, 1.3))))
        return np.where((yy > horizon)[..., None], floor, a)
    period = float(rng.uniform(0.15, 0.5))  # soft diagonal bands
    band = 0.5 + 0.5 * np.sin((xx + yy) * 2 * math.pi / period)
    return a * (1.0 + float(rng.uniform(-0.15, 0.15)) * band[..., None])


def object_outline(
    shape: str,
    cx: float,
    cy: float,
    r: float,
    rot: float,
    aspect: float,
    *,
    corner: float = 0.0,
    inner: float = 0.45,
    bulge: float | None = None,
    apex: tuple[float, float] = (0.866, 0.5),
) -> list[tuple[float, float]]:
    """Polygon of ``shape`` (circle as a 48-gon) centred at (cx, cy), radius ``r``.

    ``aspect`` stretches x against y (area kept), ``rot`` rotates (radians). Proportions:
    ``corner`` rounds a square's corners (radius as a share of its half side, 0 to
    0.5), ``inner`` is a star's inner radius (its points' depth), ``bulge`` gives a star
    curved flanks (its radius rises from ``inner`` to 1 as ``t ** bulge`` from a dip to a
    point: above 1, slim points on a full body; None: straight edges), ``apex`` = (half width, depth) of a triangle's base corners below its centre
    (equilateral by default).
    """
    if shape == "circle":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    elif shape == "square":
        pts = _rounded_square(0.85, corner)
    elif shape == "triangle":
        half, depth = apex
        pts = [(0.0, -1.0), (half, depth), (-half, depth)]
    elif shape == "star" and bulge is not None:
        angles = np.linspace(0, 2 * math.pi, 80, endpoint=False)
        t = np.abs(((angles / (2 * math.pi / 5)) % 1.0) - 0.5) * 2  # 1 at a point, 0 at a dip
        radius = inner + (1.0 - inner) * t**bulge
        xs, ys = radius * np.sin(angles), -radius * np.cos(angles)
        pts = list(zip(xs.tolist(), ys.tolist(), strict=True))
    elif shape == "star":
        pts = [
            (
                (1.0 if i % 2 == 0 else inner) * math.cos(-math.pi / 2 + i * math.pi / 5),
                (1.0 if i % 2 == 0 else inner) * math.sin(-math.pi / 2 + i * math.pi / 5),
            )
            for i in range(10)
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    sx, sy = math.sqrt(aspect), 1.0 / math.sqrt(aspect)
    c, s = math.cos(rot), math.sin(rot)
    return [
        (cx + r * (c * x * sx - s * y * sy), cy + r * (s * x * sx + c * y * sy)) for x, y in pts
    ]


def _rounded_square(half: float, corner: float) -> list[tuple[float, float]]:
    """A square of half side ``half`` whose corners are arcs of radius ``corner`` × ``half``."""
    k = half * min(max(corner, 0.0), 0.5)
    if k <= 0:
        return [(-half, -half), (half, -half), (half, half), (-half, half)]
    inset = half - k
    pts: list[tuple[float, float]] = []
    for (sx, sy), start in (((1, -1), -math.pi / 2), ((1, 1), 0.0), ((-1, 1), math.pi / 2),
                            ((-1, -1), math.pi)):  # fmt: skip
        for a in np.linspace(start, start + math.pi / 2, 7):
            pts.append((sx * inset + k * math.cos(a), sy * inset + k * math.sin(a)))
    return pts


def _proportions(rng: np.random.Generator, shape: str) -> dict[str, object]:
    """Random proportions of ``shape`` for :func:`object_outline` (a quarter of the time the plain ones)."""
    if rng.random() < 0.25:
        return {}
    if shape == "square":
        return {"corner": float(rng.uniform(0.1, 0.45))}
    if shape == "star" and rng.random() < 0.5:
        return {"inner": float(rng.uniform(0.4, 0.62)), "bulge": float(rng.uniform(1.0, 2.2))}
    if shape == "star":
        return {"inner": float(rng.uniform(0.35, 0.62))}
    if shape == "triangle":
        return {"apex": (float(rng.uniform(0.7, 1.0)), float(rng.uniform(0.45, 0.85)))}
    return {}


def _draw_object(
    canvas: Image.Image,
    rng: np.random.Generator,
    shape: str,
    rgb: tuple[int, int, int],
    cx: float,
    cy: float,
    r: float,
) -> None:
    """Paints one object on ``canvas``: proportions, maybe outline only, shadow, shading."""
    rot_span = {"circle": 0.0, "square": 0.5, "triangle": 0.6, "star": math.pi}[shape]
    rot = float(rng.uniform(-rot_span, rot_span))
    aspect = float(rng.uniform(0.8, 1.25))
    poly = object_outline(shape, cx, cy, r, rot, aspect, **_proportions(rng, shape))  # type: ignore[arg-type]
    mask = Image.new("L", canvas.size, 0)
    draw = ImageDraw.Draw(mask)
    outline = rng.random() < 0.2
    if outline:  # outline only, thick enough to carry the colour
        width = max(2, int(round(r * float(rng.uniform(0.18, 0.3)))))
        draw.line(poly + [poly[0]], fill=255, width=width, joint="curve")
    else:
        draw.polygon(poly, fill=255)
    if not outline and rng.random() < 0.4:  # a drop shadow, offset down and to one side
        off = r * float(rng.uniform(0.06, 0.2))
        dx = off * float(rng.choice((-1.0, 1.0)))
        shadow = mask.transform(mask.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -off))
        if rng.random() < 0.5:
            shadow = shadow.filter(ImageFilter.GaussianBlur(r * 0.08))
        factor = float(rng.uniform(0.55, 0.85))
        dark = Image.fromarray((np.asarray(canvas, dtype=np.float64) * factor).astype(np.uint8))
        canvas.paste(dark, (0, 0), shadow)
    colour = Image.new("RGB", canvas.size, rgb)
    if rng.random() < 0.5:  # shading: brighter on one side of the object
        ang = float(rng.uniform(0, 2 * math.pi))
        strength = float(rng.uniform(0.08, 0.2))
        yy, xx = np.mgrid[0 : canvas.size[1], 0 : canvas.size[0]]
        t = np.clip(((xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)) / r, -1, 1)
        lit = np.asarray(rgb, dtype=np.float64) * (1.0 + strength * t[..., None])
        colour = Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8), "RGB")
    canvas.paste(colour, (0, 0), mask)


def _object_radius(rng: np.random.Generator, size: int, small: float, large: float) -> float:
    if rng.random() < 0.2:  # small objects
        return size * float(rng.uniform(small * 0.75, small))
    return size * float(rng.uniform(small, large))


def _finish(rng: np.random.Generator, canvas: Image.Image, size: int) -> Image.Image:
    """Downsample (anti-aliasing), then maybe blur and JPEG re-encode."""
    img = canvas.resize((size, size), Image.Resampling.LANCZOS)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2)) * size / 128))
    if rng.random() < 0.6:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(30, 96)))
        buf.seek(0)
        with Image.open(buf) as decoded:
            img = decoded.convert("RGB")
    return img


def augmented_single(
    rng: np.random.Generator, colour: str, shape: str, position: str, size: int = 128
) -> Image.Image:
    """One ``colour`` ``shape`` somewhere in ``position``'s region, augmented."""
    (x0, x1), (y0, y1) = POSITION_REGION[position]
    rgb = sample_colour(rng, colour)
    big = size * _SUPERSAMPLE
    canvas = random_background(rng, big, [rgb])
    r = _object_radius(rng, big, 0.08, 0.17)
    cx, cy = big * float(rng.uniform(x0, x1)), big * float(rng.uniform(y0, y1))
    _draw_object(canvas, rng, shape, rgb, cx, cy, r)
    return _finish(rng, canvas, size)


def augmented_pair(
    rng: np.random.Generator,
    left: tuple[str, str],
    right: tuple[str, str],
    size: int = 128,
) -> Image.Image:
    """Two objects, ``left`` = (colour, shape) in the left half and ``right`` in the right half."""
    rgbs = [sample_colour(rng, left[0]), sample_colour(rng, right[0])]
    big = size * _SUPERSAMPLE
    canvas = random_background(rng, big, rgbs)
    for (_, shape), rgb, (x0, x1) in zip(
        (left, right), rgbs, ((0.14, 0.36), (0.64, 0.86)), strict=True
    ):
        r = _object_radius(rng, big, 0.07, 0.13)
        cx, cy = big * float(rng.uniform(x0, x1)), big * float(rng.uniform(0.28, 0.72))
        _draw_object(canvas, rng, shape, rgb, cx, cy, r)
    return _finish(rng, canvas, size)
