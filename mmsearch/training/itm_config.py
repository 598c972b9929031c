"""Hyper-parameters of one ``mmsearch-tiny-itm`` training run (model shape included)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ItmTrainConfig:
    """Hyper-parameters of one training run (model shape included)."""

    steps: int = 2000
    batch_size: int = 48
    negatives: int = 1
    itc_weight: float = 0.5
    curriculum: float = 0.4  # share of the steps over which easy negatives fade 0.5 -> 0.125
    swap_frac: float = 0.7  # share of a two-object scene's hard negatives that are swaps
    identity_frac: float = 0.0  # share of the steps at the start without swap negatives
    in_batch: int = 0  # extra negatives per image: captions of other scenes in the batch
    rank_weight: float = 0.0  # weight of the per-image ranking loss (caption vs its negatives)
    init_range: float = 0.02  # std of the initial weights (both towers)
    slot_weight: float = 0.0  # weight of the per-word check (does each named attribute hold?)
    pos_scale: float = 0.0  # > 0: start the vision position embeddings as 2-D sin-cos of this size
    pool: int = 0  # > 0: render this many scenes once and draw batches from them
    shape_frac: float = 0.5  # share of two-object one-attribute negatives that change a shape
    family: int = 0  # > 1: the pool holds scenes with family-1 near misses, drawn together
    text_rank_weight: float = 0.0  # weight of the per-caption ranking loss (image vs near misses)
    object_weight: float = 0.0  # weight of the per-object check on the vision tower's patches
    shape_swaps: int = 0  # 1: shape swaps join the hard negatives and the families
    shape_negatives: int = 0  # 1: every one-shape change of a two-object scene is a negative
    init: str = ""  # continue from a model folder written by an earlier run
    stop_after: int = 0  # end after this many steps (the schedule still spans ``steps``)
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup: int = 100
    weight_decay: float = 0.05
    pair_frac: float = 0.7
    augment_frac: float = 0.5
    seed: int = 0
    threads: int = 1
    image_size: int = 64
    patch_size: int = 8
    hidden: int = 128
    vision_layers: int = 3
    text_layers: int = 3
    heads: int = 4
