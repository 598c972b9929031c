"""(image, text) pairs for fine-tuning: read, split, decode and batch.

Pairs come from a catalog file (CSV/TSV/JSONL/Parquet with an image path column and a
text column, paths relative to the file) or from an index (its images that carry a
text, e.g. indexed with ``--metadata``). The held-out split is drawn by *image*, so no
image is in both halves. Images decode with the same safe loader and ``fit_square``
as indexing; an image that cannot be decoded is dropped before training and reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from mmsearch.errors import TextCollectionError
from mmsearch.training.loop import Batch, normalise_pixels, same_text_match
from mmsearch.uris import uri_to_path

IMAGE_COLUMNS = ("file", "image", "path", "filepath", "image_path", "filename")


@dataclass
class PairSet:
    """Aligned image paths and texts, plus the rows dropped while reading them."""

    paths: list[str]
    texts: list[str]
    dropped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, rows: Sequence[int]) -> PairSet:
        return PairSet([self.paths[i] for i in rows], [self.texts[i] for i in rows])


def read_pairs(
    path: str | os.PathLike[str], *, image_column: str | None = None, text_column: str | None = None
) -> PairSet:
    """Pairs of a catalog file; rows with no text or a missing image file are dropped and listed."""
    from mmsearch.indexer.sidecar import load_image_metadata

    source = Path(path)
    column = image_column or _guess_image_column(source)
    rows = load_image_metadata(source, column, text_column)
    pairs = PairSet([], [])
    for image, meta in rows.by_path.items():
        text = meta.get("_text")
        if not text or not str(text).strip():
            pairs.dropped.append(f"{image}: no text")
        elif not os.path.isfile(image):
            pairs.dropped.append(f"{image}: file not found")
        else:
            pairs.paths.append(image)
            pairs.texts.append(str(text))
    if not pairs.paths:
        raise TextCollectionError(f"{source}: no usable (image, text) pairs")
    return pairs


def _guess_image_column(source: Path) -> str:
    import pandas as pd

    suffix = source.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            columns = list(pd.read_json(source, lines=True, nrows=1).columns)
        elif suffix in (".csv", ".tsv"):
            columns = list(
                pd.read_csv(source, sep="\t" if suffix == ".tsv" else ",", nrows=1).columns
            )
        else:
            import pyarrow.parquet as pq

            columns = pq.read_schema(source).names
    except (OSError, ValueError) as exc:
        raise TextCollectionError(f"cannot read {source}: {exc}") from exc
    for name in IMAGE_COLUMNS:
        if name in columns:
            return name
    raise TextCollectionError(
        f"{source}: no image column among {', '.join(map(str, columns))}; set --image-column"
    )


def pairs_from_index(index_dir: str | os.PathLike[str]) -> PairSet:
    """The indexed images that carry a text (``--metadata`` captions), as pairs."""
    from mmsearch.storage.table import ItemStore

    table = ItemStore.open(index_dir).scan(["uri", "text"], "kind = 'image' AND text IS NOT NULL")
    pairs = PairSet([], [])
    for uri, text in zip(
        table.column("uri").to_pylist(), table.column("text").to_pylist(), strict=True
    ):
        if text and text.strip():
            pairs.paths.append(uri_to_path(uri))
            pairs.texts.append(text)
    if not pairs.paths:
        raise TextCollectionError(
            f"index {index_dir} has no images with a text; index them with --metadata"
        )
    return pairs


def split_by_image(pairs: PairSet, val_fraction: float, seed: int) -> tuple[PairSet, PairSet]:
    """(train, held-out): a seeded split of the distinct images, each keeping all its pairs."""
    images = sorted(set(pairs.paths))
    if not 0 < val_fraction < 1 or len(images) < 4:
        raise TextCollectionError("need at least 4 images and 0 < --val-fraction < 1")
    rng = np.random.default_rng(seed)
    n_val = max(2, int(round(len(images) * val_fraction)))
    held = {images[int(i)] for i in rng.permutation(len(images))[:n_val]}
    train = [i for i, p in enumerate(pairs.paths) if p not in held]
    val = [i for i, p in enumerate(pairs.paths) if p in held]
    return pairs.subset(train), pairs.subset(val)


class ImageCache:
    """Decoded, ``fit_square``d uint8 images by path (each file decoded once)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._arrays: dict[str, npt.NDArray[np.uint8]] = {}
        self.failed: dict[str, str] = {}

    def load(self, paths: Sequence[str]) -> None:
        from mmsearch.errors import ImageDecodeError
        from mmsearch.imageio import load_image
        from mmsearch.models.preprocess import fit_square

        for path in paths:
            if path in self._arrays or path in self.failed:
                continue
            try:
                self._arrays[path] = fit_square(load_image(path, timeout_s=30.0), self.size)
            except ImageDecodeError as exc:
                self.failed[path] = exc.reason

    def stack(self, paths: Sequence[str]) -> npt.NDArray[np.uint8]:
        return np.stack([self._arrays[p] for p in paths])

    def drop_failed(self, pairs: PairSet) -> PairSet:
        keep = [i for i, p in enumerate(pairs.paths) if p not in self.failed]
        out = pairs.subset(keep)
        out.dropped = pairs.dropped + [
            f"{p}: {r}" for p, r in self.failed.items() if p in set(pairs.paths)
        ]
        return out


class PairBatches:
    """Seeded, shuffled micro-batches of pairs (the last incomplete batch is dropped)."""

    def __init__(
        self,
        pairs: PairSet,
        cache: ImageCache,
        tokenizer: Any,
        preprocess: dict[str, Any],
        batch_size: int,
        seed: int,
    ) -> None:
        if len(pairs) < 2:
            raise TextCollectionError("need at least 2 training pairs")
        self.pairs = pairs
        self.cache = cache
        self.tokenizer = tokenizer
        self.mean, self.std = preprocess["mean"], preprocess["std"]
        self.batch_size = min(batch_size, len(pairs))
        self.seed = seed
        self.steps_per_epoch = len(pairs) // self.batch_size

    def batches(self, epoch: int) -> Iterator[Batch]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        for start in range(0, self.steps_per_epoch * self.batch_size, self.batch_size):
            rows = order[start : start + self.batch_size]
            paths = [self.pairs.paths[i] for i in rows]
            texts = [self.pairs.texts[i] for i in rows]
            match = same_text_match(texts)
            same_image = np.asarray(paths, dtype=object)
            match = torch.maximum(
                match,
                torch.from_numpy((same_image[:, None] == same_image[None, :]).astype(np.float32)),
            )
            pixels = normalise_pixels(self.cache.stack(paths), self.mean, self.std)
            yield Batch(pixels, self.tokenizer(texts), match)
