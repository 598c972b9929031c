"""Contrastive fine-tuning of an open_clip model on (image, text) pairs: ``mmsearch finetune``.

The run: load the model (``ModelSpec``: any open_clip architecture and weights, or a
checkpoint file), read the pairs, split off a held-out set by image, decode every
image once, then :func:`mmsearch.training.loop.fit` with the held-out text→image and
image→text R@1/5/10 measured after each epoch by :mod:`mmsearch.evaluation.metrics`
(CLIP_benchmark's recall, as ``mmsearch eval`` reports it). The best epoch is written
as safetensors (fp32) with the architecture recorded in its metadata, so
``--model NAME --pretrained CHECKPOINT`` indexes and queries with exactly these weights.

>>> result = finetune(FinetuneConfig(spec=ModelSpec("mmsearch-tiny"), out="ft.safetensors"), read_pairs("cat.jsonl"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmsearch.evaluation.metrics import DEFAULT_KS, clip_benchmark_recall
from mmsearch.models.loader import CHECKPOINT_MODEL_KEY, ClipModel
from mmsearch.models.spec import ModelSpec
from mmsearch.training.data import ImageCache, PairBatches, PairSet, split_by_image
from mmsearch.training.loop import EpochResult, FitConfig, FitResult, fit, normalise_pixels


@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run: the model, where the checkpoint goes, and the loop's settings."""

    spec: ModelSpec
    out: str
    fit: FitConfig = field(default_factory=FitConfig)
    batch_size: int = 64
    val_fraction: float = 0.1
    seed: int = 0
    device: str | None = None
    threads: int | None = None


@dataclass
class FinetuneResult:
    """History per epoch, the best epoch, the checkpoint and the spec to index with."""

    fit: FitResult
    checkpoint: Path
    spec: ModelSpec
    baseline: dict[str, float]
    train_pairs: int
    val_pairs: int
    dropped: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "model": self.spec.name,
            "pretrained": self.spec.pretrained,
            "baseline": self.baseline,
            "epochs": [e.to_dict() for e in self.fit.history],
            "best_epoch": self.fit.best_epoch,
            "stopped_early": self.fit.stopped_early,
            "train_pairs": self.train_pairs,
            "val_pairs": self.val_pairs,
            "dropped": self.dropped,
        }


def held_out_metrics(
    model: ClipModel,
    tokenizer: Any,
    pairs: PairSet,
    cache: ImageCache,
    preprocess: dict[str, Any],
    device: str,
) -> dict[str, float]:
    """Text→image and image→text R@1/5/10 on held-out pairs (distinct texts vs distinct images).

    A text's positives are the images paired with it; an image's, its texts.
    """
    images = sorted(set(pairs.paths))
    texts = sorted(set(pairs.texts))
    image_pos = {p: i for i, p in enumerate(images)}
    text_pos = {t: j for j, t in enumerate(texts)}
    positives = np.zeros((len(texts), len(images)), dtype=bool)
    for path, text in zip(pairs.paths, pairs.texts, strict=True):
        positives[text_pos[text], image_pos[path]] = True
    img_f, txt_f = [], []
    for start in range(0, len(images), 256):
        pixels = normalise_pixels(
            cache.stack(images[start : start + 256]), preprocess["mean"], preprocess["std"]
        )
        img_f.append(F.normalize(model.encode_image(pixels.to(device)).float(), dim=-1).cpu())
    for start in range(0, len(texts), 256):
        tokens = tokenizer(texts[start : start + 256]).to(device)
        txt_f.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    scores = (torch.cat(txt_f) @ torch.cat(img_f).T).numpy()
    t2i = clip_benchmark_recall(scores, positives, DEFAULT_KS)
    i2t = clip_benchmark_recall(scores.T, positives.T, DEFAULT_KS)
    out = {f"t2i_recall@{k}": t2i[k] for k in DEFAULT_KS}
    out.update({f"i2t_recall@{k}": i2t[k] for k in DEFAULT_KS})
    out["mean_recall@1"] = (t2i[1] + i2t[1]) / 2
    return out


def save_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    name: str,
    meta: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Writes the state dict as safetensors (atomically), recording the architecture ``name``."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    tmp = target.with_name(target.name + ".tmp")
    save_file(
        state,
        str(tmp),
        metadata={CHECKPOINT_MODEL_KEY: name, **{k: str(v) for k, v in meta.items()}},
    )
    os.replace(tmp, target)
    return target


def preprocess_of(model: ClipModel) -> dict[str, Any]:
    """Input size, mean and std of the model's image tower."""
    pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = model.visual.image_size
    return {
        "size": int(size[0] if isinstance(size, (tuple, list)) else size),
        "mean": tuple(pp.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "std": tuple(pp.get("std", (0.26862954, 0.26130258, 0.27577711))),
    }


def finetune(
    cfg: FinetuneConfig,
    pairs: PairSet,
    *,
    on_step: Callable[[int, float, float], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> FinetuneResult:
    """Fine-tunes ``cfg.spec`` on ``pairs``; writes the best epoch to ``cfg.out``.

    ``on_start(total_steps, steps_per_epoch)`` is called once the data is ready.
    """
    from mmsearch.models.loader import load_model, resolve_device

    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model, tokenizer = load_model(cfg.spec, device)
    preprocess = preprocess_of(model)
    cache = ImageCache(preprocess["size"])
    cache.load(sorted(set(pairs.paths)))
    pairs = cache.drop_failed(pairs)
    train, val = split_by_image(pairs, cfg.val_fraction, cfg.seed)
    data = PairBatches(train, cache, tokenizer, preprocess, cfg.batch_size, cfg.seed)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return held_out_metrics(m, tokenizer, val, cache, preprocess, device)

    model.eval()
    with torch.inference_mode():
        baseline = evaluate(model)
    out = Path(cfg.out).resolve()
    meta = {"base": cfg.spec.key, "seed": cfg.seed, "config": json.dumps(asdict(cfg.fit))}

    def epoch_done(info: EpochResult) -> None:
        if info.best:
            save_checkpoint(
                model,
                out,
                cfg.spec.name,
                {**meta, "epoch": info.epoch, "metrics": json.dumps(info.metrics)},
            )
        if on_epoch is not None:
            on_epoch(info)

    if on_start is not None:
        on_start(
            (data.steps_per_epoch // cfg.fit.grad_accum) * cfg.fit.epochs,
            data.steps_per_epoch // cfg.fit.grad_accum,
        )
    result = fit(
        model, data, cfg.fit, device=device, evaluate=evaluate, on_step=on_step, on_epoch=epoch_done
    )
    return FinetuneResult(
        result,
        out,
        ModelSpec(cfg.spec.name, str(out)),
        baseline,
        len(train),
        len(val),
        pairs.dropped,
    )


def reinitialise_tower(
    spec: ModelSpec, tower: str, out: str | os.PathLike[str], seed: int = 0
) -> Path:
    """A checkpoint of ``spec`` whose ``tower`` ("text" or "image") is freshly initialised.

    Used to build deliberately weakened models for fine-tuning tests and benchmarks.
    """
    import open_clip

    from mmsearch.models.loader import load_model, quiet_open_clip, register_model_configs

    trained, _ = load_model(spec, "cpu")
    register_model_configs()
    torch.manual_seed(seed)
    with quiet_open_clip():  # "no pretrained weights loaded" is the point here
        fresh = open_clip.create_model(spec.name)
    state = trained.state_dict()
    fresh_state = fresh.state_dict()
    keep_visual = tower == "text"
    for key in state:
        if key.startswith("visual.") != keep_visual and key != "logit_scale":
            state[key] = fresh_state[key]
    fresh.load_state_dict(state)
    return save_checkpoint(fresh, out, spec.name, {"base": spec.key, "reinitialised": tower})
