"""Indexing on a Ray cluster: the pipeline's functions as a Ray Data pipeline.

``mmsearch index PATHS --ray [ADDRESS]`` / ``IndexOptions(ray=...)``. Discovery, the diff
against the table, the writes, the sweep and the ANN build stay on the driver and are
the single-machine functions (:func:`mmsearch.indexer.images.diff_images`,
:func:`~mmsearch.indexer.images.write_image_rows`, :func:`~mmsearch.indexer.images.sweep_images`);
Ray Data runs the middle::

    files to do ─ map_batches(decode, tasks) ─ map_batches(embed, actors: one model each,
    a GPU each where the cluster has GPUs) ─ iter_batches ─▶ driver: rows committed in
    groups of commit_every (the same LanceDB table and schema, the same failure report)

Text collections (CSV/TSV/JSONL/Parquet) go the same way without the decode step: the
driver reads, validates and diffs the file (:func:`~mmsearch.indexer.textindex.diff_texts`),
actors tokenise and embed batches of rows (a row that cannot be tokenised comes back
with the same reason as in a local run), and the driver writes and deletes.

A killed driver leaves the groups committed so far, like a killed local run: the next
run (Ray or not) sees them as unchanged and embeds only the rest.

Workers read the image files by path and the driver writes the table, so the image
folders must be at the same path on every node (a shared file system); the index
itself may be a local directory of the driver or an object-store URI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mmsearch.indexer.decode import DecodeOk, decode_chunk
from mmsearch.indexer.discover import WalkResult
from mmsearch.indexer.images import diff_images, sweep_images, write_image_rows
from mmsearch.indexer.options import IndexOptions, ProgressFn
from mmsearch.indexer.report import Failure, IndexReport
from mmsearch.indexer.sidecar import ImageSidecar
from mmsearch.indexer.textindex import (
    TEXT_BATCH_SIZE,
    PrepFailure,
    diff_texts,
    prepare_chunk,
    report_prep_failure,
    text_steps,
    write_text_rows,
)
from mmsearch.indexer.writer import BatchWriter

from mmsearch.storage.table import ItemStore

#: Images per decode task batch (each Ray task decodes one batch).
DECODE_BATCH = 32


def connect(address: str) -> Any:
    """``ray.init`` for ``address`` (``"local"``: a new local cluster; ``"auto"``: the
    cluster started by ``ray start`` on this machine; ``ray://host:10001``: a remote
    one), unless this process is already connected."""
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address in ("", "local") else address, log_to_driver=False)
    return ray


def decode_batch(batch: dict[str, np.ndarray], size: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Ray task: ``decode_chunk`` over one batch of paths; a bad file becomes a row with
    the same reason and exception class as in a local run, never a task failure."""
    n = len(batch["pos"])
    arrays = np.zeros((n, size, size, 3), np.uint8)
    sha, error, exc_class = [""] * n, [""] * n, [""] * n
    for result in decode_chunk(list(enumerate(str(p) for p in batch["path"])), size, max_pixels):
        i = result.index
        if isinstance(result, DecodeOk):
            arrays[i], sha[i] = result.array, result.sha256
        else:
            error[i], exc_class[i] = result.reason or "unreadable image", result.exc_class
    return {
        "pos": batch["pos"],
        "image": arrays,
        "sha256": np.asarray(sha, dtype=object),
        "error": np.asarray(error, dtype=object),
        "exc_class": np.asarray(exc_class, dtype=object),
    }


class EmbedActor:
    """Ray actor: one encoder, loaded once, embeds the decoded rows of each batch."""

    def __init__(
        self,
        spec: Any,
        device: str | None,
        encoder: Any | None = None,
        backend: str = "torch",
        quantize: str | None = None,
    ) -> None:
        if encoder is None:
            from mmsearch.models.backends import load_encoder

            encoder = load_encoder(spec, device=device, backend=backend, quantize=quantize)
        self.encoder = encoder

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray([not e for e in batch["error"]], bool)
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)
        if ok.any():
            vectors[ok] = self.encoder.encode_images(batch["image"][ok])
        out = {k: v for k, v in batch.items() if k != "image"}
        out["vector"] = vectors
        return out


class TextEmbedActor(EmbedActor):
    """Ray actor: one encoder, loaded once, tokenises and embeds batches of text rows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps = text_steps(self.encoder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["pos"])
        prepared = prepare_chunk(list(enumerate(str(t) for t in batch["text"])), self.steps.prepare)
        error, exc_class = [""] * n, [""] * n
        ok = [r for r in prepared if not isinstance(r, PrepFailure)]
        for r in prepared:
            if isinstance(r, PrepFailure):
                error[r.index], exc_class[r.index] = r.reason, r.exc_class
        vectors = np.zeros((n, self.encoder.dim), np.float32)
        if ok:
            vectors[[r.index for r in ok]] = self.steps.embed([r.value for r in ok])
        return {
            "pos": batch["pos"],
            "vector": vectors,
            "error": np.asarray(error, dtype=object),
            "exc_class": np.asarray(exc_class, dtype=object),
        }


def _actor_options(ray: Any, encoder: Any, opts: IndexOptions) -> dict[str, Any]:
    """map_batches arguments of the embedding actors: one model each, a GPU each where the
    cluster has GPUs, else up to ``opts.ray_actors`` actors on half the CPUs."""
    gpus = int(ray.cluster_resources().get("GPU", 0)) if opts.device != "cpu" else 0
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return {
        "fn_constructor_kwargs": {
            "spec": encoder.spec,
            "device": "cuda" if gpus else "cpu",
            "encoder": None if _loadable(encoder) else encoder,
            "backend": opts.backend,  # "auto" picks per actor: torch on a GPU, else ONNX
            "quantize": opts.quantize,
        },
        "concurrency": max(1, gpus) if gpus else max(1, min(cpus // 2, opts.ray_actors)),
        "num_gpus": 1 if gpus else 0,
    }


def index_texts_ray(
    path: Path,
    store: ItemStore,
    encoder: Any,
    opts: IndexOptions,
    report: IndexReport,
    next_id: int,
    progress: ProgressFn,
) -> int:
    """Index one text collection through Ray Data; same contract as the local ``index_texts``."""
    ray = connect(opts.ray or "local")
    diff = diff_texts(path, store, opts, report, progress)
    if diff.todo:
        step = max(opts.batch_size, TEXT_BATCH_SIZE)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        items = [{"pos": i, "text": row.text} for i, (_u, row, _s, _p) in enumerate(diff.todo)]
        ds = ray.data.from_items(
            items, override_num_blocks=max(1, min(len(items) // step, 4 * cpus))
        )
        ds = ds.map_batches(
            TextEmbedActor,
            batch_size=step,
            batch_format="numpy",
            **_actor_options(ray, encoder, opts),
        )
        writer = BatchWriter(store, opts.commit_every)
        for batch in ds.iter_batches(batch_size=opts.commit_every, batch_format="numpy"):
            done, vectors = [], []
            for pos, error, exc_class, vector in zip(
                batch["pos"], batch["error"], batch["exc_class"], batch["vector"], strict=True
            ):
                entry = diff.todo[int(pos)]
                if error:
                    report_prep_failure(diff, entry, str(error), str(exc_class), report, progress)
                    continue
                done.append(entry)
                vectors.append(vector)
            if done:
                next_id = write_text_rows(writer, diff, done, np.stack(vectors), next_id, report)
                progress("texts", len(done), None)
        writer.flush()
    report.deleted += store.delete_ids(diff.gone)
    return next_id


def index_images_ray(
    root: Path,
    walk: WalkResult,
    store: ItemStore,
    encoder: Any,
    opts: IndexOptions,
    report: IndexReport,
    next_id: int,
    progress: ProgressFn,
    sidecar: ImageSidecar | None,
) -> int:
    """Index one image root through Ray Data; same contract as the local ``index_images``.

    ``encoder`` is the driver's; the actors load their own copy of the same model
    (``encoder.spec``), or receive ``encoder`` itself when it is not a registered model.
    """
    ray = connect(opts.ray or "local")
    diff = diff_images(root, walk, store, report, progress)
    if not diff.todo:
        sweep_images(diff, walk, store, report)
        return next_id
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    items = [{"pos": i, "path": item.path} for i, (_u, item, _p) in enumerate(diff.todo)]
    ds = ray.data.from_items(
        items, override_num_blocks=max(1, min(len(items) // DECODE_BATCH, 4 * cpus))
    )
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"size": encoder.image_size, "max_pixels": opts.max_pixels},
        batch_size=DECODE_BATCH,
        batch_format="numpy",
    )
    ds = ds.map_batches(
        EmbedActor,
        batch_size=opts.batch_size,
        batch_format="numpy",
        **_actor_options(ray, encoder, opts),
    )
    writer = BatchWriter(store, opts.commit_every)
    for batch in ds.iter_batches(batch_size=opts.commit_every, batch_format="numpy"):
        done, vectors = [], []
        for pos, error, exc_class, sha, vector in zip(
            batch["pos"],
            batch["error"],
            batch["exc_class"],
            batch["sha256"],
            batch["vector"],
            strict=True,
        ):
            uri, item, prev = diff.todo[int(pos)]
            if error:
                report.failures.append(Failure(item.path, str(error), str(exc_class), "decode"))
                progress("images", 0, -1)
                progress("failed", 1, None)
                continue
            done.append((uri, item, str(sha), prev))
            vectors.append(vector)
        if done:
            next_id = write_image_rows(
                writer, diff, done, np.stack(vectors), next_id, report, sidecar
            )
            progress("images", len(done), None)
    writer.flush()
    sweep_images(diff, walk, store, report)
    return next_id


def _loadable(encoder: Any) -> bool:
    """Whether ``load_encoder(encoder.spec, backend=...)`` rebuilds this encoder on a worker
    (an ONNX Runtime session cannot be pickled; a registered model loads anywhere)."""
    from mmsearch.models.encoder import ClipEncoder
    from mmsearch.models.onnx_encoder import OnnxEncoder

    return isinstance(encoder, ClipEncoder | OnnxEncoder)
