"""The rows file: what a query shows of each hit, readable without LanceDB.

Each ANN build writes ``ann/rows-g<generation>.arrow`` next to its indexes: the
table's ``id, uri, kind, text, metadata`` columns at the snapshot's table version,
sorted by id, as an uncompressed Arrow IPC file, with the model spec and vector
dimension in its schema metadata. A query memory-maps it (only the pages of the
hits are read) instead of importing LanceDB and scanning the table, which is most of
a one-shot query's start-up. Indexes built before it existed fall back to the table.

A record upsert writes a *delta* instead (:func:`write_rows_delta`): the rows changed
since the last full file, and the ids of that file that are gone; a reader applies it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.models.spec import ModelSpec
from mmsearch.storage.snapshot import Snapshot, rows_file_name

if TYPE_CHECKING:
    from mmsearch.storage.table import ItemStore

ROWS_COLUMNS = ["id", "uri", "kind", "text", "source", "metadata"]
_SPEC_KEY = b"mmsearch.model"
_DIM_KEY = b"mmsearch.dim"
#: A delta rows file: the full rows file it applies to, and the ids of that file to drop.
_BASE_KEY = b"mmsearch.rows_base"
_DROP_KEY = b"mmsearch.rows_drop"


def rows_file_path(index_dir: str | os.PathLike[str], snapshot: Snapshot) -> Path:
    return Path(index_dir) / rows_file_name(snapshot.generation)


def write_rows_file(store: ItemStore, path: Path, spec: ModelSpec) -> None:
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

    path.parent.mkdir(
        parents=True, exist_ok=True
    )  # an empty table builds no ANN folder before this
    atomic_write(path, write)


def _read(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


@dataclass(frozen=True)
class RowsParts:
    """A rows file as stored: ``base``, a full file's rows (sorted by id, memory-mapped);
    for a delta, ``changed`` (its rows, which replace ``base`` rows of the same id) and
    ``dropped`` (ids of ``base`` that are gone). Applying them is the reader's business
    (:func:`read_rows_file` copies; a query's row lookup need not)."""

    base: pa.Table
    changed: pa.Table | None
    dropped: npt.NDArray[np.int64]
    spec: ModelSpec
    dim: int
    base_path: Path

    def base_identity(self) -> tuple[str, int, int, int]:
        """The full file's name, inode, size and mtime: equal only for the same file."""
        st = self.base_path.stat()
        return self.base_path.name, st.st_ino, st.st_size, st.st_mtime_ns


def read_rows_parts(path: Path) -> RowsParts:
    """The rows file at ``path`` and, for a delta, the full file it applies to, memory-mapped."""
    table = _read(path)
    meta = table.schema.metadata or {}
    spec, dim = ModelSpec.from_json(meta[_SPEC_KEY].decode()), int(meta[_DIM_KEY])
    base_name = meta.get(_BASE_KEY)
    if base_name is None:
        return RowsParts(table, None, np.zeros(0, np.int64), spec, dim, path)
    base_path = path.parent / base_name.decode()
    base = _read(base_path)
    dropped = np.asarray(json.loads(meta[_DROP_KEY]), dtype=np.int64)
    return RowsParts(base.select(table.column_names), table, dropped, spec, dim, base_path)


def read_rows_file(path: Path) -> tuple[pa.Table, ModelSpec, int]:
    """(rows, model spec, vector dimension). A full rows file comes sorted by id,
    memory-mapped; a delta (see :func:`write_rows_delta`) is applied to its base (a
    copy, unsorted)."""
    parts = read_rows_parts(path)
    if parts.changed is None:
        return parts.base, parts.spec, parts.dim
    base, changed = parts.base, parts.changed
    gone = pc.is_in(
        base.column("id"),
        value_set=pa.concat_arrays(
            [pa.array(parts.dropped, pa.int64()), changed.column("id").combine_chunks()]
        ),
    )
    kept = base.filter(pc.invert(gone))
    table = pa.concat_tables([kept, changed.cast(kept.schema)])
    return table.replace_schema_metadata(changed.schema.metadata), parts.spec, parts.dim


def write_rows_delta(
    store: ItemStore,
    path: Path,
    spec: ModelSpec,
    *,
    previous: Path,
    changed: npt.ArrayLike,
    removed: npt.ArrayLike,
) -> str:
    """Writes the rows that changed since the full rows file behind ``previous`` (the
    changed rows read from the table, plus those of ``previous`` when it is a delta
    itself), and the ids of that file that are gone. Returns the full file's name.

    A record upsert thus writes a few rows, not the whole table; readers apply it.
    """
    from mmsearch.ann.files import atomic_write

    before = _read(previous)
    meta = dict(before.schema.metadata or {})
    touched = np.unique(
        np.concatenate([np.asarray(changed, np.int64), np.asarray(removed, np.int64)])
    )
    if _BASE_KEY in meta:
        base = meta[_BASE_KEY].decode()
        drop = np.asarray(json.loads(meta[_DROP_KEY]), np.int64)
        carried = before.filter(
            pc.invert(pc.is_in(before.column("id"), value_set=pa.array(touched)))
        )
    else:
        base, drop, carried = previous.name, np.empty(0, np.int64), None
    parts = [] if carried is None else [carried]
    ids = np.unique(np.asarray(changed, np.int64))
    for start in range(0, len(ids), 5000):
        chunk = ",".join(str(int(i)) for i in ids[start : start + 5000])
        parts.append(store.scan(ROWS_COLUMNS, f"id IN ({chunk})"))
    schema = pa.schema([store.table.schema.field(c) for c in ROWS_COLUMNS])
    table = (
        pa.concat_tables([p.select(ROWS_COLUMNS).cast(schema) for p in parts])
        if parts
        else schema.empty_table()
    )
    out_meta = {
        _SPEC_KEY: spec.to_json().encode(),
        _DIM_KEY: str(int(store.dim)).encode(),
        _BASE_KEY: base.encode(),
        _DROP_KEY: json.dumps(np.union1d(drop, touched).tolist()).encode(),
    }
    table = table.replace_schema_metadata(out_meta).combine_chunks()

    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    atomic_write(path, write)
    return base


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
