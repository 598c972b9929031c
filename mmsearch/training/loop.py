"""The one contrastive training loop: fine-tuning any open_clip model and training mmsearch-tiny.

:func:`fit` runs epochs of optimizer steps over batches a :class:`TrainData` yields:
AdamW (no weight decay on norms, biases, embeddings and the logit scale), linear
warmup then cosine decay, gradient accumulation, gradient clipping, bf16 autocast on
CUDA, tower locking (LiT: ``lock="image"``), a held-out evaluation after each epoch,
early stopping on a monitored metric and a checkpoint callback. The loss is CLIP's
symmetric cross-entropy with multi-positive targets: every pair the batch's match
matrix marks is a positive (identical captions of different images are not false
negatives); with one positive per row it is exactly open_clip's ``ClipLoss``.

Gradient accumulation sums the gradients of micro-batches, each contrasted within
itself: the negatives of a step are those of its micro-batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from mmsearch.models.loader import ClipModel

LOCKS = ("none", "image", "text")


@dataclass(frozen=True)
class Batch:
    """One micro-batch: normalised pixels (N, 3, S, S), token ids (N, L), match (N, N) or None."""

    pixels: torch.Tensor
    tokens: torch.Tensor
    match: torch.Tensor | None = None


class TrainData(Protocol):
    """Where batches come from: ``steps_per_epoch`` micro-batches per epoch."""

    steps_per_epoch: int

    def batches(self, epoch: int) -> Iterator[Batch]: ...


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of a training run (``steps_per_epoch`` counts micro-batches)."""

    epochs: int = 5
    lr: float = 1e-5
    min_lr: float = 0.0
    warmup: int = 50
    weight_decay: float = 0.1
    grad_accum: int = 1
    clip_grad: float = 1.0
    lock: str = "none"
    precision: str = "auto"
    patience: int = 0
    min_delta: float = 1e-4
    monitor: str = "mean_recall@1"
    max_logit_scale: float = 100.0
    stop_after: int = (
        0  # end after this many optimizer steps (the schedule still spans every epoch)
    )


@dataclass
class EpochResult:
    """Figures of one epoch: mean train loss, held-out metrics, whether it was the best so far."""

    epoch: int
    step: int
    loss: float
    metrics: dict[str, float]
    seconds: float
    best: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "loss": round(self.loss, 5),
            "metrics": self.metrics,
            "seconds": round(self.seconds, 2),
            "best": self.best,
        }


@dataclass
class FitResult:
    """The history of a run, the best epoch and whether early stopping ended it."""

    history: list[EpochResult] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False


def lr_at(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def multipositive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    match: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE whose targets spread evenly over all matching pairs."""
    logits = logit_scale * image_features @ text_features.T
    t_i2t = match / match.sum(dim=1, keepdim=True)
    t_t2i = (match / match.sum(dim=0, keepdim=True)).T
    loss_i = -(t_i2t * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(t_t2i * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (loss_i + loss_t) / 2


def same_text_match(texts: list[str]) -> torch.Tensor:
    """``M[i, j] = 1`` when pairs ``i`` and ``j`` have the same text (the diagonal always)."""
    arr = np.asarray(texts, dtype=object)
    return torch.from_numpy((arr[:, None] == arr[None, :]).astype(np.float32))


def lock_tower(model: torch.nn.Module, lock: str) -> None:
    """Freezes the image tower (``"image"``, LiT), the text tower (``"text"``) or nothing."""
    if lock not in LOCKS:
        raise ValueError(f"lock must be one of {', '.join(LOCKS)}")
    model.requires_grad_(True)
    if lock == "image":
        model.visual.requires_grad_(False)
    elif lock == "text":
        for name, param in model.named_parameters():
            if not name.startswith("visual.") and name != "logit_scale":
                param.requires_grad_(False)


def freeze_locked_modules(model: torch.nn.Module, lock: str) -> None:
    """Puts the locked tower in eval mode, so its batch-norm statistics stay as loaded."""
    for name, child in model.named_children():
        if (lock == "image" and name == "visual") or (lock == "text" and name != "visual"):
            child.eval()


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on norms, biases, embeddings and the logit scale."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(
            p
        )
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.startswith("cuda"))
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(
        device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16
    )


def fit(
    model: ClipModel,
    data: TrainData,
    cfg: FitConfig,
    *,
    device: str = "cpu",
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> FitResult:
    """Trains ``model`` in place; returns the per-epoch history.

    ``evaluate(model)`` (called in eval mode after each epoch) returns held-out metrics;
    ``cfg.monitor`` among them drives early stopping (``cfg.patience`` epochs without an
    improvement of ``cfg.min_delta``; 0 = never stop early) and :attr:`EpochResult.best`.
    ``on_step(step, loss, lr)`` follows every optimizer step; ``on_epoch`` every epoch
    (save checkpoints there).
    """
    if cfg.grad_accum < 1 or data.steps_per_epoch < cfg.grad_accum:
        raise ValueError("grad_accum must be between 1 and the micro-batches of an epoch")
    lock_tower(model, cfg.lock)
    model.to(device).train()
    freeze_locked_modules(model, cfg.lock)
    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    steps_per_epoch = data.steps_per_epoch // cfg.grad_accum
    total = steps_per_epoch * cfg.epochs
    result = FitResult()
    best_value = -math.inf
    since_best = 0
    step = 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        losses: list[float] = []
        micro = 0
        opt.zero_grad(set_to_none=True)
        for batch in data.batches(epoch):
            with _autocast(device, cfg.precision):
                imf, txf, scale = model(batch.pixels.to(device), batch.tokens.to(device))[:3]
            match = batch.match if batch.match is not None else torch.eye(len(batch.tokens))
            loss = multipositive_loss(imf.float(), txf.float(), scale.float(), match.to(device))
            (loss / cfg.grad_accum).backward()
            losses.append(float(loss.detach()))
            micro += 1
            if micro % cfg.grad_accum:
                continue
            lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup, total)
            for group in opt.param_groups:
                group["lr"] = lr
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(cfg.max_logit_scale))
            step += 1
            if on_step is not None:
                on_step(step, float(np.mean(losses[-cfg.grad_accum :])), lr)
            if micro >= steps_per_epoch * cfg.grad_accum or _stopped(cfg, step):
                break
        metrics: dict[str, float] = {}
        if evaluate is not None:
            model.eval()
            with torch.inference_mode():
                metrics = evaluate(model)
            model.train()
            freeze_locked_modules(model, cfg.lock)
        value = metrics.get(cfg.monitor, -float(np.mean(losses)) if losses else 0.0)
        improved = value > best_value + cfg.min_delta
        if improved:
            best_value, since_best, result.best_epoch = value, 0, epoch
        else:
            since_best += 1
        info = EpochResult(
            epoch,
            step,
            float(np.mean(losses)) if losses else math.nan,
            metrics,
            time.perf_counter() - started,
            improved,
        )
        result.history.append(info)
        if on_epoch is not None:
            on_epoch(info)
        if _stopped(cfg, step):
            break
        if cfg.patience and since_best >= cfg.patience:
            result.stopped_early = epoch < cfg.epochs
            break
    return result


def _stopped(cfg: FitConfig, step: int) -> bool:
    return bool(cfg.stop_after) and step >= cfg.stop_after


def normalise_pixels(images: npt.NDArray[np.uint8], mean: Any, std: Any) -> torch.Tensor:
    """uint8 (N, S, S, 3) → float (N, 3, S, S), scaled to [0, 1] and mean/std normalised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
