"""The file formats of text collections and product feeds: CSV, TSV, JSONL and Parquet.

Each reader returns the columns (in file order), the records as ``(row number, dict)``
and the rows it could not parse (:class:`RowProblem`); a file it cannot read at all
raises :class:`~mmsearch.errors.TextCollectionError`. Row numbers: CSV/TSV count data
records after the header (blank lines are not counted; the reason also gives the
physical line); JSONL uses the line number; Parquet the 1-based row index.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmsearch.indexer.textencoding import detect_encoding, encoding_message

from mmsearch.errors import TextCollectionError

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json-lines": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass(frozen=True)
class RowProblem:
    """One skipped row: 1-based row number, human reason, exception class name."""

    row_number: int
    reason: str
    exc_class: str


# Row-level rejections. Their class names are what RowProblem.exc_class reports.
class RowError(ValueError):
    """A row cannot be used; the collection carries on."""


class FieldCountError(RowError):
    pass


class NotAnObjectError(RowError):
    pass


Records = list[tuple[int, dict[str, Any]]]


def format_of(path: Path) -> str:
    name = path.name.lower()
    for ext, fmt in FORMATS.items():
        if name.endswith(ext):
            return fmt
    raise TextCollectionError(
        f"unknown text collection format {path.suffix or path.name!r}: use one of {', '.join(FORMATS)}"
    )


def read_csv(
    path: Path, encoding: str, delimiter: str
) -> tuple[list[str], Records, list[RowProblem]]:
    records: Records = []
    problems: list[RowProblem] = []
    with open(path, encoding=encoding, newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next((r for r in reader if r), None)
        except csv.Error as exc:
            raise TextCollectionError(f"{path}: unreadable header row: {exc}") from exc
        if header is None:
            raise TextCollectionError(f"{path} has no header row")
        columns = clean_header(header, path)
        number = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                number += 1
                problems.append(RowProblem(number, f"line {reader.line_num}: {exc}", "csv.Error"))
                continue
            if not fields:
                continue  # blank line
            number += 1
            if len(fields) != len(columns):
                reason = (
                    f"line {reader.line_num}: expected {len(columns)} fields, got {len(fields)}"
                )
                problems.append(RowProblem(number, reason, FieldCountError.__name__))
                continue
            records.append((number, dict(zip(columns, fields, strict=True))))
    return columns, records, problems


def clean_header(header: list[str], path: Path) -> list[str]:
    columns = [name.strip() or f"column_{i}" for i, name in enumerate(header, start=1)]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise TextCollectionError(f"{path}: header repeats column names {dupes}")
    return columns


def read_jsonl(path: Path, encoding: str) -> tuple[list[str], Records, list[RowProblem]]:
    records: Records = []
    problems: list[RowProblem] = []
    columns: dict[str, None] = {}  # ordered set, in first-seen order
    with open(path, encoding=encoding, newline="\n") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(RowProblem(number, f"malformed JSON: {exc}", "JSONDecodeError"))
                continue
            except RecursionError as exc:
                problems.append(RowProblem(number, "JSON nested too deeply", type(exc).__name__))
                continue
            if not isinstance(obj, dict):
                reason = f"expected a JSON object, got {type(obj).__name__}"
                problems.append(RowProblem(number, reason, NotAnObjectError.__name__))
                continue
            columns.update(dict.fromkeys(obj))
            records.append((number, obj))
    if not records and not problems:
        raise TextCollectionError(f"{path} has no JSON lines")
    return list(columns), records, problems


def read_parquet(path: Path) -> tuple[list[str], Records, list[RowProblem]]:
    import pyarrow.parquet as pq

    records: Records = []
    try:
        pf = pq.ParquetFile(path)
        columns = list(pf.schema_arrow.names)
        number = 0
        for batch in pf.iter_batches(batch_size=16_384):
            for row in batch.to_pylist():
                number += 1
                records.append((number, row))
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError, ... all mean "unreadable"
        raise TextCollectionError(f"{path} is not a readable Parquet file: {exc}") from exc
    return columns, records, []


def read_records(
    path: Path, encoding: str | None = None
) -> tuple[list[str], Records, list[RowProblem], str | None]:
    """Any format of :data:`FORMATS`: its reader's columns, records and problems, and the
    text encoding used (``encoding``, else detected; None for Parquet). Undecodable text
    and unreadable files raise :class:`~mmsearch.errors.TextCollectionError`."""
    fmt = format_of(path)
    if fmt == "parquet":
        return (*read_parquet(path), None)
    try:
        used = encoding or detect_encoding(path)
        try:
            if fmt == "jsonl":
                return (*read_jsonl(path, used), used)
            return (*read_csv(path, used, "\t" if fmt == "tsv" else ","), used)
        except UnicodeDecodeError as exc:
            raise TextCollectionError(encoding_message(path, used, exc)) from exc
    except OSError as exc:
        raise TextCollectionError(f"cannot read {path}: {exc.strerror or exc}") from exc
