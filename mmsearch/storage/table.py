"""LanceDB storage of one mmsearch index: the ``items`` table (see :mod:`.schema`).

Writes go through :meth:`ItemStore.upsert` (one atomic LanceDB commit per batch,
``merge_insert`` on ``uri``), so a process killed mid-run leaves the table at a
committed prefix with no duplicate uris. :meth:`ItemStore.update_lexical_index`
keeps the full-text (BM25) index current, and with it (one ``optimize``) the B-tree
indexes on ``uri`` and ``id`` (:meth:`ItemStore.ensure_key_indexes`) that make a
small write cost the same in a large table as in a small one: rows a key index does
not cover yet (appended since the last ``optimize``) are scanned, the rest looked up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from mmsearch.errors import IndexCorruptError, IndexNotFoundError, ModelMismatchError
from mmsearch.models.spec import ModelSpec
from mmsearch.storage.locks import write_guard
from mmsearch.storage.objectstore import remote_uri_of
from mmsearch.storage.schema import (
    DB_DIRNAME,
    KEY_INDEXES,
    LEXICAL_COLUMN,
    LEXICAL_INDEX_NAME,
    MODEL_METADATA_KEY,
    TABLE_NAME,
    fixed_list_to_numpy,
    items_schema,
    sql_quote,
)


def default_index_dir() -> Path:
    """``$MMSEARCH_INDEX`` or ``./.mmsearch``."""
    return Path(os.environ.get("MMSEARCH_INDEX") or ".mmsearch")


@dataclass(frozen=True)
class StoredState:
    """What the table already knows about one item, for incremental diffs."""

    id: int
    mtime_ns: int | None
    size: int | None
    sha256: str | None


def _connect(index_dir: Path) -> Any:
    from mmsearch.storage.lanceimport import import_lancedb
    from mmsearch.storage.objectstore import table_location

    lancedb = import_lancedb()  # without the REST namespace client's 1 s __init__

    remote = table_location(index_dir)  # the local cache of an object-store index
    if remote is not None:
        return lancedb.connect(remote[0], storage_options=remote[1])
    return lancedb.connect(str(index_dir / DB_DIRNAME))


def _has_db(index_dir: Path) -> bool:
    from mmsearch.storage.objectstore import REMOTE_MARKER

    return (index_dir / DB_DIRNAME).is_dir() or (index_dir / REMOTE_MARKER).is_file()


def _table_exists(db: Any) -> bool:
    names = db.list_tables()
    names = getattr(names, "tables", names)
    return TABLE_NAME in list(names)


class ItemStore:
    """The items table of one index directory.

    >>> store = ItemStore.create("/tmp/idx", dim=64, spec=ModelSpec("mmsearch-tiny", ""))  # doctest: +SKIP
    >>> store.count()  # doctest: +SKIP
    0
    """

    def __init__(self, index_dir: Path, table: Any) -> None:
        self.index_dir = index_dir
        self.table = table

    @property
    def location(self) -> str:
        """How messages name this index: its object-store URI, or its directory."""
        return remote_uri_of(self.index_dir) or str(self.index_dir)

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def exists(cls, index_dir: str | os.PathLike[str]) -> bool:
        path = Path(index_dir)
        return _has_db(path) and _table_exists(_connect(path))

    @classmethod
    def open(cls, index_dir: str | os.PathLike[str], *, version: int | None = None) -> ItemStore:
        """Opens an existing index; ``version`` pins a read-only snapshot."""
        path = Path(index_dir)
        if not _has_db(path):
            raise IndexNotFoundError(
                f"no mmsearch index at {path} (create one with: mmsearch index PATH --index {path})"
            )
        db = _connect(path)
        if not _table_exists(db):
            raise IndexNotFoundError(
                f"no mmsearch index at {remote_uri_of(path) or path} (its items table is missing); "
                "create one with mmsearch index"
            )
        table = db.open_table(TABLE_NAME)
        if version is not None:
            table.checkout(version)
        return cls(path, table)

    @classmethod
    def create(
        cls,
        index_dir: str | os.PathLike[str],
        *,
        dim: int,
        spec: ModelSpec,
        lexical_fields: Sequence[str] | None = None,
    ) -> ItemStore:
        """Creates the table, or opens it when it exists and was built with ``spec``.

        ``lexical_fields`` chooses the metadata keys the full-text index covers (None: all
        string metadata); it applies to a new table only.
        """
        path = Path(index_dir)
        if cls.exists(path):
            store = cls.open(path)
            store.check_model(spec, dim)
            return store
        with write_guard(path):
            path.mkdir(parents=True, exist_ok=True)
            db = _connect(path)
            table = db.create_table(
                TABLE_NAME, schema=items_schema(dim, spec, lexical_fields), exist_ok=True
            )
        return cls(path, table)

    # -- model ---------------------------------------------------------------------------
    @property
    def model_spec(self) -> ModelSpec:
        meta = self.table.schema.metadata or {}
        raw = meta.get(MODEL_METADATA_KEY)
        if raw is None:
            raise IndexNotFoundError(f"index at {self.location} has no model stamp; rebuild it")
        return ModelSpec.from_json(raw.decode())

    @property
    def dim(self) -> int:
        return int(self.table.schema.field("vector").type.list_size)

    def check_model(self, spec: ModelSpec, dim: int | None = None) -> None:
        """Raises :class:`ModelMismatchError` when ``spec`` is not the table's model."""
        built = self.model_spec
        if built != spec or (dim is not None and dim != self.dim):
            raise ModelMismatchError(
                f"index at {self.location} was built with model {built.key}, not {spec.key}; "
                f"use --model {built.name}"
                + (f" --pretrained {built.pretrained}" if built.pretrained else "")
                + ", index into a new --index directory, or re-embed this index with the new"
                f" model: mmsearch index --reembed --model {spec.name}"
                + (f" --pretrained {spec.pretrained}" if spec.pretrained else "")
                + f" --index {self.location}"
            )

    # -- reading -------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self.table.version)

    def count(self) -> int:
        return int(self.table.count_rows())

    def scan(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        """Reads ``columns`` of every row (optionally filtered by a trusted predicate)."""
        query = self.table.search().select(list(columns))
        if where is not None:
            query = query.where(where)
        return query.limit(None).to_arrow()

    def state_by_uri(self, source: str | None = None) -> dict[str, StoredState]:
        """uri → stored state, for the rows of ``source`` (all rows when None)."""
        where = None if source is None else f"source = {sql_quote(source)}"
        tbl = self.scan(["uri", "id", "mtime_ns", "size", "sha256"], where)
        cols = {name: tbl.column(name).to_pylist() for name in tbl.column_names}
        return {
            uri: StoredState(i, m, s, h)
            for uri, i, m, s, h in zip(
                cols["uri"], cols["id"], cols["mtime_ns"], cols["size"], cols["sha256"], strict=True
            )
        }

    def sources(self) -> set[str]:
        """The folders and text collections (as uris) the table holds rows from."""
        column = self.scan(["source"]).column("source")
        return {s for s in pa.compute.unique(column).to_pylist() if s is not None}

    def max_id(self) -> int:
        """The largest row id (-1 for an empty table).

        ``n`` distinct ids of at least 0 reach ``n - 1``, so the rows at or above it hold
        the largest: a lookup in the id index, not a scan. A table that breaks that
        (duplicate ids, see :meth:`check_unique_ids`) is scanned whole."""
        count = self.count()
        if count == 0:
            return -1
        tbl = self.scan(["id"], f"id >= {count - 1}")
        if tbl.num_rows == 0:
            tbl = self.scan(["id"])
        return int(pa.compute.max(tbl.column("id")).as_py())

    def vectors(
        self, kind: str | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(ids, vectors) of all rows, or of rows of one ``kind``."""
        where = None if kind is None else f"kind = {sql_quote(kind)}"
        tbl = self.scan(["id", "vector"], where)
        ids = tbl.column("id").to_numpy().astype(np.int64, copy=False)
        vec = fixed_list_to_numpy(tbl.column("vector"), self.dim)
        return ids, vec

    def iter_vectors(
        self, kind: str, *, batch_rows: int = 65_536
    ) -> Iterator[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]]:
        """(vectors, ids) of one ``kind``'s rows in batches of increasing id, streamed from
        the table at its current (or checked-out) version, never the whole column in memory.

        Table order is not id order once rows were updated (``merge_insert`` rewrites a
        changed row at the end) or compacted; ANN segment files need ids in order. So the
        ids are read first (8 bytes a row), and each batch is one id range, sorted.
        """
        where = f"kind = {sql_quote(kind)}"
        ids = np.sort(self.scan(["id"], where).column("id").to_numpy().astype(np.int64))
        self.check_unique_ids(ids, presorted=True)
        for start in range(0, len(ids), batch_rows):
            lo, hi = int(ids[start]), int(ids[min(start + batch_rows, len(ids)) - 1])
            batch = self.scan(["id", "vector"], f"{where} AND id >= {lo} AND id <= {hi}")
            batch = batch.take(pa.array(np.argsort(batch.column("id").to_numpy(), kind="stable")))
            if batch.num_rows:
                yield (
                    fixed_list_to_numpy(batch.column("vector"), self.dim),
                    batch.column("id").to_numpy().astype(np.int64, copy=False),
                )

    def check_unique_ids(self, ids: npt.NDArray[np.int64], *, presorted: bool = False) -> None:
        """Raises :class:`IndexCorruptError` (pointing at ``mmsearch repair``) when ``ids``,
        read from this table, hold one id twice: rows of two items written at once by
        two writers that did not see each other."""
        ordered = ids if presorted else np.sort(ids)
        if len(ordered) > 1 and bool(np.any(ordered[1:] == ordered[:-1])):
            dup = int(ordered[1:][ordered[1:] == ordered[:-1]][0])
            raise IndexCorruptError(
                f"the table of {self.location} gives id {dup} (and maybe others) to several rows; "
                f"mend it with: mmsearch repair --index {self.location}"
            )

    @property
    def has_lexical_column(self) -> bool:
        return LEXICAL_COLUMN in self.table.schema.names

    def lexical_index_current(self) -> bool:
        """True when the full-text index exists and covers every row of this version."""
        if not self.has_lexical_column:
            return False
        names = [ix.name for ix in self.table.list_indices()]
        if LEXICAL_INDEX_NAME not in names:
            return False
        stats = self.table.index_stats(LEXICAL_INDEX_NAME)
        return stats is not None and int(stats.num_unindexed_rows) == 0

    # -- writing -------------------------------------------------------------------------
    def ensure_key_indexes(self) -> None:
        """Creates the B-tree indexes on ``uri`` and ``id`` that a table with rows lacks
        (once per table: each covers the rows of the moment; rows appended later are
        scanned until the ``optimize`` of :meth:`update_lexical_index` folds them in,
        as it does the full-text index's). Each creation is one commit."""
        from lancedb.index import BTree

        if self.count() == 0:
            return
        names = {ix.name for ix in self.table.list_indices()}
        for column, name in KEY_INDEXES.items():
            if name not in names:
                with write_guard(self.index_dir):
                    self.table.create_index(column, config=BTree(), name=name, replace=False)

    def update_lexical_index(self) -> str | None:
        """Creates or updates the full-text (BM25) index; returns its name (None: no lexical column).

        New and changed rows are folded into the existing index by ``optimize`` (which also
        compacts small data files; versions newer than a week are kept for readers);
        deleted rows drop out of results by themselves. Does nothing when the index
        already covers every row, so an unchanged table keeps its version.
        """
        if not self.has_lexical_column or self.count() == 0:
            return None
        if self.lexical_index_current():
            return LEXICAL_INDEX_NAME
        names = [ix.name for ix in self.table.list_indices()]
        with write_guard(self.index_dir):
            if LEXICAL_INDEX_NAME in names:
                self.table.optimize()  # folds the key indexes too
            else:
                from lancedb.index import FTS

                self.table.create_index(
                    LEXICAL_COLUMN,
                    config=FTS(with_position=False),
                    replace=True,
                    name=LEXICAL_INDEX_NAME,
                )
        self.ensure_key_indexes()
        return LEXICAL_INDEX_NAME

    def upsert(self, rows: pa.Table) -> None:
        """Inserts or replaces rows by ``uri`` in one atomic commit."""
        if rows.num_rows == 0:
            return
        rows = rows.select(self.table.schema.names).cast(self.table.schema)
        with write_guard(self.index_dir):
            (
                self.table.merge_insert("uri")
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(rows)
            )

    def delete_ids(self, ids: Iterable[int], chunk: int = 2000) -> int:
        """Deletes rows by id; returns how many ids were asked for."""
        id_list = sorted({int(i) for i in ids})
        for start in range(0, len(id_list), chunk):
            part = ",".join(str(i) for i in id_list[start : start + chunk])
            with write_guard(self.index_dir):
                self.table.delete(f"id IN ({part})")
        return len(id_list)
