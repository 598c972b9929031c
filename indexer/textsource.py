"""Read a text collection (CSV, TSV, JSONL or Parquet) into validated rows.

A bad *row* is skipped and reported (:class:`RowProblem`: 1-based row number, reason,
exception class); the other rows are kept. A bad *file* raises
:class:`~mmsearch.errors.TextCollectionError` before any row is returned, so nothing
is written for it: missing file, unknown extension, empty file, a requested column
that does not exist (the message lists the columns that do), no usable text column,
text that is not valid in the file's encoding, an unreadable Parquet file.

Decisions a caller should know:

* Format by extension: ``.csv``, ``.tsv``, ``.jsonl`` / ``.ndjson`` / ``.json-lines``,
  ``.parquet`` / ``.pq`` (case-insensitive).
* Row numbers: CSV/TSV count data records after the header (blank lines are not
  counted; the reason also gives the physical line); JSONL uses the line number;
  Parquet the 1-based row index.
* Encoding (CSV/JSONL): UTF-8, with or without BOM; a UTF-16 BOM is honoured. Any
  byte that is not valid UTF-8 raises ``TextCollectionError`` naming its byte offset
  and line - we never guess cp1252/latin-1, which would index mojibake silently.
  Pass ``encoding="cp1252"`` (or the real encoding) to read such a file deliberately.
* Text column: ``text_column`` or, when ``None``, the first of
  :data:`TEXT_COLUMN_CANDIDATES` present (exact name first, then case-insensitive).
  Empty/whitespace-only text and text longer than ``max_text_chars`` are skipped and
  reported (never silently truncated). Text is kept as written (not stripped).
* Id column: ``id_column`` or, when ``None``, the first of :data:`ID_COLUMN_CANDIDATES`
  present; with none, ids are derived as ``f"{file stem}:{row_number}"`` (stable while
  rows are only appended). Ids are strings; a missing/empty id skips the row; a
  repeated id keeps the first row and reports the later ones.
* Every other column becomes metadata, typed per column across the file: CSV values
  are inferred as bool/int/float when *every* non-empty value of the column parses so
  (``"007"`` stays a string), empty cells are ``None``; JSON/Parquet values keep their
  types, a column mixing types becomes strings, nested values become JSON strings.
* The whole file is parsed before returning (C-speed ``csv`` / ``json`` / pyarrow
  batches; no per-character Python work).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmsearch.indexer.textformats import (
    Records,
    RowError,
    RowProblem,
    format_of,
    read_records,
)
from mmsearch.indexer.texttypes import MetaValue, type_metadata

from mmsearch.errors import TextCollectionError

__all__ = [
    "ID_COLUMN_CANDIDATES",
    "TEXT_COLUMN_CANDIDATES",
    "RowProblem",
    "TextCollection",
    "TextRow",
    "read_text_collection",
]

TEXT_COLUMN_CANDIDATES = ("caption", "text", "title", "description", "name")
ID_COLUMN_CANDIDATES = ("id", "item_id", "product_id")


@dataclass(frozen=True)
class TextRow:
    """One usable row: 1-based row number, string id, the text, typed metadata."""

    row_number: int
    id: str
    text: str
    metadata: dict[str, MetaValue]


@dataclass(frozen=True)
class TextCollection:
    """Result of :func:`read_text_collection`; unpacks as ``rows, problems`` too."""

    rows: list[TextRow]
    problems: list[RowProblem]
    columns: tuple[str, ...]
    text_column: str
    id_column: str | None  # None: ids derived as "{stem}:{row_number}"
    format: str
    encoding: str | None  # None for Parquet

    def __iter__(self) -> Iterator[Any]:
        return iter((self.rows, self.problems))


class EmptyTextError(RowError):
    pass


class TextTooLongError(RowError):
    pass


class MissingIdError(RowError):
    pass


class DuplicateIdError(RowError):
    pass


class BadValueError(RowError):
    pass


def read_text_collection(
    path: str | os.PathLike[str],
    *,
    text_column: str | None = None,
    id_column: str | None = None,
    max_text_chars: int = 10_000,
    encoding: str | None = None,
) -> TextCollection:
    """Read and validate a CSV/TSV/JSONL/Parquet text collection (see the module docstring).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "items.csv"
    >>> _ = p.write_text("id,caption,price\\n1,red shirt,9.5\\n2,,3\\n1,blue hat,4\\n")
    >>> rows, problems = read_text_collection(p)
    >>> [(r.id, r.text, r.metadata) for r in rows]
    [('1', 'red shirt', {'price': 9.5})]
    >>> [(p.row_number, p.exc_class) for p in problems]
    [(2, 'EmptyTextError'), (3, 'DuplicateIdError')]
    """
    if max_text_chars <= 0:
        raise ValueError(f"max_text_chars must be positive, got {max_text_chars}")
    path = Path(path)
    fmt = format_of(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise TextCollectionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not path.is_file():
        raise TextCollectionError(f"{path} is not a file")
    if size == 0:
        raise TextCollectionError(f"{path} is empty")

    columns, records, problems, used_encoding = read_records(path, encoding)

    text_col = _pick_column(columns, text_column, TEXT_COLUMN_CANDIDATES, "text", path)
    assert text_col is not None
    id_col = _pick_column(columns, id_column, ID_COLUMN_CANDIDATES, "id", path, required=False)
    rows = _validate(records, problems, text_col, id_col, max_text_chars, path.stem)
    meta_cols = [c for c in columns if c not in (text_col, id_col)]
    type_metadata(rows, meta_cols, infer_from_strings=fmt in ("csv", "tsv"))
    problems.sort(key=lambda p: p.row_number)
    return TextCollection(rows, problems, tuple(columns), text_col, id_col, fmt, used_encoding)


# --- columns and row validation ----------------------------------------------------------


def _pick_column(
    columns: list[str],
    requested: str | None,
    candidates: tuple[str, ...],
    role: str,
    path: Path,
    *,
    required: bool = True,
) -> str | None:
    if requested is not None:
        if requested in columns:
            return requested
        hint = _delimiter_hint(columns)
        raise TextCollectionError(
            f"{path} has no {role} column {requested!r}; its columns are {columns}{hint}"
        )
    for name in candidates:
        if name in columns:
            return name
    lowered = {c.lower(): c for c in reversed(columns)}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    if not required:
        return None
    raise TextCollectionError(
        f"{path} has none of the usual {role} columns {list(candidates)}; its columns are "
        f"{columns}{_delimiter_hint(columns)}. Name one with {role}_column=..."
    )


def _delimiter_hint(columns: list[str]) -> str:
    if len(columns) == 1 and any(sep in columns[0] for sep in ";|\t,"):
        return " - is the file using another delimiter?"
    return ""


def _validate(
    records: Records,
    problems: list[RowProblem],
    text_col: str,
    id_col: str | None,
    max_text_chars: int,
    stem: str,
) -> list[TextRow]:
    rows: list[TextRow] = []
    first_row_of: dict[str, int] = {}
    for number, record in records:
        try:
            text = _text_value(record.get(text_col), text_col, max_text_chars)
            row_id = _id_value(record.get(id_col), id_col) if id_col else f"{stem}:{number}"
            if row_id in first_row_of:
                raise DuplicateIdError(f"id {row_id!r} already used by row {first_row_of[row_id]}")
        except RowError as exc:
            problems.append(RowProblem(number, str(exc), type(exc).__name__))
            continue
        first_row_of[row_id] = number
        meta = {k: v for k, v in record.items() if k != text_col and k != id_col}
        rows.append(TextRow(number, row_id, text, meta))
    return rows


def _text_value(value: Any, column: str, max_chars: int) -> str:
    if value is None:
        raise EmptyTextError(f"no text in column {column!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise BadValueError(f"text in column {column!r} is a {type(value).__name__}, not a string")
    if not value.strip():
        raise EmptyTextError(f"empty text in column {column!r}")
    _check_unicode(value, f"text in column {column!r}")
    if len(value) > max_chars:
        raise TextTooLongError(f"text is {len(value)} characters, over max_text_chars={max_chars}")
    return value


def _id_value(value: Any, column: str) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 12.0 from a float column is id "12", as in CSV
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        text = str(value).strip()
        if text:
            _check_unicode(text, f"id in column {column!r}")
            return text
    if value is None or value == "":
        raise MissingIdError(f"no id in column {column!r}")
    raise BadValueError(f"id in column {column!r} is a {type(value).__name__}: {value!r}")


def _check_unicode(value: str, what: str) -> None:
    """Refuses unpaired surrogates (JSON ``"\\ud800"``): not Unicode, and not storable."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        raise BadValueError(
            f"{what} has an unpaired surrogate U+{ord(bad):04X} at character {exc.start}"
        ) from None
