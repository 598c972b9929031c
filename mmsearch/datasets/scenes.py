"""The synthetic catalog's pictures: one shape, or two side by side, on a varied background.

Every single-object image shows one filled shape of one colour at one position; its
caption is exactly ``a {colour} {shape} on the {position}``. A two-object scene shows
one object in each half, captioned ``a red circle to the left of a blue square``.
Backgrounds, shape sizes and small offsets vary but are *not* in the caption, so a
model must learn colour, shape and position, and nothing else.

>>> image = render_item(np.random.default_rng(0), "red", "star", "top", 128)  # doctest: +SKIP
"""

from __future__ import annotations

import math

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
    _draw_shape(ImageDraw.Draw(img), rng, colour, shape, cx, cy, r)
    return img


# Where each object of a two-object scene sits: the left one in the left half, the
# right one in the right half (centre x as a fraction of the side), vertically near
# the middle.
_PAIR_CENTRE_X: tuple[float, float] = (0.26, 0.74)


def pair_caption(left: tuple[str, str], right: tuple[str, str]) -> str:
    """The exact caption of a two-object scene, left object first.

    >>> pair_caption(("red", "circle"), ("blue", "square"))
    'a red circle to the left of a blue square'
    """
    return f"a {left[0]} {left[1]} to the left of a {right[0]} {right[1]}"


def _pair_background(rng: np.random.Generator, colours: tuple[str, str], size: int) -> np.ndarray:
    """A background far enough from *both* colours (falls back to the first's palette)."""
    both = [
        bg
        for bg in _ALLOWED_BG[colours[0]]
        if any(np.array_equal(bg, other) for other in _ALLOWED_BG[colours[1]])
    ]
    palette = both or _ALLOWED_BG[colours[0]]
    kind = rng.integers(0, 3)
    a = palette[rng.integers(0, len(palette))]
    if kind == 0:
        arr = np.broadcast_to(a, (size, size, 3)).copy()
    elif kind == 1:
        b = palette[rng.integers(0, len(palette))]
        t = np.linspace(0.0, 1.0, size)[:, None]
        ramp = (1 - t) * a + t * b
        arr = np.broadcast_to(
            ramp[:, None, :], (size, size, 3)
        ).copy()  # vertical: keeps halves alike
    else:
        arr = a + rng.normal(0.0, 9.0, size=(size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    colour: str,
    shape: str,
    cx: float,
    cy: float,
    r: float,
) -> None:
    jitter = rng.integers(-12, 13, size=3)
    fill = tuple(int(v) for v in np.clip(np.asarray(COLOUR_RGB[colour]) + jitter, 0, 255))
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        rot = float(rng.uniform(-0.12, 0.12)) if shape != "square" else 0.0
        draw.polygon(_shape_polygon(shape, cx, cy, r, rot), fill=fill)


def render_pair(
    rng: np.random.Generator,
    left: tuple[str, str],
    right: tuple[str, str],
    size: int = 128,
) -> Image.Image:
    """Draws a two-object scene: ``left`` = (colour, shape) in the left half, ``right`` in the right.

    The two objects differ in colour or shape; sizes, vertical positions and small
    horizontal offsets vary, each object stays inside its half.
    """
    for colour, shape in (left, right):
        if colour not in COLOUR_RGB or shape not in SHAPES:
            raise ValueError(f"unknown object ({colour!r}, {shape!r})")
    if left == right:
        raise ValueError(f"the two objects must differ in colour or shape, got {left} twice")
    img = Image.fromarray(_pair_background(rng, (left[0], right[0]), size), "RGB")
    draw = ImageDraw.Draw(img)
    for (colour, shape), fx in zip((left, right), _PAIR_CENTRE_X, strict=True):
        r = size * float(rng.uniform(0.09, 0.14))
        cx = size * (fx + float(rng.uniform(-0.04, 0.04)))
        cy = size * (0.5 + float(rng.uniform(-0.12, 0.12)))
        _draw_shape(draw, rng, colour, shape, cx, cy, r)
    return img


def random_pair(
    rng: np.random.Generator,
) -> tuple[tuple[str, str], tuple[str, str]]:
    """Two (colour, shape) objects that differ in colour or shape, uniformly drawn."""
    while True:
        left = (COLOURS[rng.integers(0, len(COLOURS))], SHAPES[rng.integers(0, len(SHAPES))])
        right = (COLOURS[rng.integers(0, len(COLOURS))], SHAPES[rng.integers(0, len(SHAPES))])
        if left != right:
            return left, right
