"""The Arrow schema of an index's ``items`` table, and rows built in it.

One table holds every indexed item, images and texts alike. Rows are keyed by
``uri`` (unique) and carry a stable int64 ``id`` that the ANN index uses as its
FAISS id. The model that produced the vectors is stamped into the table's schema
metadata, so a table always knows which model made it.

Full-text search: each row's :data:`LEXICAL_COLUMN` holds its text plus the values
of its string metadata (all of them, or the keys stamped in the schema metadata under
``mmsearch.lexical_fields``); LanceDB's native full-text (BM25) index covers that one
column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from mmsearch.models.spec import ModelSpec

TABLE_NAME = "items"

MODEL_METADATA_KEY = b"mmsearch.model"

DIM_METADATA_KEY = b"mmsearch.dim"

LEXICAL_FIELDS_METADATA_KEY = b"mmsearch.lexical_fields"

DB_DIRNAME = "db"

#: The column the full-text index covers: text + string metadata values.
LEXICAL_COLUMN = "search_text"

LEXICAL_INDEX_NAME = f"{LEXICAL_COLUMN}_idx"

#: Scalar (B-tree) indexes on the row keys: ``merge_insert`` on ``uri``, a record's rows
#: by ``uri`` range and rows by ``id`` are index lookups, not scans of the whole table.
KEY_INDEXES = {"uri": "uri_idx", "id": "id_idx"}


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
