"""LanceDB storage of one mmsearch index: the ``items`` table and its schema.

One table holds every indexed item, images and texts alike. Rows are keyed by
``uri`` (unique) and carry a stable int64 ``id`` that the ANN index uses as its
FAISS id. The model that produced the vectors is stamped into the table's schema
metadata, so a table always knows which model made it.

Writes go through :meth:`ItemStore.upsert` (one atomic LanceDB commit per batch,
``merge_insert`` on ``uri``), so a process killed mid-run leaves the table at a
committed prefix with no duplicate uris.

Full-text search: each row's :data:`LEXICAL_COLUMN` holds its text plus the values
of its string metadata (all of them, or the keys stamped in the schema metadata under
``mmsearch.lexical_fields``); LanceDB's native full-text (BM25) index covers that one
column and :meth:`ItemStore.update_lexical_index` keeps it current.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from mmsearch.errors import IndexNotFoundError, ModelMismatchError, StorageError
from mmsearch.models.spec import ModelSpec

TABLE_NAME = "items"
MODEL_METADATA_KEY = b"mmsearch.model"
DIM_METADATA_KEY = b"mmsearch.dim"
LEXICAL_FIELDS_METADATA_KEY = b"mmsearch.lexical_fields"
DB_DIRNAME = "db"
#: The column the full-text index covers: text + string metadata values.
LEXICAL_COLUMN = "search_text"
LEXICAL_INDEX_NAME = f"{LEXICAL_COLUMN}_idx"

#: Columns every row has, besides ``vector``.
CORE_COLUMNS = ("id", "uri", "kind", "text", "source", "mtime_ns", "size", "sha256", "metadata")


def default_index_dir() -> Path:
    """``$MMSEARCH_INDEX`` or ``./.mmsearch``."""
    return Path(os.environ.get("MMSEARCH_INDEX") or ".mmsearch")


def items_schema(
    dim: int, spec: ModelSpec, lexical_fields: Sequence[str] | None = None
) -> pa.Schema:
    """The Arrow schema of the items table for vectors of size ``dim``.

    ``lexical_fields``: the metadata keys whose string values the full-text index
    covers besides the text (None: every string metadata value).
    """
    meta = {MODEL_METADATA_KEY: spec.to_json().encode(), DIM_METADATA_KEY: str(dim).encode()}
    if lexical_fields is not None:
        meta[LEXICAL_FIELDS_METADATA_KEY] = json.dumps(list(lexical_fields)).encode()
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
            pa.field("text", pa.string()),
            pa.field("source", pa.string()),
            pa.field("mtime_ns", pa.int64()),
            pa.field("size", pa.int64()),
            pa.field("sha256", pa.string()),
            pa.field("metadata", pa.string()),  # JSON object of the item's other columns
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field(LEXICAL_COLUMN, pa.string()),
        ],
        metadata=meta,
    )


def lexical_text(
    text: str | None, metadata: Mapping[str, Any] | None, fields: Sequence[str] | None
) -> str | None:
    """What the full-text index sees of a row: its text, then its string metadata values."""
    parts = [text] if text else []
    if metadata:
        keys = sorted(metadata) if fields is None else [f for f in fields if f in metadata]
        parts.extend(v for v in (metadata[key] for key in keys) if isinstance(v, str) and v)
    joined = " \n".join(parts)
    # A non-UTF-8 file name arrives with lone surrogates; index it as readable text.
    return joined.encode("utf-8", "surrogateescape").decode("utf-8", "replace") or None


def lexical_fields_of(schema: pa.Schema) -> list[str] | None:
    raw = (schema.metadata or {}).get(LEXICAL_FIELDS_METADATA_KEY)
    return None if raw is None else [str(f) for f in json.loads(raw)]


@dataclass(frozen=True)
class StoredState:
    """What the table already knows about one item, for incremental diffs."""

    id: int
    mtime_ns: int | None
    size: int | None
    sha256: str | None


@contextmanager
def write_guard(index_dir: Path) -> Iterator[None]:
    """Turns I/O failures while writing the index (disk full, ...) into :class:`StorageError`."""
    try:
        yield
    except OSError as exc:
        raise StorageError(
            f"cannot write the index at {index_dir}: {exc.strerror or exc}; "
            "fix that and re-run (work committed so far is kept)"
        ) from exc
    except RuntimeError as exc:  # lance reports I/O errors as RuntimeError("lance error: ...")
        if "lance error" not in str(exc) and "LanceError" not in str(exc):
            raise
        detail = str(exc).split(", /", 1)[0].replace("lance error: ", "")
        raise StorageError(
            f"cannot write the index at {index_dir}: {detail}; fix that and re-run (work committed so far is kept)"
        ) from exc


WRITE_LOCK_NAME = ".write.lock"


@contextmanager
def index_write_lock(index_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Holds the index directory's writer lock; a second writer fails fast.

    Two indexing runs writing one index at once would hand out the same row ids.
    The lock is an advisory ``flock``: the OS releases it when the process dies.
    """
    import fcntl

    path = Path(index_dir)
    with write_guard(path):
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / WRITE_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(
                f"another mmsearch process is writing the index at {path}; wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def _connect(index_dir: Path) -> Any:
    import lancedb

    from mmsearch.objectstore import table_location

    remote = table_location(index_dir)  # the local cache of an object-store index
    if remote is not None:
        return lancedb.connect(remote[0], storage_options=remote[1])
    return lancedb.connect(str(index_dir / DB_DIRNAME))


def _has_db(index_dir: Path) -> bool:
    from mmsearch.objectstore import REMOTE_MARKER

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
                f"index directory {path} has no items table; re-run mmsearch index"
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
            raise IndexNotFoundError(f"index at {self.index_dir} has no model stamp; rebuild it")
        return ModelSpec.from_json(raw.decode())

    @property
    def dim(self) -> int:
        return int(self.table.schema.field("vector").type.list_size)

    def check_model(self, spec: ModelSpec, dim: int | None = None) -> None:
        """Raises :class:`ModelMismatchError` when ``spec`` is not the table's model."""
        built = self.model_spec
        if built != spec or (dim is not None and dim != self.dim):
            raise ModelMismatchError(
                f"index at {self.index_dir} was built with model {built.key}, not {spec.key}; "
                f"use --model {built.name}"
                + (f" --pretrained {built.pretrained}" if built.pretrained else "")
                + " or index into a new --index directory"
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
        tbl = self.scan(["id"])
        if tbl.num_rows == 0:
            return -1
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
        for start in range(0, len(ids), batch_rows):
            lo, hi = int(ids[start]), int(ids[min(start + batch_rows, len(ids)) - 1])
            batch = self.scan(["id", "vector"], f"{where} AND id >= {lo} AND id <= {hi}")
            batch = batch.take(pa.array(np.argsort(batch.column("id").to_numpy(), kind="stable")))
            if batch.num_rows:
                yield (
                    fixed_list_to_numpy(batch.column("vector"), self.dim),
                    batch.column("id").to_numpy().astype(np.int64, copy=False),
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
                self.table.optimize()
            else:
                from lancedb.index import FTS

                self.table.create_index(
                    LEXICAL_COLUMN,
                    config=FTS(with_position=False),
                    replace=True,
                    name=LEXICAL_INDEX_NAME,
                )
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


def make_rows(
    *,
    ids: Sequence[int],
    uris: Sequence[str],
    kind: str,
    texts: Sequence[str | None],
    source: str,
    mtime_ns: Sequence[int | None],
    sizes: Sequence[int | None],
    sha256: Sequence[str | None],
    metadata: Sequence[Mapping[str, Any] | None],
    vectors: npt.NDArray[np.float32],
    schema: pa.Schema,
) -> pa.Table:
    """Builds an Arrow batch in the table's schema; all inputs are aligned by position."""
    n = len(ids)
    if not (
        len(uris)
        == len(texts)
        == len(mtime_ns)
        == len(sizes)
        == len(sha256)
        == len(metadata)
        == n
        == len(vectors)
    ):
        raise ValueError("make_rows: inputs are not aligned")
    dim = schema.field("vector").type.list_size
    fields = lexical_fields_of(schema)
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "uri": pa.array(uris, pa.string()),
            "kind": pa.array([kind] * n, pa.string()),
            "text": pa.array(texts, pa.string()),
            "source": pa.array([source] * n, pa.string()),
            "mtime_ns": pa.array(mtime_ns, pa.int64()),
            "size": pa.array(sizes, pa.int64()),
            "sha256": pa.array(sha256, pa.string()),
            "metadata": pa.array(
                [json.dumps(m, sort_keys=True, default=str) if m else None for m in metadata],
                pa.string(),
            ),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            LEXICAL_COLUMN: pa.array(
                [lexical_text(t, m, fields) for t, m in zip(texts, metadata, strict=True)],
                pa.string(),
            ),
        },
        schema=_with_lexical(schema),
    ).select(schema.names)


def _with_lexical(schema: pa.Schema) -> pa.Schema:
    """``schema`` plus the lexical column (tables made before full-text search lack it)."""
    if LEXICAL_COLUMN in schema.names:
        return schema
    return schema.append(pa.field(LEXICAL_COLUMN, pa.string()))


def fixed_list_to_numpy(column: pa.ChunkedArray | pa.Array, dim: int) -> npt.NDArray[np.float32]:
    """A fixed_size_list<float32, dim> column as an (n, dim) float32 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(-1, dim)


def sql_quote(value: str) -> str:
    """Quotes a string literal for a LanceDB (DataFusion SQL) predicate."""
    return "'" + str(value).replace("'", "''") + "'"
