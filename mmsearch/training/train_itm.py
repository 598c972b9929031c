"""Training of ``mmsearch-tiny-itm``, a small BLIP image-text-matching model: the loop and CLI.

Every step renders ``batch-size`` scenes in memory (two-object scenes and single
objects, half of them augmented), pairs each image with its caption (match) and
``negatives`` hard-negative captions (no match: colours swapped, objects swapped
left/right, one attribute changed) and minimises the ITM head's cross-entropy plus
the weighted auxiliary losses. The parts live beside it: the run's hyper-parameters
in ``itm_config``, the model, tokenizer and processor in ``itm_model``, the batches
in ``itm_batches``, the auxiliary losses in ``itm_losses``, the held-out check in
``itm_eval`` (scenes and captions in ``itm_data``).

    python -m mmsearch.training.train_itm --out mmsearch/models/weights/mmsearch-tiny-itm \\
        --steps 3000 --seed 0

This is a tool: it logs progress to stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmsearch.datasets.synthetic import COLOURS, SHAPES
from mmsearch.training.itm_batches import ScenePool, random_batch
from mmsearch.training.itm_config import ItmTrainConfig
from mmsearch.training.itm_eval import hard_negative_wins
from mmsearch.training.itm_losses import itc_loss, object_loss, rank_loss, text_rank_loss
from mmsearch.training.itm_model import (
    build_config,
    build_processor,
    itm_logits,
    save,
    sincos_positions,
)

__all__ = ["ItmTrainConfig", "main", "train"]


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
    blip_config: Any = model.config  # BlipConfig: its tower configs are typed as a union
    # The per-word check's head trains the text tower's token states; it is not saved.
    slot_head = torch.nn.Linear(blip_config.text_config.hidden_size, 2)
    # The per-object check's head trains the vision tower's patch states; not saved either.
    # (Made only when used, so that runs without it draw the same random numbers as before.)
    object_head = (
        torch.nn.Linear(blip_config.vision_config.hidden_size, len(COLOURS) + len(SHAPES))
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
            enc, owner, labels = random_batch(rng, processor, cfg, easy, swap)
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
            parts["itc"] = cfg.itc_weight * itc_loss(model, enc, labels, image_embeds)
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
