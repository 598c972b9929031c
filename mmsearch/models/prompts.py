"""Generic text queries that calibrate a model's image indexes and check int8 exports.

Product-search phrasing plus the synthetic catalog's own vocabulary: ANN tuning uses
them as cross-modal queries when a table holds no texts
(:mod:`mmsearch.indexer.ann_build`), and int8 acceptance measures recall with them
(:mod:`mmsearch.models.quantize`). Seeded: the same seed gives the same list.
"""

from __future__ import annotations

import numpy as np

#: Text queries used to tune image indexes when the table holds no texts: generic
#: product-search phrasing plus the synthetic catalog's own vocabulary.
CALIBRATION_NOUNS = (
    "shirt",
    "dress",
    "shoe",
    "bag",
    "hat",
    "watch",
    "chair",
    "table",
    "lamp",
    "phone",
    "car",
    "dog",
    "cat",
    "tree",
    "flower",
    "house",
    "beach",
    "mountain",
    "person",
    "bottle",
    "cup",
    "book",
    "bicycle",
    "circle",
    "square",
    "triangle",
    "star",
)
CALIBRATION_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "")
CALIBRATION_PLACES = (
    "",
    " on the left",
    " on the right",
    " on the top",
    " on the bottom",
    " in the center",
)


def calibration_prompts(seed: int, n: int = 500) -> list[str]:
    """``n`` (at most) of the calibration texts, picked with ``seed``."""
    prompts = [
        f"a {colour} {noun}{place}".replace("  ", " ")
        for noun in CALIBRATION_NOUNS
        for colour in CALIBRATION_COLOURS
        for place in CALIBRATION_PLACES
    ]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(prompts), size=min(n, len(prompts)), replace=False)
    return [prompts[int(i)] for i in pick]
