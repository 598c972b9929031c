"""Typing of metadata columns read by :mod:`mmsearch.indexer.textsource`: one type per column.

CSV/TSV values are strings: a column becomes bool, int or float when *every* non-empty
value parses so (``"007"`` stays a string), empty cells become ``None``. JSON/Parquet
values keep their types; a column mixing types becomes strings, nested values become
JSON strings, dates their ISO spelling.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, Protocol

MetaValue = str | int | float | bool | None


class HasMetadata(Protocol):
    """A row with typed metadata (:class:`mmsearch.indexer.textsource.TextRow` is one)."""

    @property
    def metadata(self) -> dict[str, MetaValue]: ...


_INT_RE = re.compile(r"-?(?:0|[1-9]\d{0,17})")
_FLOAT_RE = re.compile(r"-?(?:(?:0|[1-9]\d*)(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_BOOLS = {"true": True, "false": False}
_INT64 = (-(2**63), 2**63 - 1)


def type_metadata(
    rows: Sequence[HasMetadata], columns: list[str], *, infer_from_strings: bool
) -> None:
    """Give every row every metadata column, with one type per column (in place)."""
    for col in columns:
        values = [row.metadata.get(col) for row in rows]
        if infer_from_strings:
            typed = _infer_strings([None if v is None or v == "" else str(v) for v in values])
        else:
            typed = _unify([_plain(v) for v in values])
        for row, value in zip(rows, typed, strict=True):
            row.metadata[col] = value
    for row in rows:  # drop keys that are not columns (cannot happen) and fix the order
        ordered = {col: row.metadata.get(col) for col in columns}
        row.metadata.clear()
        row.metadata.update(ordered)


def infer_string_column(values: list[str | None]) -> list[MetaValue]:
    """Types a CSV column: bool, int or float when every value fits, else str ("" → None)."""
    return _infer_strings([None if v is None or v == "" else v for v in values])


def _infer_strings(values: list[str | None]) -> list[MetaValue]:
    present = [v for v in values if v is not None]
    if not present:
        return [None] * len(values)
    if all(v.lower() in _BOOLS for v in present):
        return [None if v is None else _BOOLS[v.lower()] for v in values]
    if all(_INT_RE.fullmatch(v) for v in present):
        return [None if v is None else int(v) for v in values]
    if all(_FLOAT_RE.fullmatch(v) for v in present):
        return [None if v is None else float(v) for v in values]
    return list(values)


def _plain(value: Any) -> MetaValue:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _unify(values: list[MetaValue]) -> list[MetaValue]:
    kinds = {type(v) for v in values if v is not None}
    if kinds == {int} and all(_INT64[0] <= v <= _INT64[1] for v in values if isinstance(v, int)):
        return values
    if kinds <= {int, float} and kinds != {int}:
        return [None if v is None else float(v) for v in values]
    if len(kinds) <= 1 and kinds != {int}:
        return values
    # Mixed types (or ints beyond int64): one string column, JSON spelling for scalars.
    return [v if v is None or isinstance(v, str) else _json_scalar(v) for v in values]


def _json_scalar(value: MetaValue) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value)
