"""Augmented training renders, ITM hard negatives and the independent evaluation renderer."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from benchmarks.other_renderer import other_pair, other_single, write_other_catalog
from mmsearch.datasets.synthetic import COLOURS, SHAPES
from mmsearch.training.augment import (
    COLOUR_HSV,
    POSITION_REGION,
    augmented_pair,
    augmented_single,
    object_outline,
    sample_colour,
)
from mmsearch.training.itm_data import (
    Pair,
    Single,
    caption,
    colour_swap,
    hard_negatives,
    one_attribute_changed,
    side_swap,
)


@pytest.mark.parametrize("name", COLOURS)
def test_sampled_colours_stay_inside_their_name(name: str) -> None:
    rng = np.random.default_rng(3)
    hues, (s0, s1), (v0, v1) = COLOUR_HSV[name]
    for _ in range(50):
        h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in sample_colour(rng, name)))
        assert v0 - 0.02 <= v <= v1 + 0.02
        if v >= 0.2:  # saturation of very dark colours is dominated by 8-bit rounding
            assert s0 - 0.02 <= s <= s1 + 0.02
        if s1 > 0.1:  # chromatic names: hue inside one of the ranges (mod 360)
            deg = h * 360
            assert any(lo - 1 <= deg <= hi + 1 or lo - 1 <= deg - 360 <= hi + 1 for lo, hi in hues)


def test_augmented_renders_are_seeded_and_sized() -> None:
    a = augmented_single(np.random.default_rng(9), "red", "star", "left", 96)
    b = augmented_single(np.random.default_rng(9), "red", "star", "left", 96)
    c = augmented_pair(np.random.default_rng(9), ("blue", "circle"), ("red", "square"), 80)
    assert a.size == (96, 96) and c.size == (80, 80) and a.mode == c.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("position", sorted(POSITION_REGION))
def test_outlines_stay_in_their_region(position: str) -> None:
    (x0, x1), (y0, y1) = POSITION_REGION[position]
    for shape in SHAPES:
        pts = np.array(object_outline(shape, (x0 + x1) / 2, (y0 + y1) / 2, 0.1, 0.4, 1.2))
        cx, cy = pts.mean(axis=0)
        assert x0 - 0.03 <= cx <= x1 + 0.03 and y0 - 0.03 <= cy <= y1 + 0.03


def test_hard_negatives() -> None:
    scene = Pair(("red", "circle"), ("blue", "square"))
    assert caption(colour_swap(scene)) == "a blue circle to the left of a red square"  # type: ignore[arg-type]
    assert caption(side_swap(scene)) == "a blue square to the left of a red circle"
    assert colour_swap(Pair(("red", "circle"), ("red", "square"))) is None
    rng = np.random.default_rng(0)
    for _ in range(200):
        changed = one_attribute_changed(rng, scene)
        assert isinstance(changed, Pair) and changed.left != changed.right
        diffs = sum(
            a != b
            for a, b in zip(changed.left + changed.right, scene.left + scene.right, strict=True)
        )
        assert diffs == 1
        negs = hard_negatives(rng, scene, 3, 0.5)
        assert len(negs) == 3 and scene not in negs and len(set(negs)) == 3
    single = Single("green", "star", "top")
    assert caption(single) == "a green star on the top"
    assert all(n != single for n in hard_negatives(rng, single, 2, 0.0))


def test_other_renderer_draws_each_object_in_its_half(tmp_path) -> None:  # noqa: ANN001
    from benchmarks.other_renderer import PALETTE

    rng = np.random.default_rng(1)
    img = np.asarray(other_pair(rng, ("red", "circle"), ("blue", "star"), 160), dtype=float)
    for half, name in ((img[:, :80], "red"), (img[:, 80:], "blue")):
        dist = np.min(
            [np.linalg.norm(half - np.asarray(t), axis=-1) for t in PALETTE[name]], axis=0
        )
        assert (dist < 60).sum() > 50
    assert other_single(rng, "white", "square", "top").mode == "RGB"
    cat = write_other_catalog(tmp_path, n=6, seed=4, scenes="pairs")
    assert len(cat.rows) == 6 and all(" to the left of " in r["caption"] for r in cat.rows)
    assert all((tmp_path / r["file"]).is_file() for r in cat.rows)
