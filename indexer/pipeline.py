"""The batch indexing pipeline: discover → diff → decode → embed → write → build ANN.

``run_index`` is what ``mmsearch index`` calls. It is incremental (mark and sweep,
as rclip does): unchanged files are not re-embedded, changed ones are, and rows of
files that disappeared are deleted only after a complete walk of their root. Rows
are committed in batches, so a killed run leaves the table at a committed prefix
and the next run picks up from there without re-embedding what was committed.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from mmsearch.indexer.ann_build import build_ann
from mmsearch.indexer.decode import DecodeFailure, DecodeOk, DecodePool, default_decode_workers
from mmsearch.indexer.discover import WalkResult, path_to_uri, walk_images
from mmsearch.indexer.gpudecode import gpu_decode_enabled, read_jpeg_or_decode
from mmsearch.indexer.options import IndexOptions, ProgressFn
from mmsearch.indexer.report import (
    Failure,
    IndexReport,
    check_not_all_failed,
    write_failures,
    write_run_summary,
)
from mmsearch.indexer.session import writer_location, writer_session
from mmsearch.indexer.sidecar import TEXT_KEY, ImageSidecar, load_image_metadata
from mmsearch.indexer.sources import check_sources, is_text_collection
from mmsearch.indexer.textindex import index_texts
from mmsearch.indexer.writer import BatchWriter

from mmsearch.labels import refresh_labels
from mmsearch.models.base import Encoder
from mmsearch.models.batching import batch_size_for
from mmsearch.models.spec import ModelSpec
from mmsearch.storage.locks import write_guard
from mmsearch.storage.metadata_keys import FILE_KEY
from mmsearch.storage.schema import make_rows
from mmsearch.storage.table import ItemStore, StoredState


def _noop(stage: str, advance: int, total: int | None) -> None:
    return None


def run_index(
    paths: Sequence[str | os.PathLike[str]],
    index_dir: str | os.PathLike[str],
    spec: ModelSpec,
    *,
    options: IndexOptions | None = None,
    progress: ProgressFn | None = None,
    encoder: Encoder | None = None,
) -> IndexReport:
    """Indexes image folders and text collections into ``index_dir``.

    Paths that do not exist, and weights that cannot be fetched, fail at once, before
    any model loads and without creating ``index_dir``. A run with work to do in which
    every item failed raises :class:`IndexingFailedError` (its ``report`` attached).

    >>> report = run_index(["./photos"], ".mmsearch", ModelSpec("mmsearch-tiny", ""))  # doctest: +SKIP
    >>> report.added, report.failed  # doctest: +SKIP
    (400, 0)
    """
    opts = options or IndexOptions()
    index_path = writer_location(index_dir)[0]
    sources = check_sources(paths, index_path)
    if encoder is None:
        from mmsearch.models.hub import check_weights_reachable

        check_weights_reachable(spec, offline=opts.offline)
    with writer_session(index_dir, wait_s=opts.lock_wait_s) as session:
        report = _run_index_locked(sources, session.local_dir, spec, opts, progress or _noop, encoder)
        if opts.build_index:
            session.publish()
            report.warnings.extend(session.warnings)
        return report


def _run_index_locked(
    paths: Sequence[Path],
    index_path: Path,
    spec: ModelSpec,
    opts: IndexOptions,
    progress: ProgressFn,
    encoder: Encoder | None,
) -> IndexReport:
    report = IndexReport()

    if ItemStore.exists(index_path):  # refuse another model before loading (or downloading) it
        ItemStore.open(index_path).check_model(spec)
    # Walk the folders and join the metadata sidecar before loading the model, so that a
    # sidecar that names none of the images fails in a second, not after the model load.
    walks = {path: walk_images(Path(os.path.abspath(path))) for path in paths if path.is_dir()}
    if not ItemStore.exists(index_path):
        _refuse_nothing_to_index(paths, walks)
    sidecar = None
    if opts.image_metadata:
        sidecar = load_image_metadata(opts.image_metadata, opts.file_column, opts.text_column)
        report.metadata_join = sidecar.join(
            item.path for walk in walks.values() for item in walk.items
        ).to_dict()
    loading = time.perf_counter()
    if encoder is None:
        from mmsearch.models.backends import load_encoder

        encoder = load_encoder(
            spec, device=opts.device, backend=opts.backend, quantize=opts.quantize
        )
    started = time.perf_counter()
    report.load_s = started - loading
    opts = replace(opts, batch_size=batch_size_for(encoder, opts.batch_size))
    store = ItemStore.create(index_path, dim=encoder.dim, spec=spec)
    from mmsearch.models.backends import check_backend

    check_backend(index_path, encoder, record=True)  # a second backend must agree with the first

    next_id = store.max_id() + 1
    for path in paths:
        if is_text_collection(path):
            index_collection = index_texts
            if opts.ray is not None:
                from mmsearch.indexer.ray_pipeline import index_texts_ray as index_collection
            next_id = index_collection(path, store, encoder, opts, report, next_id, progress)
        elif path in walks:
            index_images = _index_images
            if opts.ray is not None:
                from mmsearch.indexer.ray_pipeline import index_images_ray as index_images
            next_id = index_images(
                path, walks[path], store, encoder, opts, report, next_id, progress, sidecar
            )
        else:  # an indexed source that is gone (unmounted?): reported, and never swept
            report.failures.append(
                Failure(
                    str(path), "no longer exists; its rows are kept", "FileNotFoundError", "walk"
                )
            )
            report.sweep_aborted.append(str(path))

    with write_guard(index_path):  # remembered zero-shot label sets: label new and changed images
        refresh_labels(store, encoder)
    if opts.build_index:
        with write_guard(index_path):
            report.ann = build_ann(
                store,
                spec,
                index_type=opts.index_type,
                target_recall=opts.target_recall,
                progress=progress,
                encoder=encoder,
                refine_dtype=opts.refine_dtype,
                use_gpu=opts.ann_gpu,
            )
    report.table_version = store.version
    report.elapsed_s = time.perf_counter() - started
    with write_guard(index_path):
        report.report_path = str(write_failures(index_path, _run_id(), report.failures))
        write_run_summary(index_path, report)
    check_not_all_failed(report)
    return report


def _refuse_nothing_to_index(paths: Sequence[Path], walks: dict[Path, WalkResult]) -> None:
    """A new index from folders without a single image is a mistake: say so, write nothing."""
    if any(is_text_collection(p) for p in paths) or any(w.items for w in walks.values()):
        return
    from mmsearch.errors import NothingToIndexError
    from mmsearch.imageio import IMAGE_EXTENSIONS

    where = ", ".join(str(p) for p in paths)
    kinds = " ".join(sorted(IMAGE_EXTENSIONS))
    raise NothingToIndexError(
        f"nothing to index: no images ({kinds}) in {where}; "
        "give a folder of images or a text collection (.csv .tsv .jsonl .parquet)"
    )


def _run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


# -- images ------------------------------------------------------------------------------


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


def _index_images(
    root: Path,
    walk: WalkResult,
    store: ItemStore,
    encoder: Encoder,
    opts: IndexOptions,
    report: IndexReport,
    next_id: int,
    progress: ProgressFn,
    sidecar: ImageSidecar | None,
) -> int:
    diff = diff_images(root, walk, store, report, progress)
    todo = diff.todo
    batch_arrays: list[np.ndarray] = []
    batch_done: list[tuple[str, Any, str, StoredState | None]] = []
    writer = BatchWriter(store, opts.commit_every)

    device = str(getattr(encoder, "device", "cpu"))

    def flush_embed() -> None:
        nonlocal next_id
        if not batch_arrays:
            return
        t0 = time.perf_counter()
        pixels, done = _batch_pixels(
            batch_arrays, batch_done, encoder, device, opts, report, progress
        )
        if done:
            vectors = encoder.encode_images(pixels)
            report.embed_s += time.perf_counter() - t0
            next_id = write_image_rows(writer, diff, done, vectors, next_id, report, sidecar)
            progress("images", len(done), None)
        batch_arrays.clear()
        batch_done.clear()

    workers = opts.workers or default_decode_workers(device=device)
    decode_fn = opts.decode_fn
    if decode_fn is None and gpu_decode_enabled(opts.gpu_decode, device):
        decode_fn = read_jpeg_or_decode  # workers read and check JPEGs; the GPU decodes them
    extra = {"decode": decode_fn} if decode_fn is not None else {}
    warm_up = getattr(encoder, "warm_up", None)
    if todo and warm_up is not None:  # the model's session loads while the first images decode
        threading.Thread(
            target=warm_up, args=("image",), name="mmsearch-warm-up", daemon=True
        ).start()
    # Workers decode and resize ahead (up to 4 chunks each in flight) while this thread
    # runs the model, so decoding hides behind embedding.
    with DecodePool(
        encoder.image_size,
        workers=workers,
        timeout_s=opts.decode_timeout_s,
        max_pixels=opts.max_pixels,
        **extra,
    ) as pool:
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
            if len(batch_arrays) >= opts.batch_size:
                flush_embed()
        flush_embed()
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
