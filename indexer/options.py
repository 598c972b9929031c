"""The options of an indexing run (the CLI's ``mmsearch index`` flags) and its progress callback."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmsearch.imageio import DEFAULT_MAX_PIXELS

__all__ = ["IndexOptions", "ProgressFn", "index_options"]

#: progress(stage, advance, more_total): stage is "scan", "images", "texts", "ann" or
#: "failed" (an item skipped); ``more_total`` announces additional work for the stage
#: (negative: less work, e.g. an image that failed to decode; None: no change).
ProgressFn = Callable[[str, int, int | None], None]


@dataclass
class IndexOptions:
    """Knobs of one indexing run (the CLI's options)."""

    #: Images per forward pass; None: 64 on a CPU, fitted to free memory on a GPU
    #: (:func:`mmsearch.models.batching.batch_size_for`). Texts go in batches of at least 256.
    batch_size: int | None = None
    workers: int | None = None
    device: str | None = None
    commit_every: int = 512
    decode_timeout_s: float = 30.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    text_column: str | None = None
    id_column: str | None = None
    #: A product feed's main image column (default: image_link, image, image_url, images).
    image_column: str | None = None
    #: Let feeds fetch images from private, loopback and link-local hosts (an internal CDN).
    allow_private_urls: bool = False
    #: torch | onnx | auto (ONNX Runtime on a CPU when installed); see mmsearch.models.backends.
    backend: str = "torch"
    #: "int8": dynamic int8 quantisation of the ONNX graphs (ONNX backend only).
    quantize: str | None = None
    build_index: bool = True
    #: Seconds to wait for another writer of the index to finish before failing.
    lock_wait_s: float = 0.0
    index_type: str = "auto"
    target_recall: float = 0.95
    #: Storage type of the ANN refine vectors: ``float32`` or ``float16`` (half the
    #: disk and page cache; recall@10 vs exact measured in benchmarks/RESULTS.md).
    refine_dtype: str = "float32"
    #: Run image decoding and embedding on Ray Data: ``"local"`` (a local cluster),
    #: ``"auto"`` (the cluster of ``ray start``) or a ``ray://host:port`` address;
    #: None runs on this machine. See ``mmsearch.indexer.ray_pipeline``.
    ray: str | None = None
    #: Most embedding actors on a CPU-only Ray cluster (GPU clusters: one per GPU).
    ray_actors: int = 4
    #: A CSV/JSONL/Parquet sidecar whose rows describe images: ``file_column`` holds the
    #: image path (relative to the sidecar's folder, or absolute); other columns become
    #: the image's metadata, and ``text_column`` (or caption/text/title) its text.
    image_metadata: str | os.PathLike[str] | None = None
    file_column: str = "file"
    #: Never reach for the model hub: weights must be shipped, local or cached.
    offline: bool = False
    #: Train the ANN index with faiss-gpu: None uses a GPU when FAISS sees one, False
    #: never, True when one is there (else the CPU).
    ann_gpu: bool | None = None
    #: Decode JPEGs on the GPU in batches (``torchvision.io.decode_jpeg(device="cuda")``):
    #: None when the encoder runs on CUDA, False never; without CUDA the CPU decodes.
    gpu_decode: bool | None = None
    #: Replaces :func:`mmsearch.indexer.decode.decode_file` in the workers (module-level, picklable).
    decode_fn: Callable[[str, int, int], Any] | None = None
    #: A list the run appends its model and table to at the end, instead of releasing
    #: them: a caller that exits without interpreter teardown (the CLI's ``os._exit``)
    #: skips their destruction (0.1-0.2 s each for a ViT-B-32 session and a LanceDB table).
    retain: list[Any] | None = None


def index_options(
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str | None = None,
    backend: str = "auto",
    quantize: str | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
    image_column: str | None = None,
    allow_private_urls: bool = False,
    metadata: str | os.PathLike[str] | None = None,
    file_column: str = "file",
    build_index: bool = True,
    index_type: str = "auto",
    refine_dtype: str = "float32",
    ray: str | None = None,
    gpu_decode: bool | None = None,
    offline: bool = False,
    lock_wait_s: float = 0.0,
) -> IndexOptions:
    """The options of an indexing run, named and defaulted as ``mmsearch index`` documents them.

    The CLI's ``index`` command, :func:`mmsearch.index` and the run after a re-embedding
    all build their :class:`IndexOptions` here. ``metadata`` is the image sidecar
    (``--metadata``); ``image_column`` makes a text collection a product feed whose
    images are fetched (``allow_private_urls`` lets it reach internal hosts);
    ``build_index=False`` is ``--no-ann``; ``backend`` ``auto`` runs
    ONNX Runtime on a CPU when it is installed; ``lock_wait_s`` waits that long for
    another writer of the index.
    """
    return IndexOptions(
        batch_size=batch_size,
        workers=workers,
        device=device,
        backend=backend,
        quantize=quantize,
        text_column=text_column,
        id_column=id_column,
        image_column=image_column,
        allow_private_urls=allow_private_urls,
        image_metadata=metadata,
        file_column=file_column,
        build_index=build_index,
        index_type=index_type,
        refine_dtype=refine_dtype,
        ray=ray,
        gpu_decode=gpu_decode,
        offline=offline,
        lock_wait_s=lock_wait_s,
    )
