"""Product feeds (CSV, TSV, JSONL, Parquet) read as records.

A collection file is a product feed when it has an image column (``--image-column``,
or one of :data:`IMAGE_COLUMNS`). The columns of common merchant feeds are recognised
without flags: ``id``, ``title`` and ``description`` (the text), ``image_link`` and
``additional_image_link`` (comma-separated URLs), ``price`` and ``sale_price`` like
``59.00 USD`` (a number, plus ``currency``), ``brand``, ``gtin``, ``availability``.
Identifier columns (``id``, ``gtin``, ``mpn``, ``sku``) stay strings; other CSV
columns are typed per column across the file, as in text collections.

A row without an id, or with an id already used, is reported with its row number;
when any row could not be read, the run does not remove records the feed seems to have
dropped (the unreadable row might be one of them).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmsearch.indexer.discover import path_to_uri
from mmsearch.indexer.options import IndexOptions
from mmsearch.indexer.recordimages import ImageResolver
from mmsearch.indexer.records import RecordSource
from mmsearch.indexer.recordtypes import Record, RecordFields, UpsertReport, read_record
from mmsearch.indexer.report import Failure, IndexReport
from mmsearch.indexer.textencoding import detect_encoding
from mmsearch.indexer.textformats import RowProblem, format_of, read_records
from mmsearch.indexer.textsource import TextRow
from mmsearch.indexer.texttypes import type_metadata

from mmsearch.errors import TextCollectionError
from mmsearch.urlfetch import FetchPolicy

#: Image columns that make a collection a product feed (first found is the main image).
IMAGE_COLUMNS = ("image_link", "image", "image_url", "images")
#: More images, comma-separated.
ADDITIONAL_IMAGE_COLUMNS = ("additional_image_link", "additional_image_links")
ID_COLUMNS = ("id", "item_id", "product_id", "sku")
#: Never typed as numbers: "00012345678905" is an identifier.
STRING_COLUMNS = frozenset({"id", "item_id", "product_id", "sku", "gtin", "mpn", "item_group_id"})
PRICE_COLUMNS = ("price", "sale_price")
_PRICE_RE = re.compile(r"^\s*([-+]?\d+(?:[.,]\d+)?)\s*([A-Za-z]{3})?\s*$")


@dataclass(frozen=True)
class Feed:
    """A feed read: its records (in file order) and the rows that could not be used."""

    records: list[Record]
    problems: list[RowProblem]


def feed_columns(path: Path) -> list[str]:
    """The column names of a collection file, read from its header alone."""
    fmt = format_of(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        encoding = detect_encoding(path)
        with open(path, encoding=encoding, newline="") as fh:
            if fmt == "jsonl":
                line = next((ln for ln in fh if ln.strip()), "{}")
                obj = json.loads(line)
                return list(obj) if isinstance(obj, dict) else []
            header = next(csv.reader(fh, delimiter="\t" if fmt == "tsv" else ","), [])
            return [h.strip() for h in header]
    except (OSError, ValueError, csv.Error):
        return []  # unreadable: read_text_collection says why


def is_product_feed(path: Path, image_column: str | None) -> bool:
    """Whether the collection at ``path`` is read as a product feed (see the module doc)."""
    columns = feed_columns(path)
    if image_column is not None:
        return image_column in columns
    return any(c in columns for c in IMAGE_COLUMNS)


def read_feed(
    path: str | os.PathLike[str],
    *,
    id_column: str | None = None,
    image_column: str | None = None,
    text_column: str | None = None,
) -> Feed:
    """Reads a product feed (see the module docstring)."""
    path = Path(path)
    fmt = format_of(path)
    columns, rows, problems, _ = read_records(path)
    id_col = _pick(columns, id_column, ID_COLUMNS, "id", path)
    image_col = _pick(columns, image_column, IMAGE_COLUMNS, "image", path)
    more = [c for c in ADDITIONAL_IMAGE_COLUMNS if c in columns]
    text_fields = (text_column,) if text_column else ("title", "description")
    if text_column is not None and text_column not in columns:
        raise TextCollectionError(
            f"{path} has no text column {text_column!r}; its columns are {columns}"
        )
    typed = [
        c
        for c in columns
        if c not in STRING_COLUMNS
        and c not in (id_col, image_col, *more, *text_fields, *PRICE_COLUMNS)
    ]
    if fmt in ("csv", "tsv"):  # strings to numbers and booleans, per column across the file
        wrapped = [TextRow(n, "", "", {c: row.get(c) for c in typed}) for n, row in rows]
        type_metadata(wrapped, typed, infer_from_strings=True)
        for (_, row), typed_row in zip(rows, wrapped, strict=True):
            row.update(typed_row.metadata)
    fields = RecordFields(text_fields=text_fields, image_fields=("__images",), id_field=id_col)
    records: list[Record] = []
    first: dict[str, int] = {}
    for number, row in rows:
        row["__images"] = _images(row, image_col, more)
        for column in more:
            row.pop(column, None)
        row.pop(image_col, None)
        _split_prices(row)
        if fmt in ("csv", "tsv"):
            row = {k: (None if v == "" else v) for k, v in row.items()}
        try:
            record = read_record(row, fields, number)
        except ValueError as exc:
            problems.append(
                RowProblem(number, str(exc).replace(f"record {number}", "row"), "MissingIdError")
            )
            continue
        if record.id in first:
            reason = f"id {record.id!r} already used by row {first[record.id]}"
            problems.append(RowProblem(number, reason, "DuplicateIdError"))
            continue
        first[record.id] = number
        records.append(record)
    problems.sort(key=lambda p: p.row_number)
    return Feed(records, problems)


def _pick(
    columns: list[str], requested: str | None, candidates: tuple[str, ...], role: str, path: Path
) -> str:
    if requested is not None:
        if requested not in columns:
            raise TextCollectionError(
                f"{path} has no {role} column {requested!r}; its columns are {columns}"
            )
        return requested
    found = next((c for c in candidates if c in columns), None)
    if found is None:
        raise TextCollectionError(
            f"{path} has none of the usual {role} columns {list(candidates)}; its columns are "
            f"{columns}. Name one with --{role}-column"
        )
    return found


def _images(row: dict[str, Any], image_col: str, more: list[str]) -> list[Any]:
    out: list[Any] = []
    main = row.get(image_col)
    if isinstance(main, list):
        out += main
    elif main not in (None, ""):
        out.append(str(main).strip())
    for column in more:
        value = row.get(column)
        if isinstance(value, list):
            out += value
        elif value not in (None, ""):
            out += [v.strip() for v in str(value).split(",") if v.strip()]
    return out


def parse_price(value: Any) -> tuple[float | None, str | None]:
    """``"59.00 USD"`` → ``(59.0, "USD")``; a number stays a number; anything else ``(None, None)``.

    >>> parse_price("59.00 USD"), parse_price(12), parse_price("n/a")
    ((59.0, 'USD'), (12.0, None), (None, None))
    """
    if isinstance(value, bool) or value is None:
        return None, None
    if isinstance(value, (int, float)):
        return float(value), None
    m = _PRICE_RE.match(str(value))
    if m is None:
        return None, None
    return float(m.group(1).replace(",", ".")), (m.group(2).upper() if m.group(2) else None)


def _split_prices(row: dict[str, Any]) -> None:
    for column in PRICE_COLUMNS:
        if column in row and row[column] not in (None, ""):
            amount, currency = parse_price(row[column])
            row[column] = amount
            if currency and not row.get("currency"):
                row["currency"] = currency


#: Feed records fetched, decoded and committed together.
FEED_CHUNK = 256


@contextmanager
def feed_source(path: Path, opts: IndexOptions, report: IndexReport) -> Iterator[RecordSource]:
    """The records of the feed at ``path`` as a source whose sweep removes the records the
    feed no longer has (not when a row could not be read); read problems go to ``report``."""
    path = Path(os.path.abspath(path))
    feed = read_feed(
        path, id_column=opts.id_column, image_column=opts.image_column, text_column=opts.text_column
    )
    for problem in feed.problems:
        report.failures.append(
            Failure(
                str(path), problem.reason, problem.exc_class, "read", row_number=problem.row_number
            )
        )
    if feed.problems:
        report.sweep_aborted.append(str(path))
    if report.records is None:
        report.records = UpsertReport()
    chunks = [feed.records[i : i + FEED_CHUNK] for i in range(0, len(feed.records), FEED_CHUNK)]
    with ImageResolver(FetchPolicy(allow_private=opts.allow_private_urls)) as resolver:
        yield RecordSource(
            chunks, resolver, report.records, source=path_to_uri(str(path)),
            sweep_missing=not feed.problems,
        )  # fmt: skip
