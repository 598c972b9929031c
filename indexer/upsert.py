"""Record writes from a backend: create an index, upsert records, delete records by id.

Every call is one writer (:func:`~mmsearch.indexer.session.writer_session`: a second
writer waits up to ``lock_wait_s``, then gets one clear :class:`StorageError`). An
upsert goes through the same loop as an indexing run (a
:class:`~mmsearch.indexer.records.RecordSource`, the local executor decoding in
threads, rows committed in groups), then publishes a snapshot that holds the new rows
before it returns.

>>> encoder = create_index("./shop", ModelSpec("mmsearch-tiny"))  # doctest: +SKIP
>>> upsert_records("./shop", [{"id": "sku-1", "title": "red shirt", "image": "/img/1.jpg"}],
...                encoder=encoder).images.added  # doctest: +SKIP
1
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pyarrow as pa
from mmsearch.indexer.ann_delta import RowChanges, publish_changes
from mmsearch.indexer.executor import LocalExecutor
from mmsearch.indexer.items import IdAllocator
from mmsearch.indexer.options import IndexOptions
from mmsearch.indexer.recordimages import ImageResolver
from mmsearch.indexer.records import RecordSource
from mmsearch.indexer.recordtypes import (
    RECORDS_SOURCE,
    RecordError,
    RecordFields,
    UpsertReport,
    read_records,
    record_id_of,
    record_range,
)
from mmsearch.indexer.report import IndexReport
from mmsearch.indexer.session import WriterSession, writer_session
from mmsearch.indexer.writeloop import write_source
from mmsearch.indexer.writer import BatchWriter

from mmsearch.models.base import Encoder
from mmsearch.models.spec import ModelSpec
from mmsearch.storage.locks import write_guard
from mmsearch.storage.table import ItemStore
from mmsearch.urlfetch import FetchPolicy

__all__ = ["RecordError", "UpsertReport", "create_index", "delete_records", "upsert_records"]

#: Records fetched, decoded and committed together.
CHUNK_RECORDS = 256


def create_index(
    index: str | os.PathLike[str],
    spec: ModelSpec | None = None,
    *,
    encoder: Encoder | None = None,
    device: str | None = None,
    lock_wait_s: float = 0.0,
) -> Encoder | None:
    """Makes ``index`` an (empty) searchable index of ``spec`` (default: the default
    model) unless it is one already (then ``spec``, when given, must be its model).
    Returns the encoder when one was loaded (or given)."""
    from mmsearch.storage.snapshot import read_snapshot

    with writer_session(index, wait_s=lock_wait_s) as session:
        if ItemStore.exists(session.local_dir):
            store = ItemStore.open(session.local_dir)
            if spec is not None:
                store.check_model(spec)
            if read_snapshot(session.local_dir) is not None:
                return encoder
        spec = spec or (store.model_spec if ItemStore.exists(session.local_dir) else ModelSpec())
        if encoder is None:
            from mmsearch.models.backends import load_encoder

            encoder = load_encoder(spec, device=device)
        store = ItemStore.create(session.local_dir, dim=encoder.dim, spec=spec)
        publish_rows(session, store, encoder)
    return encoder


def upsert_records(
    index: str | os.PathLike[str],
    records: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    encoder: Encoder,
    text_fields: Sequence[str] | None = None,
    image_fields: Sequence[str] | None = None,
    allow_private_urls: bool = False,
    local_paths: bool = True,
    fetch_policy: FetchPolicy | None = None,
    lock_wait_s: float = 10.0,
) -> UpsertReport:
    """Inserts or updates records by id (see :mod:`mmsearch.indexer.records`); returns
    once the rows are committed and published. Raises :class:`RecordError` (nothing
    written) for a record without an id, or two records with the same id.
    """
    started = time.perf_counter()
    fields = RecordFields(
        text_fields=tuple(text_fields) if text_fields is not None else RecordFields.text_fields,
        image_fields=tuple(image_fields) if image_fields is not None else RecordFields.image_fields,
    )
    parsed = read_records(records, fields)
    policy = fetch_policy or FetchPolicy(allow_private=allow_private_urls)
    upsert = UpsertReport()
    chunks = [parsed[i : i + CHUNK_RECORDS] for i in range(0, len(parsed), CHUNK_RECORDS)]
    with writer_session(index, wait_s=lock_wait_s) as session:
        store = ItemStore.create(session.local_dir, dim=encoder.dim, spec=encoder.spec)
        changes = RowChanges(since=store.version)
        store.ensure_key_indexes()  # an index from before them: built once (no row changes)
        with ImageResolver(policy, local_paths=local_paths) as resolver:
            source = RecordSource(chunks, resolver, upsert, source=RECORDS_SOURCE)
            write_records(source, store, encoder, IndexOptions(), changes)
        changes.removed += source.removed_ids
        changes.until = store.version
        upsert.table_version = publish_rows(session, store, encoder, changes)
    upsert.elapsed_s = time.perf_counter() - started
    return upsert


def write_records(
    source: RecordSource,
    store: ItemStore,
    encoder: Encoder,
    opts: IndexOptions,
    changes: RowChanges | None = None,
) -> IndexReport:
    """Feeds a record source through the loop; images decode in threads (they are in
    memory). The ids of the rows written go to ``changes``."""
    from mmsearch.models.batching import batch_size_for

    opts = replace(opts, batch_size=batch_size_for(encoder, opts.batch_size))
    report = IndexReport()
    executor = LocalExecutor(encoder, opts, decode_in="thread")
    writer = RecordingWriter(store, opts.commit_every, changes)
    write_source(source, store, executor, writer, IdAllocator.for_store(store), report, _quiet)
    return report


class RecordingWriter(BatchWriter):
    """A :class:`BatchWriter` that notes the ids of the rows it writes, by kind."""

    def __init__(self, store: ItemStore, commit_every: int, changes: RowChanges | None) -> None:
        super().__init__(store, commit_every)
        self.changes = changes

    def add(self, rows: pa.Table) -> None:
        if self.changes is not None:
            for kind, row_id in zip(
                rows.column("kind").to_pylist(), rows.column("id").to_pylist(), strict=True
            ):
                self.changes.written.setdefault(kind, []).append(int(row_id))
        super().add(rows)


def delete_records(
    index: str | os.PathLike[str],
    ids: Iterable[str],
    *,
    encoder: Encoder,
    lock_wait_s: float = 10.0,
) -> int:
    """Deletes every row of the given record ids; returns how many of them the index held.
    Unknown ids are ignored (a delete is idempotent)."""
    wanted = sorted({str(i) for i in ids})
    if not wanted:
        return 0
    with writer_session(index, wait_s=lock_wait_s) as session:
        store = ItemStore.open(session.local_dir)
        changes = RowChanges(since=store.version)
        store.ensure_key_indexes()
        found: set[str] = set()
        for start in range(0, len(wanted), 200):
            part = wanted[start : start + 200]
            where = " OR ".join(record_range(r) for r in part)
            rows = store.scan(["uri", "id"], where)
            if rows.num_rows:
                found.update(r for r in map(record_id_of, rows.column("uri").to_pylist()) if r)
                changes.removed += rows.column("id").to_pylist()
                with write_guard(store.index_dir):
                    store.table.delete(where)
        if found:
            changes.until = store.version
            publish_rows(session, store, encoder, changes)
    return len(found)


def publish_rows(
    session: WriterSession, store: ItemStore, encoder: Encoder, changes: RowChanges | None = None
) -> int:
    """Makes the committed rows what readers see: labels, then the new rows beside the
    ANN index (:func:`~mmsearch.indexer.ann_delta.publish_changes`), the snapshot, the
    object store. Returns the table version published."""
    from mmsearch.labels import refresh_labels

    with write_guard(store.index_dir):
        refresh_labels(store, encoder)
        publish_changes(store, store.model_spec, changes, encoder=encoder)
    session.publish()
    return store.version


def _quiet(stage: str, advance: int, total: int | None) -> None:
    return None
