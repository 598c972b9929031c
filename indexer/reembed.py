"""Re-embed every item of an index with another model (``mmsearch index --reembed``).

After fine-tuning, the index's vectors must come from the new checkpoint. This keeps
every row (id, uri, text, metadata, ...) and replaces only the vectors and the model
stamp; the ANN indexes are retrained and zero-shot labels recomputed with the new
model. Elsewhere the model check stays strict: indexing into an index built by another
model is refused.

Crash safety: new rows are committed in batches to a staging table ``items_reembed``
(a re-run resumes from it); the items table is then replaced in one commit, and the
new snapshot is published last. Until then readers keep the previous snapshot, whose
table version and model are unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from mmsearch.indexer.discover import uri_to_path
from mmsearch.indexer.executor import LocalExecutor
from mmsearch.indexer.items import Embedded, Failed, IdAllocator, Item
from mmsearch.indexer.options import IndexOptions, ProgressFn
from mmsearch.indexer.report import Failure, IndexReport, write_failures
from mmsearch.indexer.session import writer_session
from mmsearch.indexer.writeloop import write_source

from mmsearch.models.base import Encoder
from mmsearch.models.spec import ModelSpec
from mmsearch.storage.locks import write_guard
from mmsearch.storage.schema import DB_DIRNAME, DIM_METADATA_KEY, MODEL_METADATA_KEY, TABLE_NAME
from mmsearch.storage.table import ItemStore, StoredState

STAGING_TABLE = "items_reembed"


def _staging(store: ItemStore, schema: pa.Schema) -> Any:
    """The staging table for ``schema``'s model (a stale one for another model is dropped)."""
    import lancedb

    db = lancedb.connect(str(store.index_dir / DB_DIRNAME))
    names = db.list_tables()
    names = list(getattr(names, "tables", names))
    if STAGING_TABLE in names:
        table = db.open_table(STAGING_TABLE)
        if (table.schema.metadata or {}).get(MODEL_METADATA_KEY) == schema.metadata[
            MODEL_METADATA_KEY
        ]:
            return db, table
        db.drop_table(STAGING_TABLE)
    return db, db.create_table(STAGING_TABLE, schema=schema)


def reembed_index(
    index_dir: str | os.PathLike[str],
    spec: ModelSpec,
    *,
    encoder: Encoder | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: Any | None = None,
) -> IndexReport:
    """Re-embeds every row of an index with ``spec``; returns a report (``updated`` rows, failures).

    Images whose files can no longer be decoded are dropped from the index and reported.
    """
    from mmsearch.indexer.ann_build import build_ann

    from mmsearch.labels import refresh_labels
    from mmsearch.models.batching import batch_size_for

    progress = progress or (lambda stage, advance, total: None)
    started = time.perf_counter()
    report = IndexReport()
    with writer_session(index_dir) as session:
        index_dir = session.local_dir
        store = ItemStore.open(index_dir)
        if encoder is None:
            from mmsearch.models import load_encoder

            encoder = load_encoder(spec, device=device)
        batch_size = batch_size_for(encoder, batch_size)
        schema = reembedded_schema(store.table.schema, encoder.dim, spec)
        with write_guard(store.index_dir):
            db, staging = _staging(store, schema)
            done = set(
                staging.search().select(["uri"]).limit(None).to_arrow().column("uri").to_pylist()
            )
            rows = store.scan([n for n in schema.names if n != "vector"])
            todo = rows.filter(
                pa.array([u not in done for u in rows.column("uri").to_pylist()], pa.bool_())
            )
            executor = LocalExecutor(encoder, IndexOptions(batch_size=batch_size, workers=workers))
            write_source(
                TableRows(todo), store, executor, StagingSink(staging, schema),
                IdAllocator(), report, progress,
            )  # fmt: skip
            data = staging.search().limit(None).to_arrow().cast(schema)
            db.create_table(TABLE_NAME, data=data, schema=schema, mode="overwrite")
            db.drop_table(STAGING_TABLE)
            store = ItemStore.open(index_dir)
            refresh_labels(store, encoder, relabel_all=True)
            report.ann = build_ann(store, spec, retrain=True, progress=progress, encoder=encoder)
            report.table_version = store.version
            report.report_path = str(
                write_failures(store.index_dir, time.strftime("%Y%m%dT%H%M%S"), report.failures)
            )
    report.updated = len(done) + report.embedded
    report.elapsed_s = time.perf_counter() - started
    return report


@dataclass
class TableRows:
    """The rows of an index being re-embedded, as a :class:`~mmsearch.indexer.source.Source`:
    every row keeps its columns and gets a new vector; an image whose file no longer
    decodes is dropped (reported)."""

    table: pa.Table

    def plan(
        self, store: ItemStore, report: IndexReport, progress: ProgressFn
    ) -> Iterator[list[Item]]:
        cols = {n: self.table.column(n).to_pylist() for n in ("id", "uri", "kind", "text")}
        items = []
        for pos, (id_, uri, kind, text) in enumerate(
            zip(cols["id"], cols["uri"], cols["kind"], cols["text"], strict=True)
        ):
            payload = uri_to_path(uri) if kind == "image" else (text or "")
            where = payload if kind == "image" else uri
            prev = StoredState(int(id_), None, None, None)
            items.append(Item(kind, uri, payload, prev, where, ref=pos))
        yield items

    def rows(
        self,
        done: Sequence[Embedded],
        ids: Sequence[int],
        vectors: npt.NDArray[np.float32],
        schema: pa.Schema,
    ) -> pa.Table:
        chunk = self.table.take(pa.array([d.item.ref for d in done], pa.int64()))
        dim = schema.field("vector").type.list_size
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        table = chunk.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, dim))
        return table.select(schema.names).cast(schema)

    def failure(self, failed: Failed) -> Failure:
        return Failure(failed.item.where, failed.reason, failed.exc_class, failed.stage)

    def sweep(self, store: ItemStore, report: IndexReport) -> None:
        return None  # the staging table replaces the items table whole


@dataclass
class StagingSink:
    """Rows go straight to the staging table: each batch one commit, resumable."""

    table: Any
    schema: pa.Schema

    def add(self, rows: pa.Table) -> None:
        self.table.add(rows)

    def flush(self) -> None:
        return None


def reembedded_schema(schema: pa.Schema, dim: int, spec: ModelSpec) -> pa.Schema:
    """The table's schema (every column and its metadata kept), ``dim``-wide vectors, stamped ``spec``."""
    out = schema.set(
        schema.get_field_index("vector"), pa.field("vector", pa.list_(pa.float32(), dim))
    )
    meta = dict(schema.metadata or {})
    meta[MODEL_METADATA_KEY] = spec.to_json().encode()
    meta[DIM_METADATA_KEY] = str(dim).encode()
    return out.with_metadata(meta)
