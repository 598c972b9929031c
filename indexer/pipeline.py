"""The batch indexing pipeline: sources → diff → embed → write → build ANN.

``run_index`` is what ``mmsearch index`` calls. Each path becomes a
:class:`~mmsearch.indexer.source.Source` (an image folder or a text collection), each
fed through the one write loop (:func:`~mmsearch.indexer.writeloop.write_source`) by
one executor (this machine's, or Ray's). It is incremental (mark and sweep, as rclip
does): unchanged files are not re-embedded, changed ones are, and rows of files that
disappeared are deleted only after a complete walk of their root. Rows are committed
in batches, so a killed run leaves the table at a committed prefix and the next run
picks up from there without re-embedding what was committed.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mmsearch.indexer.ann_build import build_ann
from mmsearch.indexer.collection import TextCollectionSource
from mmsearch.indexer.discover import WalkResult, walk_images
from mmsearch.indexer.executor import Executor, LocalExecutor
from mmsearch.indexer.feed import feed_source, is_product_feed
from mmsearch.indexer.folder import ImageFolder
from mmsearch.indexer.items import IdAllocator
from mmsearch.indexer.options import IndexOptions, ProgressFn
from mmsearch.indexer.report import (
    Failure,
    IndexReport,
    check_not_all_failed,
    write_failures,
    write_run_summary,
)
from mmsearch.indexer.session import writer_location, writer_session
from mmsearch.indexer.sidecar import ImageSidecar, load_image_metadata
from mmsearch.indexer.source import Source
from mmsearch.indexer.sources import check_sources, is_text_collection
from mmsearch.indexer.writeloop import write_source
from mmsearch.indexer.writer import BatchWriter

from mmsearch.labels import refresh_labels
from mmsearch.models.base import Encoder
from mmsearch.models.batching import batch_size_for
from mmsearch.models.spec import ModelSpec
from mmsearch.storage.locks import write_guard
from mmsearch.storage.table import ItemStore

__all__ = ["BatchWriter", "IndexOptions", "make_executor", "run_index"]


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
    report = IndexReport()
    index_path = writer_location(index_dir)[0]
    sources = check_sources(paths, index_path)
    if encoder is None:
        from mmsearch.models.backends import check_encoder_available

        check_encoder_available(
            spec,
            backend=opts.backend,
            device=opts.device,
            quantize=opts.quantize,
            offline=opts.offline,
        )
    with writer_session(index_dir, wait_s=opts.lock_wait_s) as session:
        report.mark("checked")
        _run_index_locked(
            sources, session.local_dir, spec, opts, progress or _noop, encoder, report
        )
        if opts.build_index:
            session.publish()
            report.warnings.extend(session.warnings)
        report.mark("done")
        return report


def _run_index_locked(
    paths: Sequence[Path],
    index_path: Path,
    spec: ModelSpec,
    opts: IndexOptions,
    progress: ProgressFn,
    encoder: Encoder | None,
    report: IndexReport,
) -> None:
    fresh = not ItemStore.exists(index_path)
    if not fresh:  # refuse another model before loading (or downloading) it
        ItemStore.open(index_path).check_model(spec)
    # Walk the folders and join the metadata sidecar before loading the model, so that a
    # sidecar that names none of the images fails in a second, not after the model load.
    walks = {path: walk_images(Path(os.path.abspath(path))) for path in paths if path.is_dir()}
    if fresh:
        _refuse_nothing_to_index(paths, walks)
    sidecar = None
    if opts.image_metadata:
        sidecar = load_image_metadata(opts.image_metadata, opts.file_column, opts.text_column)
        report.metadata_join = sidecar.join(
            item.path for walk in walks.values() for item in walk.items
        ).to_dict()
    loading = time.perf_counter()
    from mmsearch.models.backends import load_encoder, runtime_label

    if encoder is None:
        encoder = load_encoder(
            spec, device=opts.device, backend=opts.backend, quantize=opts.quantize
        )
    started = time.perf_counter()
    report.load_s = started - loading
    opts = replace(opts, batch_size=batch_size_for(encoder, opts.batch_size))
    report.mark("model")
    report.runtime = runtime_label(encoder)
    executor = make_executor(encoder, opts)
    try:
        store = _open_table(index_path, spec, encoder, executor, fresh, walks, report)
        _write_sources(paths, walks, sidecar, store, executor, opts, report, progress)
    finally:
        if isinstance(executor, LocalExecutor):
            executor.close()  # workers started early and never used (an error came first)
    if executor.first_embed_at is not None and executor.last_embed_at is not None:
        report.mark("first_embed", at=executor.first_embed_at)
        report.mark("last_embed", at=executor.last_embed_at)
    report.embed_s = executor.embed_s

    with write_guard(index_path):  # remembered zero-shot label sets: label new and changed images
        refresh_labels(store, encoder)
    report.mark("written")
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
    report.mark("ann")
    report.table_version = store.version
    report.elapsed_s = time.perf_counter() - started
    with write_guard(index_path):
        report.report_path = str(write_failures(index_path, _run_id(), report.failures))
        write_run_summary(index_path, report)
    check_not_all_failed(report)
    if opts.retain is not None:
        opts.retain.extend((encoder, store))


def _open_table(
    index_path: Path,
    spec: ModelSpec,
    encoder: Encoder,
    executor: Executor,
    fresh: bool,
    walks: dict[Path, WalkResult],
    report: IndexReport,
) -> ItemStore:
    """The run's table, opened or created. A new index embeds every image it walked: its
    decode workers and the model's image session start first, beside the table's creation
    (the first import of LanceDB)."""
    if fresh and isinstance(executor, LocalExecutor) and any(w.items for w in walks.values()):
        executor.start_images()
    store = ItemStore.create(index_path, dim=encoder.dim, spec=spec)
    store.ensure_key_indexes()  # an index from before the key indexes: built once
    from mmsearch.models.backends import check_backend

    check_backend(index_path, encoder, record=True)  # a second backend must agree with the first
    report.mark("table")
    return store


def _write_sources(
    paths: Sequence[Path],
    walks: dict[Path, WalkResult],
    sidecar: ImageSidecar | None,
    store: ItemStore,
    executor: Executor,
    opts: IndexOptions,
    report: IndexReport,
    progress: ProgressFn,
) -> None:
    """Each path as its source, through the one write loop."""
    ids = IdAllocator.for_store(store)
    writer = BatchWriter(store, opts.commit_every)
    for path in paths:
        source: Source
        if is_text_collection(path) and is_product_feed(path, opts.image_column):
            with feed_source(path, opts, report) as source:
                write_source(source, store, executor, writer, ids, report, progress)
            continue
        if is_text_collection(path):
            source = TextCollectionSource(path, opts.text_column, opts.id_column)
        elif path in walks:
            source = ImageFolder(path, walks[path], sidecar)
        else:  # an indexed source that is gone (unmounted?): reported, and never swept
            report.failures.append(
                Failure(
                    str(path), "no longer exists; its rows are kept", "FileNotFoundError", "walk"
                )
            )
            report.sweep_aborted.append(str(path))
            continue
        write_source(source, store, executor, writer, ids, report, progress)


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


def make_executor(encoder: Encoder, opts: IndexOptions) -> Executor:
    """The executor of a run: this machine's, or Ray's when ``opts.ray`` names a cluster."""
    if opts.ray is not None:
        from mmsearch.indexer.ray_pipeline import RayExecutor

        return RayExecutor(encoder, opts)
    return LocalExecutor(encoder, opts)
