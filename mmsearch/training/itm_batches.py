"""Training batches of ``mmsearch-tiny-itm``: rendered scenes, their captions and hard negatives.

Every batch pairs each image with its caption (match) and hard-negative captions (no
match), and carries the targets of the auxiliary checks: per-word labels (does each
named attribute hold?), per-object labels (what is in each half of the image?) and
caption groups (the same caption on different images). :class:`ScenePool` renders
scenes once and draws batches from them with fresh negatives.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from mmsearch.datasets.synthetic import COLOURS, SHAPES
from mmsearch.training.itm_config import ItmTrainConfig
from mmsearch.training.itm_data import (
    Pair,
    Scene,
    Single,
    caption,
    hard_negatives,
    near_misses,
    random_scene,
    render_scene,
    shape_changes,
)

# "a {c} {s} to the left of a {c} {s}" and "a {c} {s} on the {p}".
_PAIR_SLOTS = (2, 3, 9, 10)
_SINGLE_SLOTS = (2, 3, 6)


def slot_labels(image_scene: Scene, text_scene: Scene) -> list[tuple[int, int]]:
    """``(token position, holds)`` for each attribute word of ``text_scene``'s caption.

    A word holds when the image's scene has that attribute in that slot (the left or
    right object's colour or shape; a single object's colour, shape or position).
    Captions of the other kind of scene get no word labels.
    """
    if isinstance(image_scene, Pair) and isinstance(text_scene, Pair):
        pair_truth = (*image_scene.left, *image_scene.right)
        pair_said = (*text_scene.left, *text_scene.right)
        return [
            (p, int(a == b)) for p, a, b in zip(_PAIR_SLOTS, pair_said, pair_truth, strict=True)
        ]
    if isinstance(image_scene, Single) and isinstance(text_scene, Single):
        truth = (image_scene.colour, image_scene.shape, image_scene.position)
        said = (text_scene.colour, text_scene.shape, text_scene.position)
        return [(p, int(a == b)) for p, a, b in zip(_SINGLE_SLOTS, said, truth, strict=True)]
    return []


class TextBatch(NamedTuple):
    """Texts of a batch: each image's caption (match) followed by its negatives."""

    texts: list[str]
    owner: torch.Tensor  # index of each text's image
    labels: torch.Tensor  # 1 match, 0 no match
    slots: list[list[tuple[int, int]]]  # per text: (token position, attribute holds)


def texts_for(
    rng: np.random.Generator,
    scenes: list[Scene],
    cfg: ItmTrainConfig,
    easy: float,
    swap: float,
    kin: list[list[Scene]] | None = None,
) -> TextBatch:
    """Captions of ``scenes`` (match) followed by each one's negatives (no match).

    Every image gets the captions of its family (``kin[i]``, the other scenes drawn
    with it), ``cfg.negatives`` hard negatives, with ``cfg.shape_negatives`` every
    one-shape change of a two-object scene (:func:`shape_changes`), and ``cfg.in_batch``
    captions of other scenes of the batch; an image's texts are contiguous, match first.
    """
    texts, owner, labels, slots = [], [], [], []
    for i, scene in enumerate(scenes):
        negs = [k for k in dict.fromkeys(kin[i]) if k != scene] if kin else []
        if cfg.shape_negatives and isinstance(scene, Pair):
            negs += [k for k in shape_changes(scene) if k not in negs]
        for neg in hard_negatives(
            rng,
            scene,
            cfg.negatives,
            cfg.pair_frac,
            easy,
            swap,
            cfg.shape_frac,
            bool(cfg.shape_swaps),
        ):
            if neg not in negs:
                negs.append(neg)
        others = [o for o in dict.fromkeys(scenes) if o != scene and o not in negs]
        if cfg.in_batch and others:
            picks = rng.choice(len(others), min(cfg.in_batch, len(others)), replace=False)
            negs += [others[int(j)] for j in picks]
        for text_scene in (scene, *negs):
            texts.append(caption(text_scene))
            slots.append(slot_labels(scene, text_scene))
        owner += [i] * (1 + len(negs))
        labels += [1] + [0] * len(negs)
    return TextBatch(texts, torch.tensor(owner), torch.tensor(labels), slots)


def slot_targets(slots: list[list[tuple[int, int]]], length: int) -> torch.Tensor:
    """``(texts, length)`` targets for the per-word check; -100 where a token has none."""
    out = torch.full((len(slots), length), -100, dtype=torch.long)
    for row, pairs in enumerate(slots):
        for pos, holds in pairs:
            out[row, pos] = holds
    return out


def random_batch(
    rng: np.random.Generator,
    processor: Any,
    cfg: ItmTrainConfig,
    easy: float = 0.125,
    swap: float | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A freshly rendered batch: processor inputs (with the checks' targets), owners, labels."""
    scenes = [random_scene(rng, cfg.pair_frac) for _ in range(cfg.batch_size)]
    images = [
        render_scene(rng, scene, render_size(rng), rng.random() < cfg.augment_frac)
        for scene in scenes
    ]
    batch = texts_for(rng, scenes, cfg, easy, cfg.swap_frac if swap is None else swap)
    enc = dict(processor(images=images, text=batch.texts, padding=True, return_tensors="pt"))
    enc["slot_targets"] = slot_targets(batch.slots, enc["input_ids"].shape[1])
    enc["text_group"] = text_groups(batch.texts)
    return enc, batch.owner, batch.labels


def object_targets(scenes: list[Scene]) -> torch.Tensor:
    """``(images, 3, 2)`` colour and shape indices per region: left half, right half, whole.

    A two-object scene names its left and right objects; a single object names the
    whole image (its position varies). -100 where a region names nothing.
    """
    out = torch.full((len(scenes), 3, 2), -100, dtype=torch.long)
    for i, scene in enumerate(scenes):
        if isinstance(scene, Pair):
            for region, (colour, shape) in enumerate((scene.left, scene.right)):
                out[i, region] = torch.tensor([COLOURS.index(colour), SHAPES.index(shape)])
        else:
            out[i, 2] = torch.tensor([COLOURS.index(scene.colour), SHAPES.index(scene.shape)])
    return out


def text_groups(texts: list[str]) -> torch.Tensor:
    """One id per distinct text: rows with the same caption (on different images) share it."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(t, len(ids)) for t in texts])


def render_size(rng: np.random.Generator) -> int:
    """The size a scene is rendered at before the processor resizes it (mostly 128)."""
    return 128 if rng.random() < 0.75 else int(rng.choice((96, 160)))


class ScenePool:
    """Scenes rendered and preprocessed once; batches draw from them with fresh negatives.

    On a CPU, rendering costs more than a small model's step; a pool renders each
    scene once and pairs it with newly drawn hard negatives every time it is used.

    With ``cfg.family > 1`` the pool is made of families: a random scene and
    ``family - 1`` of its near misses (:func:`near_misses`), each rendered on its own
    (own size, own augmentation); a batch then holds whole families.
    """

    def __init__(self, rng: np.random.Generator, processor: Any, cfg: ItmTrainConfig) -> None:
        self.scenes: list[Scene] = []
        self.family_of: list[int] = []
        size = max(1, cfg.family)
        self.families: list[list[int]] = []  # pool indices of each family's scenes
        while len(self.scenes) < cfg.pool:
            base = random_scene(rng, cfg.pair_frac)
            members = (
                [base, *near_misses(rng, base, size - 1, cfg.shape_frac, bool(cfg.shape_swaps))]
                if size > 1
                else [base]
            )
            self.families.append(list(range(len(self.scenes), len(self.scenes) + len(members))))
            self.family_of += [len(self.families) - 1] * len(members)
            self.scenes += members
        chunks = []
        for start in range(0, len(self.scenes), 256):
            images = [
                render_scene(rng, scene, render_size(rng), rng.random() < cfg.augment_frac)
                for scene in self.scenes[start : start + 256]
            ]
            pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
            chunks.append(pixels.to(torch.float16))
        self.pixels = torch.cat(chunks)

    def batch(
        self,
        rng: np.random.Generator,
        processor: Any,
        cfg: ItmTrainConfig,
        easy: float,
        swap: float,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """A batch of pooled scenes (whole families with ``cfg.family > 1``); as :func:`random_batch`."""
        kin: list[list[Scene]] | None = None
        if cfg.family > 1:
            fams = rng.choice(
                len(self.families), max(1, cfg.batch_size // cfg.family), replace=False
            )
            picks = np.array([k for f in fams for k in self.families[int(f)]])
            kin = [[self.scenes[j] for j in self.families[self.family_of[int(k)]]] for k in picks]
        else:
            picks = rng.integers(0, len(self.scenes), size=cfg.batch_size)
        scenes = [self.scenes[int(k)] for k in picks]
        batch = texts_for(rng, scenes, cfg, easy, swap, kin)
        enc = dict(processor.tokenizer(batch.texts, padding=True, return_tensors="pt"))
        enc["pixel_values"] = self.pixels[torch.from_numpy(picks)].float()
        enc["slot_targets"] = slot_targets(batch.slots, enc["input_ids"].shape[1])
        enc["text_group"] = text_groups(batch.texts)
        enc["object_targets"] = object_targets(scenes)
        return enc, batch.owner, batch.labels
