"""The rows file: what a query shows of each hit, readable without LanceDB.

Each ANN build writes ``ann/rows-g<generation>.arrow`` next to its indexes: the
table's ``id, uri, kind, text, metadata`` columns at the snapshot's table version,
sorted by id, as an uncompressed Arrow IPC file, with the model spec and vector
dimension in its schema metadata. A query memory-maps it (only the pages of the
hits are read) instead of importing LanceDB and scanning the table, which is most of
a one-shot query's start-up. Indexes built before it existed fall back to the table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mmsearch.models.spec import ModelSpec
from mmsearch.storage.snapshot import ANN_DIRNAME, Snapshot

ROWS_COLUMNS = ["id", "uri", "kind", "text", "source", "metadata"]
_SPEC_KEY = b"mmsearch.model"
_DIM_KEY = b"mmsearch.dim"


def rows_file_name(generation: int) -> str:
    """The rows file of a snapshot generation, relative to the index directory."""
    return f"{ANN_DIRNAME}/rows-g{generation}.arrow"


def rows_file_path(index_dir: str | os.PathLike[str], snapshot: Snapshot) -> Path:
    return Path(index_dir) / rows_file_name(snapshot.generation)


def write_rows_file(store: Any, path: Path, spec: ModelSpec) -> None:
    """Writes the table's display columns, sorted by id, atomically (temp file + rename).

    Raises :class:`~mmsearch.errors.IndexCorruptError` when two rows share an id (of any
    kind): no snapshot may name such a table."""
    from mmsearch.ann.files import atomic_write

    table = store.scan(ROWS_COLUMNS)
    ids = table.column("id").to_numpy()
    if len(ids) > 1 and not bool(np.all(np.diff(ids) > 0)):
        order = np.argsort(ids, kind="stable")
        store.check_unique_ids(ids[order], presorted=True)
        table = table.take(pa.array(order))
    meta = {_SPEC_KEY: spec.to_json().encode(), _DIM_KEY: str(int(store.dim)).encode()}
    table = table.replace_schema_metadata(meta).combine_chunks()

    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    path.parent.mkdir(parents=True, exist_ok=True)  # an empty table builds no ANN folder before this
    atomic_write(path, write)


def read_rows_file(path: Path) -> tuple[pa.Table, ModelSpec, int]:
    """(rows sorted by id, model spec, vector dimension), memory-mapped."""
    source = pa.memory_map(str(path), "r")
    table = pa.ipc.open_file(source).read_all()
    meta = table.schema.metadata or {}
    return table, ModelSpec.from_json(meta[_SPEC_KEY].decode()), int(meta[_DIM_KEY])


def published_model(index_dir: str | os.PathLike[str]) -> ModelSpec | None:
    """The model of the index's published snapshot (its rows file's schema), without LanceDB;
    None when there is no snapshot or rows file yet."""
    from mmsearch.storage.snapshot import read_snapshot

    snapshot = read_snapshot(Path(index_dir))
    if snapshot is None:
        return None
    try:
        with pa.memory_map(str(rows_file_path(index_dir, snapshot)), "r") as source:
            meta = pa.ipc.open_file(source).schema.metadata or {}
        return ModelSpec.from_json(meta[_SPEC_KEY].decode())
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
