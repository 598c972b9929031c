"""Held-out check of an ITM model during training: does a scene's caption beat each hard negative?

Scenes are drawn from a seed the training never uses, with the catalog renderer
(what ``sample-data`` writes) and with the augmented one. For every two-object
scene the model scores its caption, the colour swap, the left/right swap and a
one-attribute change; a *win* is the caption scoring strictly higher. The
re-ranker's caption R@1 needs wins against every such neighbour that the first
stage returns, so ``all`` (the caption beats all three) is the figure to watch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmsearch.training.itm_data import (
    Pair,
    Scene,
    caption,
    colour_swap,
    one_attribute_changed,
    random_pair,
    render_scene,
    side_swap,
)
from mmsearch.training.itm_model import itm_logits

KINDS: tuple[str, ...] = ("colour_swap", "side_swap", "one_attribute")


def _negatives(rng: np.random.Generator, scene: Pair) -> dict[str, Scene]:
    out: dict[str, Scene] = {"side_swap": side_swap(scene)}
    swapped = colour_swap(scene)
    if swapped is not None and swapped != out["side_swap"]:
        out["colour_swap"] = swapped
    out["one_attribute"] = one_attribute_changed(rng, scene)
    return out


@torch.inference_mode()
def hard_negative_wins(
    model: Any, processor: Any, *, n: int = 300, seed: int = 999, augment: bool = False
) -> dict[str, float]:
    """Win rate of the caption against each kind of hard negative on ``n`` held-out pairs."""
    rng = np.random.default_rng(seed)
    scenes = [Pair(*random_pair(rng)) for _ in range(n)]
    images = [render_scene(rng, scene, 128, augment) for scene in scenes]
    texts, owner, kinds = [], [], []
    for i, scene in enumerate(scenes):
        for kind, neg in {"caption": scene, **_negatives(rng, scene)}.items():
            texts.append(caption(neg))
            owner.append(i)
            kinds.append(kind)
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    enc = processor.tokenizer(texts, padding=True, return_tensors="pt")
    was_training = model.training
    model.eval()
    logits = itm_logits(model, pixels, enc["input_ids"], enc["attention_mask"], torch.tensor(owner))
    model.train(was_training)
    margin = (logits[:, 1] - logits[:, 0]).numpy()
    kinds_arr, owner_arr = np.array(kinds), np.array(owner)
    own = np.full(n, np.nan)
    own[owner_arr[kinds_arr == "caption"]] = margin[kinds_arr == "caption"]
    beats = margin < own[owner_arr]  # for negatives: the caption scored higher
    out: dict[str, float] = {}
    for kind in KINDS:
        sel = kinds_arr == kind
        out[kind] = float(beats[sel].mean())
    negs = kinds_arr != "caption"
    lost = np.zeros(n, dtype=bool)
    np.logical_or.at(lost, owner_arr[negs], ~beats[negs])
    out["all"] = float((~lost).mean())
    return out
