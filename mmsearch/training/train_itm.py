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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmsearch.training.itm_data import (
    Scene,
    caption,
    caption_corpus,
    hard_negatives,
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
    pool: int = 0  # > 0: render this many scenes once and draw batches from them
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

    Words outside the catalog become ``[UNK]``; the vocabulary also holds the
    characters and word pieces that WordPiece training keeps.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(vocab_size=160, special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tok.train_from_iterator(caption_corpus(), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
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


def itm_logits(
    model: Any,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_index: torch.Tensor,
    image_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """ITM logits of text ``j`` against image ``image_index[j]``; each image is encoded once."""
    if image_embeds is None:
        image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    image_embeds = image_embeds[image_index]
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    hidden = model.text_encoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_atts,
    ).last_hidden_state
    return model.itm_head(hidden[:, 0, :])


def _texts(
    rng: np.random.Generator, scenes: list[Scene], cfg: ItmTrainConfig, easy: float, swap: float
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Captions of ``scenes`` (match) followed by each one's negatives (no match).

    Every image gets ``cfg.negatives`` hard negatives and ``cfg.in_batch`` captions
    of other scenes of the batch. Returns the texts, the index of each text's image
    and the labels (1 match, 0 no match); an image's texts are contiguous, match first.
    """
    texts, owner, labels = [], [], []
    captions = [caption(scene) for scene in scenes]
    for i, scene in enumerate(scenes):
        negs = [
            caption(n) for n in hard_negatives(rng, scene, cfg.negatives, cfg.pair_frac, easy, swap)
        ]
        others = [c for c in dict.fromkeys(captions) if c != captions[i] and c not in negs]
        if cfg.in_batch and others:
            picks = rng.choice(len(others), min(cfg.in_batch, len(others)), replace=False)
            negs += [others[int(j)] for j in picks]
        texts += [captions[i], *negs]
        owner += [i] * (1 + len(negs))
        labels += [1] + [0] * len(negs)
    return texts, torch.tensor(owner), torch.tensor(labels)


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
    texts, owner, labels = _texts(rng, scenes, cfg, easy, cfg.swap_frac if swap is None else swap)
    enc = processor(images=images, text=texts, padding=True, return_tensors="pt")
    return enc, owner, labels


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
    """

    def __init__(self, rng: np.random.Generator, processor: Any, cfg: ItmTrainConfig) -> None:
        self.scenes = [random_scene(rng, cfg.pair_frac) for _ in range(cfg.pool)]
        chunks = []
        for start in range(0, cfg.pool, 256):
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
        picks = rng.integers(0, len(self.scenes), size=cfg.batch_size)
        texts, owner, labels = _texts(rng, [self.scenes[int(k)] for k in picks], cfg, easy, swap)
        enc = dict(processor.tokenizer(texts, padding=True, return_tensors="pt"))
        enc["pixel_values"] = self.pixels[torch.from_numpy(picks)].float()
        return enc, owner, labels


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


def _lr_at(step: int, cfg: ItmTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def train(
    cfg: ItmTrainConfig, out: Path, *, eval_every: int = 250, save_every: int = 250
) -> dict[str, float]:
    """Runs one seeded training run and writes model + processor to the folder ``out``."""
    from transformers import BlipForImageTextRetrieval

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    processor = build_processor(cfg.image_size)
    if cfg.init:
        model = BlipForImageTextRetrieval.from_pretrained(cfg.init, use_safetensors=True)
    else:
        model = BlipForImageTextRetrieval(build_config(cfg, processor.tokenizer))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
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
        logits = itm_logits(
            model, enc["pixel_values"], enc["input_ids"], enc["attention_mask"], owner, image_embeds
        )
        loss = F.cross_entropy(logits, labels)
        if cfg.rank_weight > 0:
            loss = loss + cfg.rank_weight * rank_loss(logits, owner, labels)
        if cfg.itc_weight > 0:
            loss = loss + cfg.itc_weight * _itc_loss(model, enc, labels, image_embeds)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            acc = (logits.argmax(-1) == labels).float().mean().item()
            print(
                f"step {step} loss {loss.item():.4f} acc {acc:.3f} lr {_lr_at(step, cfg):.2e} "
                f"t {time.time() - start:.0f}s",
                file=sys.stderr,
                flush=True,
            )
        if (step + 1) % eval_every == 0 or step + 1 == cfg.steps:
            wins = hard_negative_wins(model, processor)
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
