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


def test_shape_proportions_keep_each_shape_its_name() -> None:
    sharp = np.array(object_outline("square", 0, 0, 1, 0, 1))
    rounded = np.array(object_outline("square", 0, 0, 1, 0, 1, corner=0.4))
    assert len(sharp) == 4 and len(rounded) == 28  # four arcs of seven points
    assert np.abs(rounded).max() == pytest.approx(0.85)  # the same sides ...
    assert (
        np.abs(rounded).sum(axis=1).max() < np.abs(sharp).sum(axis=1).max() - 0.1
    )  # ... no corners
    for inner in (0.35, 0.62):
        star = np.array(object_outline("star", 0, 0, 1, 0, 1, inner=inner))
        radii = np.hypot(star[:, 0], star[:, 1])
        assert (
            len(star) == 10
            and radii[0::2] == pytest.approx(1)
            and radii[1::2] == pytest.approx(inner)
        )
    tall = np.array(object_outline("triangle", 0, 0, 1, 0, 1, apex=(0.7, 0.85)))
    assert (
        len(tall) == 3 and tall[0] == pytest.approx([0, -1]) and tall[1:, 1] == pytest.approx(0.85)
    )


@pytest.mark.parametrize("seed", range(12))
def test_augmented_objects_keep_their_colour_under_light_and_shadow(seed: int) -> None:
    """Shading, shadows and backdrops never wash out the named colour of either object."""
    rng = np.random.default_rng(seed)
    img = (
        np.asarray(augmented_pair(rng, ("red", "star"), ("blue", "square"), 128), dtype=float) / 255
    )
    for half, lo, hi in ((img[:, :64], -12, 12), (img[:, 64:], 200, 245)):
        r, g, b = half[..., 0], half[..., 1], half[..., 2]
        v, low = half.max(-1), half.min(-1)
        s = (v - low) / np.maximum(v, 1e-6)
        hue = np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b))  # -180..180
        hue = np.where(hue < -90, hue + 360, hue)
        named = (s > 0.45) & (v > 0.35) & (hue >= lo) & (hue <= hi)
        assert named.sum() >= 12, (seed, int(named.sum()))
