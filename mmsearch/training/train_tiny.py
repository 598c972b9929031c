"""Contrastive training of ``mmsearch-tiny`` on the synthetic catalog.

Images are rendered in memory with :func:`mmsearch.datasets.synthetic.render_item`
and go through the same :func:`mmsearch.models.preprocess.fit_square` and
mean/std normalisation as inference. Captions are mostly full
(``a red circle on the left``) with a share of partial forms (``red circle``,
``a star on the left``, ``blue``) so that partial queries work too.

Partial captions (and repeated full captions) match several images in a batch,
so the loss is CLIP's symmetric cross-entropy with *multi-positive* soft targets:
every text whose constraints an image satisfies is a positive of that image.
``--loss clip`` uses open_clip's ``ClipLoss`` (one positive per row) instead.

    python -m mmsearch.training.train_tiny --out mmsearch/models/weights/mmsearch-tiny.safetensors \\
        --steps 1200 --seed 0

The optimisation itself is :func:`mmsearch.training.loop.fit`, the loop that
``mmsearch finetune`` runs: an "epoch" here is ``--eval-every`` steps of freshly
rendered batches, followed by the in-memory held-out check.

This is a tool: it logs progress to stderr.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image

from mmsearch.datasets.synthetic import (
    COLOURS,
    POSITIONS,
    SHAPES,
    caption_for,
    pair_caption,
    random_pair,
    render_item,
    render_pair,
)
from mmsearch.models.preprocess import fit_square
from mmsearch.training.finetune import save_checkpoint
from mmsearch.training.loop import Batch, EpochResult, FitConfig, fit, multipositive_loss
from mmsearch.training.loop import lr_at as loop_lr_at

__all__ = ["TrainConfig", "lr_at", "match_matrix", "multipositive_loss", "sample_batch", "train"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "models" / "configs"

Attrs = tuple[str | None, str | None, str | None]  # (colour, shape, position); None = unconstrained
# An image's label: its full caption and the (colour, shape, position) of each object
# it shows (two-object scenes give their objects position None).
ImageLabel = tuple[str, tuple[Attrs, ...]]
# A text's label: the attributes it constrains, or a two-object caption (matched exactly).
TextLabel = Attrs | str


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    steps: int = 1200
    batch_size: int = 256
    lr: float = 2e-3
    min_lr: float = 2e-5
    warmup: int = 80
    weight_decay: float = 0.05
    partial_frac: float = 0.35
    jpeg_frac: float = 0.3
    seed: int = 0
    loss: str = "multipos"
    model: str = "mmsearch-tiny"
    threads: int = 1
    init_logit_scale: float = 30.0
    config_dir: str = ""
    pair_frac: float = 0.0
    augment_frac: float = 0.0
    init: str = ""  # start from these safetensors weights (e.g. the shipped ones)
    stop_after: int = 0  # end after this many steps (the schedule still spans ``steps``)
    pair_family: int = 0  # > 1: each two-object scene comes with pair_family - 1 near misses
    shape_frac: float = 0.5  # share of the near misses' one-attribute changes that are shapes


def partial_caption(
    rng: np.random.Generator, colour: str, shape: str, position: str
) -> tuple[str, Attrs]:
    """A partial description of an item and the attributes it constrains."""
    kind = int(rng.integers(0, 9))
    if kind == 0:
        return f"{colour} {shape}", (colour, shape, None)
    if kind == 1:
        return f"a {colour} {shape}", (colour, shape, None)
    if kind == 2:
        return f"{shape} on the {position}", (None, shape, position)
    if kind == 3:
        return f"a {shape} on the {position}", (None, shape, position)
    if kind == 4:
        return f"{colour} {shape} on the {position}", (colour, shape, position)
    if kind == 5:
        return f"{colour} on the {position}", (colour, None, position)
    if kind == 6:
        return colour, (colour, None, None)
    if kind == 7:
        return (shape if rng.random() < 0.5 else f"a {shape}"), (None, shape, None)
    return f"{colour} {shape} {position}", (colour, shape, position)


def _render(
    rng: np.random.Generator, size: int, cfg: TrainConfig
) -> tuple[Image.Image, ImageLabel, str, TextLabel]:
    """One random scene (single or two-object, plain or augmented) and a caption of it."""
    from mmsearch.training.augment import augmented_pair, augmented_single

    augment = rng.random() < cfg.augment_frac
    if rng.random() < cfg.pair_frac:
        left, right = random_pair(rng)
        img = (augmented_pair if augment else render_pair)(rng, left, right, size)
        return _pair_item(img, left, right)
    colour = COLOURS[int(rng.integers(0, len(COLOURS)))]
    shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
    position = POSITIONS[int(rng.integers(0, len(POSITIONS)))]
    img = (augmented_single if augment else render_item)(rng, colour, shape, position, size)
    full = caption_for(colour, shape, position)
    label: ImageLabel = (full, ((colour, shape, position),))
    if rng.random() < cfg.partial_frac:
        text, attrs = partial_caption(rng, colour, shape, position)
        return img, label, text, attrs
    return img, label, full, (colour, shape, position)


def _pair_item(
    img: Image.Image, left: tuple[str, str], right: tuple[str, str]
) -> tuple[Image.Image, ImageLabel, str, TextLabel]:
    caption = pair_caption(left, right)
    objects: tuple[Attrs, ...] = ((*left, None), (*right, None))
    return img, (caption, objects), caption, caption


def _near_miss_items(
    rng: np.random.Generator, caption: str, k: int, cfg: TrainConfig
) -> list[tuple[Image.Image, ImageLabel, str, TextLabel]]:
    """``k`` two-object scenes one hard change away from ``caption``'s scene, each rendered.

    In the same batch they are the contrastive loss's hard negatives: the scene's left/
    right swap and scenes with one shape or colour changed
    (:func:`mmsearch.training.itm_data.near_misses`).
    """
    from mmsearch.training.augment import augmented_pair
    from mmsearch.training.itm_data import Pair, near_misses

    left, right = caption.removeprefix("a ").split(" to the left of a ")
    base = Pair(tuple(left.split()), tuple(right.split()))  # type: ignore[arg-type]
    out = []
    for scene in near_misses(rng, base, k, cfg.shape_frac):
        assert isinstance(scene, Pair)
        size = 128 if rng.random() < 0.75 else int(rng.choice((96, 160, 224)))
        augment = rng.random() < cfg.augment_frac
        img = (augmented_pair if augment else render_pair)(rng, scene.left, scene.right, size)
        out.append(_pair_item(img, scene.left, scene.right))
    return out


def sample_batch(
    rng: np.random.Generator, n: int, image_size: int, cfg: TrainConfig
) -> tuple[npt.NDArray[np.uint8], list[str], list[ImageLabel], list[TextLabel]]:
    """Renders ``n`` random scenes; returns uint8 images, texts, image and text labels."""
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    texts: list[str] = []
    img_labels: list[ImageLabel] = []
    txt_labels: list[TextLabel] = []
    pending: list[tuple[Image.Image, ImageLabel, str, TextLabel]] = []
    for i in range(n):
        if pending:  # a near miss of an earlier scene of this batch
            img, img_label, text, txt_label = pending.pop(0)
        else:
            render_size = 128 if rng.random() < 0.75 else int(rng.choice((96, 160, 224)))
            img, img_label, text, txt_label = _render(rng, render_size, cfg)
            if cfg.pair_family > 1 and isinstance(txt_label, str):
                pending = _near_miss_items(rng, txt_label, min(cfg.pair_family - 1, n - i - 1), cfg)
        if rng.random() < cfg.jpeg_frac:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=int(rng.integers(60, 96)))
            buf.seek(0)
            img = Image.open(buf).convert("RGB")
        images[i] = fit_square(img, image_size)
        img_labels.append(img_label)
        texts.append(text)
        txt_labels.append(txt_label)
    return images, texts, img_labels, txt_labels


def _satisfies(image: ImageLabel, text: TextLabel) -> bool:
    if isinstance(text, str):
        return image[0] == text
    return any(
        all(want is None or want == have for want, have in zip(text, obj, strict=True))
        for obj in image[1]
    )


def match_matrix(img_labels: list[ImageLabel], txt_labels: list[TextLabel]) -> torch.Tensor:
    """``M[i, j] = 1`` when image ``i`` satisfies every constraint of text ``j``.

    A single-object text matches a two-object image when one of its objects has the
    named colour/shape (texts naming a position match single-object images only); a
    two-object caption matches exactly that scene.
    """
    ok = np.array([[_satisfies(im, tx) for tx in txt_labels] for im in img_labels], dtype=bool)
    return torch.from_numpy(ok.astype(np.float32))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to ``min_lr``."""
    return loop_lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup, cfg.steps)


def _normalise(
    images: npt.NDArray[np.uint8], mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std


def _quick_eval(model, tokenizer, mean, std, image_size: int) -> tuple[float, float]:  # noqa: ANN001
    """Caption R@1 / R@5 on a fixed in-memory held-out set (seed 999, 480 images)."""
    rng = np.random.default_rng(999)
    items = [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS] * 3
    images = np.stack([fit_square(render_item(rng, *it, 128), image_size) for it in items])
    captions = sorted({caption_for(*it) for it in items})
    labels = np.array([caption_for(*it) for it in items])
    model.eval()
    with torch.inference_mode():
        imf = F.normalize(model.encode_image(_normalise(images, mean, std)), dim=-1)
        txf = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    model.train()
    order = torch.argsort(txf @ imf.T, dim=1, descending=True)[:, :5].numpy()
    hits = labels[order] == np.array(captions)[:, None]
    return float(hits[:, 0].mean()), float(hits.any(axis=1).mean())


def save_weights(model: torch.nn.Module, path: Path, meta: dict[str, str]) -> None:
    """Stores the state dict as float16 safetensors (the loader upcasts to fp32)."""
    save_checkpoint(model, path, meta.get("model", "mmsearch-tiny"), meta, dtype=torch.float16)


class SyntheticBatches:
    """``steps_per_epoch`` batches of freshly rendered items per epoch (one seeded stream)."""

    def __init__(
        self, cfg: TrainConfig, steps_per_epoch: int, image_size: int, tokenizer, mean, std
    ) -> None:  # noqa: ANN001
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.mean, self.std = mean, std
        self.rng = np.random.default_rng(cfg.seed)

    def batches(self, epoch: int):  # noqa: ANN201
        while True:
            images, texts, img_attrs, txt_attrs = sample_batch(
                self.rng, self.cfg.batch_size, self.image_size, self.cfg
            )
            match = None if self.cfg.loss == "clip" else match_matrix(img_attrs, txt_attrs)
            yield Batch(_normalise(images, self.mean, self.std), self.tokenizer(texts), match)


def train(
    cfg: TrainConfig, out: Path, *, eval_every: int = 100, save_every: int = 200
) -> dict[str, float]:
    """Runs one seeded training run and writes the weights to ``out``.

    The run is :func:`mmsearch.training.loop.fit` over ``ceil(steps / eval_every)``
    epochs of ``eval_every`` steps; weights are saved after every epoch that ends on a
    multiple of ``save_every`` steps, and after the last.
    """
    import open_clip

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    open_clip.add_model_config(CONFIG_DIR)
    if cfg.config_dir:  # experiments with other architectures
        open_clip.add_model_config(Path(cfg.config_dir))
    model = open_clip.create_model(cfg.model)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    if cfg.init:
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(cfg.init).items()})
    tokenizer = open_clip.get_tokenizer(cfg.model)
    pp = model.visual.preprocess_cfg
    image_size = int(pp["size"][0] if isinstance(pp["size"], tuple) else pp["size"])
    mean = torch.tensor(pp["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pp["std"]).view(1, 3, 1, 1)
    epochs = max(1, math.ceil(cfg.steps / eval_every))
    fit_cfg = FitConfig(
        epochs=epochs,
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        warmup=cfg.warmup,
        weight_decay=cfg.weight_decay,
        monitor="r1",
        stop_after=cfg.stop_after,
    )
    data = SyntheticBatches(cfg, eval_every, image_size, tokenizer, mean, std)
    meta = {"model": cfg.model, "seed": str(cfg.seed), "steps": str(cfg.steps)}
    start = time.time()
    last: dict[str, float] = {}

    def on_step(step: int, loss: float, lr: float) -> None:
        if (step - 1) % 20 == 0:
            print(
                f"step {step - 1} loss {loss:.4f} lr {lr:.2e} scale {model.logit_scale.exp().item():.1f} "
                f"t {time.time() - start:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def on_epoch(info: EpochResult) -> None:
        nonlocal last
        r1, r5 = info.metrics["r1"], info.metrics["r5"]
        last = {"step": info.step, "r1": r1, "r5": r5, "seconds": time.time() - start}
        print(f"eval step {info.step} R@1 {r1:.3f} R@5 {r5:.3f}", file=sys.stderr, flush=True)
        if info.step % save_every == 0 or info.epoch == epochs or info.step == cfg.stop_after:
            save_weights(model, out, {**meta, "trained_steps": str(info.step)})

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        r1, r5 = _quick_eval(m, tokenizer, mean, std, image_size)
        return {"r1": r1, "r5": r5}

    fit(model, data, fit_cfg, evaluate=evaluate, on_step=on_step, on_epoch=on_epoch)
    last["seconds"] = time.time() - start
    return last


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train mmsearch-tiny on synthetic shapes.")
    ap.add_argument("--out", type=Path, required=True)
    defaults = TrainConfig()
    for name, value in vars(defaults).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--save-every", type=int, default=200)
    args = ap.parse_args(argv)
    cfg = TrainConfig(**{k: getattr(args, k) for k in vars(defaults)})
    print(f"config {cfg}", file=sys.stderr, flush=True)
    result = train(cfg, args.out, eval_every=args.eval_every, save_every=args.save_every)
    print(f"done {result}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
