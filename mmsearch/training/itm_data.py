"""Scenes, captions and hard negatives for training the tiny image-text-matching model.

A scene is one object at a named position (``Single``) or two objects side by side
(``Pair``). A dual encoder confuses captions that use the same words in another
order; the ITM model is trained to tell them apart with *hard negatives*:

* colours swapped between the two objects (``a blue circle to the left of a red square``),
* objects swapped left/right (``a blue square to the left of a red circle``),
* one attribute changed (one colour, one shape, or the position of a single object).

>>> rng = np.random.default_rng(0)
>>> scene = Pair(("red", "circle"), ("blue", "square"))
>>> caption(colour_swap(scene))
'a blue circle to the left of a red square'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmsearch.datasets.synthetic import (
    COLOURS,
    POSITIONS,
    SHAPES,
    caption_for,
    pair_caption,
    random_pair,
    render_item,
    render_pair,
)


@dataclass(frozen=True)
class Single:
    """One object: ``a {colour} {shape} on the {position}``."""

    colour: str
    shape: str
    position: str


@dataclass(frozen=True)
class Pair:
    """Two objects, ``left`` and ``right`` as (colour, shape); they differ in one or both."""

    left: tuple[str, str]
    right: tuple[str, str]


Scene = Single | Pair


def caption(scene: Scene) -> str:
    """The catalog caption of ``scene``."""
    if isinstance(scene, Single):
        return caption_for(scene.colour, scene.shape, scene.position)
    return pair_caption(scene.left, scene.right)


def random_scene(rng: np.random.Generator, pair_frac: float) -> Scene:
    """A uniformly random two-object scene with probability ``pair_frac``, else a single one."""
    if rng.random() < pair_frac:
        return Pair(*random_pair(rng))
    return Single(
        COLOURS[int(rng.integers(0, len(COLOURS)))],
        SHAPES[int(rng.integers(0, len(SHAPES)))],
        POSITIONS[int(rng.integers(0, len(POSITIONS)))],
    )


def colour_swap(scene: Pair) -> Pair | None:
    """The two objects' colours exchanged; ``None`` when both have the same colour."""
    if scene.left[0] == scene.right[0]:
        return None
    return Pair((scene.right[0], scene.left[1]), (scene.left[0], scene.right[1]))


def shape_swap(scene: Pair) -> Pair | None:
    """The two objects' shapes exchanged, colours kept; ``None`` when both have the same shape.

    The same words as the caption in another order, which a dual encoder cannot tell
    apart: only *which shape is where* differs.
    """
    if scene.left[1] == scene.right[1]:
        return None
    return Pair((scene.left[0], scene.right[1]), (scene.right[0], scene.left[1]))


def side_swap(scene: Pair) -> Pair:
    """The objects exchanged left/right."""
    return Pair(scene.right, scene.left)


def shape_changes(scene: Pair) -> list[Pair]:
    """Every scene with exactly one of the two shapes replaced (six for four shapes).

    The captions an image→text re-ranker confuses most on an unseen renderer: the
    same colours and places, one object named as another shape. Scenes whose two
    objects would become identical are left out.
    """
    out = []
    for side in (0, 1):
        for shape in SHAPES:
            objs = [scene.left, scene.right]
            if shape == objs[side][1]:
                continue
            objs[side] = (objs[side][0], shape)
            if objs[0] != objs[1]:
                out.append(Pair(objs[0], objs[1]))
    return out


def _other(rng: np.random.Generator, values: tuple[str, ...], current: str) -> str:
    choices = [v for v in values if v != current]
    return choices[int(rng.integers(0, len(choices)))]


def one_attribute_changed(rng: np.random.Generator, scene: Scene, shape_frac: float = 0.5) -> Scene:
    """``scene`` with one colour, shape (or, for a single object, position) replaced.

    For two-object scenes a shape is changed with probability ``shape_frac``, else a colour.
    """
    if isinstance(scene, Single):
        which = int(rng.integers(0, 3))
        if which == 0:
            return Single(_other(rng, COLOURS, scene.colour), scene.shape, scene.position)
        if which == 1:
            return Single(scene.colour, _other(rng, SHAPES, scene.shape), scene.position)
        return Single(scene.colour, scene.shape, _other(rng, POSITIONS, scene.position))
    while True:
        objs = [scene.left, scene.right]
        i = int(rng.integers(0, 2))
        colour, shape = objs[i]
        if rng.random() < 1.0 - shape_frac:
            objs[i] = (_other(rng, COLOURS, colour), shape)
        else:
            objs[i] = (colour, _other(rng, SHAPES, shape))
        if objs[0] != objs[1]:
            return Pair(objs[0], objs[1])


def hard_negatives(
    rng: np.random.Generator,
    scene: Scene,
    k: int,
    pair_frac: float,
    easy: float = 0.125,
    swap: float = 0.7,
    shape_frac: float = 0.5,
    shape_swaps: bool = False,
) -> list[Scene]:
    """``k`` distinct scenes that differ from ``scene``, mostly by one hard change.

    Two-object scenes draw from colour swap and left/right swap (together a share
    ``swap`` of the hard negatives, half each; a third each with ``shape_swaps``, the
    third being the shape swap) and one attribute changed; single
    objects from one attribute changed (for two objects a shape with probability
    ``shape_frac``, else a colour). A share ``easy`` is a random scene instead, so
    easy negatives are seen too.
    """
    out: list[Scene] = []
    tries = 0
    while len(out) < k and tries < 50:
        tries += 1
        roll = rng.random()
        hard = (roll - easy) / (1.0 - easy)  # where ``roll`` falls among the hard kinds
        if roll < easy:
            neg: Scene | None = random_scene(rng, pair_frac)
        elif isinstance(scene, Pair) and shape_swaps and hard < swap:
            neg = (colour_swap, side_swap, shape_swap)[min(2, int(3 * hard / swap))](scene)
        elif isinstance(scene, Pair) and hard < swap / 2:
            neg = colour_swap(scene)
        elif isinstance(scene, Pair) and hard < swap:
            neg = side_swap(scene)
        else:
            neg = one_attribute_changed(rng, scene, shape_frac)
        if neg is not None and neg != scene and neg not in out:
            out.append(neg)
    return out


def near_misses(
    rng: np.random.Generator, scene: Scene, k: int, shape_frac: float, shape_swaps: bool = False
) -> list[Scene]:
    """``k`` distinct scenes one hard change away from ``scene``, for a family of images.

    A family (a scene drawn together with its near misses) lets training compare one
    caption across images that differ in one detail, which is what text→image
    re-ranking does: for two objects the left/right swap (and, with ``shape_swaps``, the
    shape swap), then one-attribute changes (a shape with probability ``shape_frac``);
    for a single object one-attribute changes.
    """
    out: list[Scene] = []
    if isinstance(scene, Pair):
        out.append(side_swap(scene))
        swapped = shape_swap(scene) if shape_swaps else None
        if swapped is not None:
            out.append(swapped)
    tries = 0
    while len(out) < k and tries < 50:
        tries += 1
        neg = one_attribute_changed(rng, scene, shape_frac)
        if neg != scene and neg not in out:
            out.append(neg)
    return out[:k]


def render_scene(rng: np.random.Generator, scene: Scene, size: int, augment: bool) -> Image.Image:
    """Draws ``scene`` with the catalog renderer or, with ``augment``, the augmented one."""
    from mmsearch.training.augment import augmented_pair, augmented_single

    if isinstance(scene, Single):
        draw_single = augmented_single if augment else render_item
        return draw_single(rng, scene.colour, scene.shape, scene.position, size)
    return (augmented_pair if augment else render_pair)(rng, scene.left, scene.right, size)


def catalog_words() -> list[str]:
    """Every word a catalog caption uses, for the tokenizer's vocabulary."""
    words = {"a", "on", "the", "to", "left", "of"} | set(COLOURS) | set(SHAPES) | set(POSITIONS)
    return sorted(words)
