"""Training of ``mmsearch-tiny-itm``, a small BLIP image-text-matching model.

The model is transformers' ``BlipForImageTextRetrieval`` with a small ``BlipConfig``
(a few layers in both towers); its processor is the standard ``BlipProcessor``
(``BlipImageProcessor`` + a BERT WordPiece tokenizer whose vocabulary is built
from the catalog's words with the ``tokenizers`` library). The output folder loads
with ``BlipForImageTextRetrieval.from_pretrained(dir)`` and
``BlipProcessor.from_pretrained(dir)``.

Every step renders ``batch-size`` scenes in memory (two-object scenes and single
objects, half of them augmented), pairs each image with its caption (match) and
``negatives`` hard-negative captions (no match: colours swapped, objects swapped
left/right, one attribute changed) and minimises the ITM head's cross-entropy.

    python -m mmsearch.training.train_itm --out mmsearch/models/weights/mmsearch-tiny-itm \\
        --steps 3000 --seed 0

This is a tool: it logs progress to stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mmsearch.datasets.synthetic import COLOURS, SHAPES
from mmsearch.training.itm_data import (
    Pair,
    Scene,
    Single,
    caption,
    catalog_words,
    hard_negatives,
    near_misses,
    random_scene,
    render_scene,
)
from mmsearch.training.itm_eval import hard_negative_wins

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


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


def build_tokenizer() -> Any:
    """A BERT-style WordPiece tokenizer (transformers) whose vocabulary covers the catalog's words.

    The vocabulary is fixed, in a fixed order: the special tokens, every catalog word,
    then the characters of those words alone and as ``##`` continuations (so any
    other word of those letters still tokenizes); other characters become ``[UNK]``.
    (``WordPieceTrainer`` numbers equally frequent tokens differently from run to run,
    which made runs unrepeatable and scrambled a continued run's word embeddings.)
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    words = catalog_words()
    chars = sorted({c for word in words for c in word})
    tokens = [*SPECIAL_TOKENS, *words, *chars, *(f"##{c}" for c in chars)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=32,
    )


def build_processor(image_size: int) -> Any:
    """``BlipProcessor`` with the catalog tokenizer and an ``image_size`` image processor."""
    from transformers import BlipImageProcessor, BlipProcessor

    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=image_processor, tokenizer=build_tokenizer())


def build_config(cfg: ItmTrainConfig, tokenizer: Any) -> Any:
    """The small ``BlipConfig`` of ``mmsearch-tiny-itm``."""
    from transformers import BlipConfig

    vocab = tokenizer.get_vocab()
    vision = {
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.hidden * 2,
        "num_hidden_layers": cfg.vision_layers,
        "num_attention_heads": cfg.heads,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "initializer_range": cfg.init_range,
    }
    text = {
        "vocab_size": len(vocab),
        "hidden_size": cfg.hidden,
        "encoder_hidden_size": cfg.hidden,
        "intermediate_size": cfg.hidden * 2,
        "num_hidden_layers": cfg.text_layers,
        "num_attention_heads": cfg.heads,
        "max_position_embeddings": 32,
        "initializer_range": cfg.init_range,
        "pad_token_id": vocab["[PAD]"],
        "bos_token_id": vocab["[CLS]"],
        "sep_token_id": vocab["[SEP]"],
        "eos_token_id": vocab["[SEP]"],
    }
    return BlipConfig(
        text_config=text,
        vision_config=vision,
        image_text_hidden_size=64,
        projection_dim=64,
        initializer_range=cfg.init_range,
    )


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """2-D sin-cos position codes of a ``grid``×``grid`` patch grid, plus a zero row for CLS.

    Half the channels encode the column, half the row, each as sines and cosines of
    geometrically spaced frequencies (as in MAE). Returns ``(1, 1 + grid², dim)``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def code(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([code(cols), code(rows)], dim=1)
    return torch.cat([torch.zeros(1, dim), table])[None]


def itm_logits(
    model: Any,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_index: torch.Tensor,
    image_embeds: torch.Tensor | None = None,
    slot_head: torch.nn.Module | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """ITM logits of text ``j`` against image ``image_index[j]``; each image is encoded once.

    With ``slot_head``, also its logits on every token's state after the text tower's
    second-to-last layer (the per-word check; the last layer is left to gather them).
    """
    if image_embeds is None:
        image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    image_embeds = image_embeds[image_index]
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    out = model.text_encoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_atts,
        output_hidden_states=slot_head is not None,
    )
    logits = model.itm_head(out.last_hidden_state[:, 0, :])
    if slot_head is None:
        return logits
    return logits, slot_head(out.hidden_states[-2])


# Token positions of the attribute words ([CLS] first; every catalog word is one token):
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
        truth = (*image_scene.left, *image_scene.right)
        said = (*text_scene.left, *text_scene.right)
        return [(p, int(a == b)) for p, a, b in zip(_PAIR_SLOTS, said, truth, strict=True)]
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


def _texts(
    rng: np.random.Generator,
    scenes: list[Scene],
    cfg: ItmTrainConfig,
    easy: float,
    swap: float,
    kin: list[list[Scene]] | None = None,
) -> TextBatch:
    """Captions of ``scenes`` (match) followed by each one's negatives (no match).

    Every image gets the captions of its family (``kin[i]``, the other scenes drawn
    with it), ``cfg.negatives`` hard negatives and ``cfg.in_batch`` captions of other
    scenes of the batch; an image's texts are contiguous, match first.
    """
    texts, owner, labels, slots = [], [], [], []
    for i, scene in enumerate(scenes):
        negs = [k for k in dict.fromkeys(kin[i]) if k != scene] if kin else []
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


def _batch(
    rng: np.random.Generator,
    processor: Any,
    cfg: ItmTrainConfig,
    easy: float = 0.125,
    swap: float | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    scenes = [random_scene(rng, cfg.pair_frac) for _ in range(cfg.batch_size)]
    images = [
        render_scene(rng, scene, _render_size(rng), rng.random() < cfg.augment_frac)
        for scene in scenes
    ]
    batch = _texts(rng, scenes, cfg, easy, cfg.swap_frac if swap is None else swap)
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


def object_loss(
    head: torch.nn.Module, image_embeds: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The per-object check: a linear probe on pooled patch states names each region's object.

    Patch states (CLS dropped) are averaged over the left half of the patch grid, the
    right half and the whole grid; ``head`` predicts colour and shape of each region's
    object (:func:`object_targets`). It trains the vision tower to encode *what* is in
    each half, which the cross-attention then reads; the probe is not saved.
    """
    patches = image_embeds[:, 1:, :]
    grid = int(round(patches.shape[1] ** 0.5))
    cells = patches.reshape(patches.shape[0], grid, grid, -1)
    half = grid // 2
    pooled = torch.stack(
        [cells[:, :, :half].mean((1, 2)), cells[:, :, half:].mean((1, 2)), cells.mean((1, 2))],
        dim=1,
    )  # (images, 3, hidden)
    logits = head(pooled)
    n_colours = len(COLOURS)
    colour = F.cross_entropy(
        logits[..., :n_colours].flatten(0, 1), targets[..., 0].flatten(), ignore_index=-100
    )
    shape = F.cross_entropy(
        logits[..., n_colours:].flatten(0, 1), targets[..., 1].flatten(), ignore_index=-100
    )
    return colour + shape


def text_groups(texts: list[str]) -> torch.Tensor:
    """One id per distinct text: rows with the same caption (on different images) share it."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(t, len(ids)) for t in texts])


def _render_size(rng: np.random.Generator) -> int:
    return 128 if rng.random() < 0.75 else int(rng.choice((96, 160)))


def _itc_loss(
    model: Any, enc: dict[str, torch.Tensor], labels: torch.Tensor, image_embeds: torch.Tensor
) -> torch.Tensor:
    """BLIP's image-text contrastive loss on the unimodal encoders, with the hard negatives.

    It gives the vision tower a strong early signal (which colours and shapes are in
    the image) before the cross-attention has learned anything. Image → text ranks
    each image's caption against *every* text of the batch, the hard negatives
    included, so the unimodal features must already encode which object is where;
    text → image ranks each caption against the batch's images.
    """
    text = model.text_encoder(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
    ).last_hidden_state
    img = F.normalize(model.vision_proj(image_embeds[:, 0, :]), dim=-1)
    txt = F.normalize(model.text_proj(text[:, 0, :]), dim=-1)
    logits = 20.0 * img @ txt.T  # (images, all texts)
    ids = enc["input_ids"]
    pos_ids = ids[labels == 1]  # one caption per image, in image order
    same = (pos_ids[:, None, :] == ids[None, :, :]).all(-1).float()  # repeated captions match
    i2t = -(same / same.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    pos_logits = logits[:, labels == 1].T  # (captions, images)
    same_pos = same[:, labels == 1]
    t2i = -(same_pos / same_pos.sum(1, keepdim=True) * pos_logits.log_softmax(1)).sum(1).mean()
    return (i2t + t2i) / 2


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
                render_scene(rng, scene, _render_size(rng), rng.random() < cfg.augment_frac)
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
        batch = _texts(rng, scenes, cfg, easy, swap, kin)
        enc = dict(processor.tokenizer(batch.texts, padding=True, return_tensors="pt"))
        enc["pixel_values"] = self.pixels[torch.from_numpy(picks)].float()
        enc["slot_targets"] = slot_targets(batch.slots, enc["input_ids"].shape[1])
        enc["text_group"] = text_groups(batch.texts)
        enc["object_targets"] = object_targets(scenes)
        return enc, batch.owner, batch.labels


def rank_loss(logits: torch.Tensor, owner: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image, cross-entropy of its caption against its negatives on the match margin.

    The margin ``logit[match] - logit[no match]`` orders candidates exactly as the
    match probability does, so this trains the ranking a re-ranker is used for.
    """
    margin = logits[:, 1] - logits[:, 0]
    n = int(owner.max()) + 1
    start = torch.zeros(n + 1, dtype=torch.long)
    start[1:] = torch.bincount(owner, minlength=n).cumsum(0)
    slot = torch.arange(len(owner)) - start[owner]
    table = torch.full((n, int(slot.max()) + 1), float("-inf"), dtype=margin.dtype)
    table[owner, slot] = margin
    has_neg = (labels == 0).long().bincount(owner, minlength=n) > 0
    pos = margin[labels == 1]
    return (table.logsumexp(1) - pos)[has_neg].mean()


def text_rank_loss(logits: torch.Tensor, group: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per caption, cross-entropy of its own image against the other images it was paired with.

    Rows sharing ``group`` carry the same caption on different images; for each match
    row, the softmax of the match margin runs over that row and the group's no-match
    rows. This is the comparison text→image re-ranking makes (one caption, many
    candidate images); captions paired with no other image add nothing. Zero when no
    caption has a negative image.
    """
    margin = logits[:, 1] - logits[:, 0]
    losses = []
    for g in torch.unique(group[labels == 1]).tolist():
        rows = group == g
        negs = margin[rows & (labels == 0)]
        if len(negs) == 0:
            continue
        for pos in margin[rows & (labels == 1)]:
            losses.append(torch.logsumexp(torch.cat([pos[None], negs]), 0) - pos)
    if not losses:
        return margin.sum() * 0.0
    return torch.stack(losses).mean()


def _lr_at(step: int, cfg: ItmTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def train(
    cfg: ItmTrainConfig,
    out: Path,
    *,
    eval_every: int = 250,
    save_every: int = 250,
    eval_n: int = 300,
) -> dict[str, float]:
    """Runs one seeded training run and writes model + processor to the folder ``out``."""
    from transformers import BlipForImageTextRetrieval

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    if cfg.init:  # its own tokenizer: the word embeddings were learned with its token ids
        from transformers import BlipProcessor

        processor = BlipProcessor.from_pretrained(cfg.init)
        model = BlipForImageTextRetrieval.from_pretrained(cfg.init, use_safetensors=True)
    else:
        processor = build_processor(cfg.image_size)
        model = BlipForImageTextRetrieval(build_config(cfg, processor.tokenizer))
        if cfg.pos_scale > 0:  # a strong "where" signal from step 0: binding needs it
            with torch.no_grad():
                model.vision_model.embeddings.position_embedding.copy_(
                    cfg.pos_scale * sincos_positions(cfg.image_size // cfg.patch_size, cfg.hidden)
                )
    # The per-word check's head trains the text tower's token states; it is not saved.
    slot_head = torch.nn.Linear(model.config.text_config.hidden_size, 2)
    # The per-object check's head trains the vision tower's patch states; not saved either.
    # (Made only when used, so that runs without it draw the same random numbers as before.)
    object_head = (
        torch.nn.Linear(model.config.vision_config.hidden_size, len(COLOURS) + len(SHAPES))
        if cfg.object_weight > 0
        else torch.nn.Identity()
    )
    params = [
        *model.named_parameters(),
        *(("slot_head." + n, p) for n, p in slot_head.named_parameters()),
        *(("object_head." + n, p) for n, p in object_head.named_parameters()),
    ]
    decay = [p for n, p in params if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in params if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    start = time.time()
    pool = ScenePool(rng, processor, cfg) if cfg.pool > 0 else None
    if pool is not None:
        print(
            f"pool of {cfg.pool} scenes rendered in {time.time() - start:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    last: dict[str, float] = {}
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        easy = 0.125 + 0.375 * max(0.0, 1.0 - step / max(1.0, cfg.curriculum * cfg.steps))
        swap = 0.0 if step < cfg.identity_frac * cfg.steps else cfg.swap_frac
        if pool is not None:
            enc, owner, labels = pool.batch(rng, processor, cfg, easy, swap)
        else:
            enc, owner, labels = _batch(rng, processor, cfg, easy, swap)
        image_embeds = model.vision_model(pixel_values=enc["pixel_values"]).last_hidden_state
        logits, word_logits = itm_logits(
            model,
            enc["pixel_values"],
            enc["input_ids"],
            enc["attention_mask"],
            owner,
            image_embeds,
            slot_head,
        )
        parts = {"itm": F.cross_entropy(logits, labels)}
        if cfg.slot_weight > 0:
            parts["word"] = cfg.slot_weight * F.cross_entropy(
                word_logits.flatten(0, 1), enc["slot_targets"].flatten(), ignore_index=-100
            )
        if cfg.rank_weight > 0:
            parts["rank"] = cfg.rank_weight * rank_loss(logits, owner, labels)
        if cfg.object_weight > 0:
            parts["object"] = cfg.object_weight * object_loss(
                object_head, image_embeds, enc["object_targets"]
            )
        if cfg.text_rank_weight > 0:
            parts["trank"] = cfg.text_rank_weight * text_rank_loss(
                logits, enc["text_group"], labels
            )
        if cfg.itc_weight > 0:
            parts["itc"] = cfg.itc_weight * _itc_loss(model, enc, labels, image_embeds)
        loss = torch.stack(list(parts.values())).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            acc = (logits.argmax(-1) == labels).float().mean().item()
            print(
                f"step {step} loss {loss.item():.4f} ("
                + " ".join(f"{k} {v.item():.3f}" for k, v in parts.items())
                + f") acc {acc:.3f} lr {_lr_at(step, cfg):.2e} t {time.time() - start:.0f}s",
                file=sys.stderr,
                flush=True,
            )
        if (step + 1) % eval_every == 0 or step + 1 == cfg.steps:
            wins = hard_negative_wins(model, processor, n=eval_n)
            last = {"step": step + 1, **wins}
            shown = " ".join(f"{k} {v:.3f}" for k, v in wins.items())
            print(f"eval step {step + 1} wins: {shown}", file=sys.stderr, flush=True)
        stop = step + 1 == cfg.stop_after
        if (step + 1) % save_every == 0 or step + 1 == cfg.steps or stop:
            save(model, processor, out)
        if stop:
            break
    last["seconds"] = time.time() - start
    return last


def save(model: Any, processor: Any, out: Path) -> None:
    """Writes ``config.json``, ``model.safetensors`` and the processor files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train mmsearch-tiny-itm on synthetic scenes.")
    ap.add_argument("--out", type=Path, required=True)
    defaults = ItmTrainConfig()
    for name, value in vars(defaults).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--save-every", type=int, default=250)
    args = ap.parse_args(argv)
    cfg = ItmTrainConfig(**{k: getattr(args, k) for k in vars(defaults)})
    print(f"config {cfg}", file=sys.stderr, flush=True)
    result = train(cfg, args.out, eval_every=args.eval_every, save_every=args.save_every)
    print(f"done {result}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
