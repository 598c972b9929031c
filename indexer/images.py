"""The image half of an indexing run: diff an image folder against the table, decode in
worker processes, embed in batches, write, sweep (mark and sweep, as rclip does).

:func:`start_image_workers` starts what the first batch needs (the decode workers and
the model's image session, on a thread) as early as a run can: for a new index, before
the table exists and ``import lancedb`` runs, so that the three overlap. The first
batch is small (:data:`FIRST_BATCH`): the model starts as soon as one decode chunk is
ready instead of waiting for a whole batch, and later batches decode behind it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mmsearch.indexer.decode import DecodeFailure, DecodeOk, DecodePool, default_decode_workers
from mmsearch.indexer.discover import WalkResult, path_to_uri
from mmsearch.indexer.gpudecode import gpu_decode_enabled, read_jpeg_or_decode
from mmsearch.indexer.options import IndexOptions, ProgressFn
from mmsearch.indexer.report import Failure, IndexReport
from mmsearch.indexer.sidecar import TEXT_KEY, ImageSidecar
from mmsearch.indexer.writer import BatchWriter

from mmsearch.models.base import Encoder
from mmsearch.storage.metadata_keys import FILE_KEY
from mmsearch.storage.schema import make_rows
from mmsearch.storage.table import ItemStore, StoredState

#: Images in a run's first batch: one decode chunk, so that the model starts as soon as
#: the first chunk is decoded (later batches are ``IndexOptions.batch_size``).
FIRST_BATCH = 16


def start_image_workers(encoder: Encoder, opts: IndexOptions) -> DecodePool:
    """A started decode pool for ``encoder`` (its workers spawning now), and the model's
    image session loading on a thread (when the encoder loads sessions lazily)."""
    device = str(getattr(encoder, "device", "cpu"))
    decode_fn = opts.decode_fn
    if decode_fn is None and gpu_decode_enabled(opts.gpu_decode, device):
        decode_fn = read_jpeg_or_decode  # workers read and check JPEGs; the GPU decodes them
    extra = {"decode": decode_fn} if decode_fn is not None else {}
    pool = DecodePool(
        encoder.image_size,
        workers=opts.workers or default_decode_workers(device=device),
        timeout_s=opts.decode_timeout_s,
        max_pixels=opts.max_pixels,
        **extra,
    )
    pool.start()
    warm_up = getattr(encoder, "warm_up", None)
    if warm_up is not None:  # the model's session loads while the workers start and decode
        threading.Thread(
            target=warm_up, args=("image",), name="mmsearch-warm-up", daemon=True
        ).start()
    return pool

def _relative(path: str, root: Path) -> str:
    """``path`` relative to the indexed folder, with ``/`` separators (the ``file`` key)."""
    return Path(os.path.relpath(path, root)).as_posix()


@dataclass
class ImageDiff:
    """One image root against the table: what to embed, what was seen (mark and sweep)."""

    root: Path
    source: str
    stored: dict[str, StoredState]
    seen: set[str]
    todo: list[tuple[str, Any, StoredState | None]]  # (uri, FileItem, previous state)


def diff_images(
    root: Path, walk: WalkResult, store: ItemStore, report: IndexReport, progress: ProgressFn
) -> ImageDiff:
    """Walk problems into the report; unchanged files (mtime, size) marked seen; the rest to do."""
    root_abs = Path(os.path.abspath(root))
    source = path_to_uri(str(root_abs))
    for problem in walk.problems:
        report.failures.append(Failure(problem.path, problem.reason, problem.kind, "walk"))
    stored = store.state_by_uri(source)
    diff = ImageDiff(root_abs, source, stored, set(), [])
    for item in walk.items:
        uri = path_to_uri(item.path)
        prev = stored.get(uri)
        if prev is not None and prev.mtime_ns == item.mtime_ns and prev.size == item.size:
            diff.seen.add(uri)
            report.unchanged += 1
        else:
            diff.todo.append((uri, item, prev))
    progress("scan", len(walk.items), len(walk.items))
    progress("images", 0, len(diff.todo))
    return diff


def write_image_rows(
    writer: BatchWriter,
    diff: ImageDiff,
    done: Sequence[tuple[str, Any, str, StoredState | None]],
    vectors: np.ndarray,
    next_id: int,
    report: IndexReport,
    sidecar: ImageSidecar | None,
) -> int:
    """Rows of embedded images ``(uri, FileItem, sha256, previous state)`` to the writer:
    a changed file keeps its id, a new one takes the next; returns the next free id."""
    ids: list[int] = []
    for _uri, _item, _sha, prev in done:
        if prev is not None:
            ids.append(prev.id)
        else:
            ids.append(next_id)
            next_id += 1
    extra = [sidecar.metadata_for(item.path) if sidecar else {} for _u, item, _s, _p in done]
    writer.add(
        make_rows(
            ids=ids,
            uris=[uri for uri, *_ in done],
            kind="image",
            texts=[e.get(TEXT_KEY) for e in extra],
            source=diff.source,
            mtime_ns=[item.mtime_ns for _u, item, _s, _p in done],
            sizes=[item.size for _u, item, _s, _p in done],
            sha256=[sha for _u, _i, sha, _p in done],
            metadata=[
                {
                    FILE_KEY: _relative(d[1].path, diff.root),
                    **{k: v for k, v in e.items() if k != TEXT_KEY},
                }
                for d, e in zip(done, extra, strict=True)
            ],
            vectors=vectors,
            schema=writer.store.table.schema,
        )
    )
    for uri, _item, _sha, prev in done:
        diff.seen.add(uri)
        if prev is None:
            report.added += 1
        else:
            report.updated += 1
    report.embedded += len(ids)
    return next_id


def sweep_images(diff: ImageDiff, walk: WalkResult, store: ItemStore, report: IndexReport) -> None:
    """Delete rows of files gone from a completely walked root (never on doubt)."""
    # An unmounted mount point looks like an empty folder: never read "no files at all"
    # as "every file deleted".
    if walk.complete and not walk.items and diff.stored:
        report.failures.append(
            Failure(
                str(diff.root),
                "folder is empty but the index has files from it; is it unmounted?",
                "EmptyRoot",
                "walk",
            )
        )
        report.sweep_aborted.append(str(diff.root))
    elif walk.complete:
        gone = [state.id for uri, state in diff.stored.items() if uri not in diff.seen]
        report.deleted += store.delete_ids(gone)
    else:
        report.sweep_aborted.append(str(diff.root))


def index_images(
    root: Path,
    walk: WalkResult,
    store: ItemStore,
    encoder: Encoder,
    opts: IndexOptions,
    report: IndexReport,
    next_id: int,
    progress: ProgressFn,
    sidecar: ImageSidecar | None,
    pool: DecodePool | None = None,
) -> int:
    """Indexes one image root; ``pool`` (from :func:`start_image_workers`) when the run
    started its workers early, else they start here when there is anything to embed.
    Returns the next free id."""
    diff = diff_images(root, walk, store, report, progress)
    todo = diff.todo
    batch_arrays: list[np.ndarray] = []
    batch_done: list[tuple[str, Any, str, StoredState | None]] = []
    writer = BatchWriter(store, opts.commit_every)

    device = str(getattr(encoder, "device", "cpu"))
    first_batch = min(opts.batch_size or FIRST_BATCH, FIRST_BATCH)

    def flush_embed() -> None:
        nonlocal next_id
        if not batch_arrays:
            return
        t0 = time.perf_counter()
        pixels, done = _batch_pixels(
            batch_arrays, batch_done, encoder, device, opts, report, progress
        )
        if done:
            report.mark("first_embed", first=True)
            vectors = encoder.encode_images(pixels)
            report.embed_s += time.perf_counter() - t0
            report.mark("last_embed")
            next_id = write_image_rows(writer, diff, done, vectors, next_id, report, sidecar)
            progress("images", len(done), None)
        batch_arrays.clear()
        batch_done.clear()

    if pool is None:
        if not todo:
            sweep_images(diff, walk, store, report)
            return next_id
        pool = start_image_workers(encoder, opts)
    # Workers decode and resize ahead (up to 4 chunks each in flight) while this thread
    # runs the model, so decoding hides behind embedding.
    with pool:
        for result in pool.decode((i, item.path) for i, (_u, item, _p) in enumerate(todo)):
            uri, item, prev = todo[result.index]
            if isinstance(result, DecodeFailure):
                report.failures.append(
                    Failure(item.path, result.reason, result.exc_class, "decode")
                )
                progress(
                    "images", 0, -1
                )  # one item less to embed: the bar never counts it as embedded
                progress("failed", 1, None)
                continue
            assert isinstance(result, DecodeOk)
            batch_arrays.append(result.array)
            batch_done.append((uri, item, result.sha256, prev))
            if len(batch_arrays) >= (opts.batch_size if report.embedded else first_batch):
                flush_embed()
        flush_embed()
        pool.close(wait=False)  # the workers are idle: they exit while the rows commit
        writer.flush()

    sweep_images(diff, walk, store, report)
    return next_id


def _batch_pixels(
    arrays: list[np.ndarray],
    done: list[tuple[str, Any, str, StoredState | None]],
    encoder: Encoder,
    device: str,
    opts: IndexOptions,
    report: IndexReport,
    progress: ProgressFn,
) -> tuple[Any, list[tuple[str, Any, str, StoredState | None]]]:
    """The model input of a batch, and its entries: decoded arrays stacked as they are;
    JPEG bytes (1-D arrays, from GPU-decode workers) decoded on the encoder's device,
    where a file that no decoder accepts is reported and dropped."""
    if all(a.ndim != 1 for a in arrays):
        return np.stack(arrays), list(done)
    from mmsearch.indexer.gpudecode import materialise_batch

    pixels, failed = materialise_batch(arrays, encoder.image_size, device, opts.max_pixels)
    bad = {pos for pos, _reason, _exc in failed}
    for pos, reason, exc_class in failed:
        report.failures.append(Failure(done[pos][1].path, reason, exc_class, "decode"))
        progress("images", 0, -1)
        progress("failed", 1, None)
    keep = [i for i in range(len(arrays)) if i not in bad]
    return pixels[keep], [done[i] for i in keep]
