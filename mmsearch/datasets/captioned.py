"""A generated COCO-style captioned collection: images with five caption variants each.

Each image shows a distinct (colour, shape, position) of the synthetic catalog, so a
caption has exactly one matching image, as in COCO / Flickr30k retrieval. The five
captions of an image are phrasings built from the synthetic vocabulary only
(``a red circle on the left``, ``red circle on the left``, ``the red circle on the
left``, ``a red circle left``, ``red circle left``). The file follows the Karpathy
split format (``images[].filepath/filename/split/sentences[].raw``).

>>> path = write_coco_captions("/tmp/coco", n=40, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmsearch.datasets.synthetic import COLOURS, POSITIONS, SHAPES, render_item

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {c} {s} on the {p}",
    "{c} {s} on the {p}",
    "the {c} {s} on the {p}",
    "a {c} {s} {p}",
    "{c} {s} {p}",
)


def caption_variants(colour: str, shape: str, position: str) -> list[str]:
    """The five captions of one item."""
    return [t.format(c=colour, s=shape, p=position) for t in CAPTION_TEMPLATES]


def write_coco_captions(
    out_dir: str | Path, n: int = 40, seed: int = 0, *, image_size: int = 128, split: str = "test"
) -> Path:
    """Renders ``n`` images of distinct items (``n`` ≤ 160) and writes ``captions.json``."""
    combos = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]
    if not 0 < n <= len(combos):
        raise ValueError(f"n must be between 1 and {len(combos)} (distinct items)")
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chosen = [combos[int(i)] for i in rng.permutation(len(combos))[:n]]
    images = []
    for i, (colour, shape, position) in enumerate(chosen):
        name = f"img-{i:05d}.jpg"
        render_item(rng, colour, shape, position, image_size).save(
            root / "images" / name, "JPEG", quality=90
        )
        sentences = [{"raw": text} for text in caption_variants(colour, shape, position)]
        images.append(
            {
                "filepath": "images",
                "filename": name,
                "split": split,
                "imgid": i,
                "sentences": sentences,
            }
        )
    path = root / "captions.json"
    path.write_text(
        json.dumps({"dataset": "mmsearch-synthetic", "images": images}, indent=1), encoding="utf-8"
    )
    return path
