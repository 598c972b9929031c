"""Typed metadata filters, compiled to Arrow compute expressions — never to SQL text.

A filter is a flat AND of conditions on allow-listed columns (the item's metadata
keys plus ``kind``). Values are typed by the column: a number for a numeric column
(``"20"`` → 20.0, ``"abc"`` is an error), a string otherwise. A user's text is only
ever an Arrow scalar, so ``x' OR 1=1 --`` is a string that matches nothing.

    parse_where(["price < 20", "category = buttons", "colour in red,blue"])
    where={"price": ("<", 20), "category": "buttons", "colour": ("in", ["red", "blue"])}
    where={"price__lt": 20, "colour__in": ["red", "blue"]}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.errors import BadQueryError

OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in", "contains")
MAX_CONDITIONS = 16
MAX_VALUES = 100
MAX_VALUE_CHARS = 256
MAX_FILTER_CHARS = 4096
#: The engine's own row-id column in the table filters run on; metadata may have an ``id``.
ROW_ID_COLUMN = "__row_id"
RESERVED = frozenset({ROW_ID_COLUMN, "vector", "metadata", "sha256"})

_CONDITION = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_.]{0,63})\s*(!=|<=|>=|=|<|>|\bin\b|\bcontains\b)\s*(.*?)\s*$", re.S
)

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Condition:
    """``column op value``; ``value`` is a tuple for ``in``."""

    column: str
    op: str
    value: Scalar | tuple[Scalar, ...]


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def parse_where(expressions: Iterable[str]) -> list[Condition]:
    """Parses CLI/HTTP conditions like ``price <= 20`` or ``colour in red,blue``."""
    out: list[Condition] = []
    total = 0
    for expr in expressions:
        total += len(expr)
        if total > MAX_FILTER_CHARS:
            raise BadQueryError(f"filter longer than {MAX_FILTER_CHARS} characters")
        match = _CONDITION.match(expr)
        if not match:
            raise BadQueryError(
                f"cannot parse filter {expr!r}: use 'column op value' with op one of {', '.join(OPERATORS)}"
            )
        column, op, raw = match.group(1), match.group(2), match.group(3)
        if op == "in":
            value: Scalar | tuple[Scalar, ...] = tuple(
                _unquote(v.strip()) for v in raw.split(",") if v.strip()
            )
        else:
            value = _unquote(raw)
        out.append(Condition(column, op, value))
    return _checked(out)


#: ``{"price__lt": 80}``: the operator as a suffix of the column (as Django and Marqo spell it).
SUFFIX_OPERATORS = {
    "eq": "=",
    "ne": "!=",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
    "in": "in",
    "contains": "contains",
}


def from_mapping(where: Mapping[str, Any]) -> list[Condition]:
    """``{"col": value}`` (equality), ``{"col": (op, value)}`` or ``{"col__lt": value}``."""
    out = []
    for column, spec in where.items():
        base, _, suffix = str(column).rpartition("__")
        if base and suffix in SUFFIX_OPERATORS:
            op = SUFFIX_OPERATORS[suffix]
            value = tuple(spec) if op == "in" and isinstance(spec, (list, tuple, set)) else spec
            out.append(
                Condition(base, op, value if op != "in" or isinstance(value, tuple) else (value,))
            )
            continue
        if (
            isinstance(spec, tuple)
            and len(spec) == 2
            and isinstance(spec[0], str)
            and spec[0] in OPERATORS
        ):
            op, value = spec
        elif isinstance(spec, (list, tuple, set)):
            op, value = "in", tuple(spec)
        else:
            op, value = "=", spec
        if op == "in":
            value = tuple(value) if isinstance(value, (list, tuple, set)) else (value,)
        out.append(Condition(str(column), op, value))
    return _checked(out)


def _checked(conditions: list[Condition]) -> list[Condition]:
    if len(conditions) > MAX_CONDITIONS:
        raise BadQueryError(f"at most {MAX_CONDITIONS} filter conditions")
    for cond in conditions:
        if cond.op not in OPERATORS:
            raise BadQueryError(
                f"unknown filter operator {cond.op!r}; use one of {', '.join(OPERATORS)}"
            )
        values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
        if cond.op == "in" and not 0 < len(values) <= MAX_VALUES:
            raise BadQueryError(f"'in' takes 1 to {MAX_VALUES} values")
        for value in values:
            if isinstance(value, (list, dict, tuple, set)) or value is None:
                raise BadQueryError(
                    f"filter value for {cond.column!r} must be a string or a number"
                )
            if len(str(value)) > MAX_VALUE_CHARS:
                raise BadQueryError(f"filter value longer than {MAX_VALUE_CHARS} characters")
    return conditions


def _typed(value: Scalar, arrow_type: pa.DataType, column: str) -> Any:
    if pa.types.is_boolean(arrow_type):
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise BadQueryError(f"filter on {column!r} needs true or false, not {value!r}")
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        if isinstance(value, bool):
            raise BadQueryError(f"filter on {column!r} needs a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise BadQueryError(f"filter on {column!r} needs a number, not {value!r}") from None
    return str(value)


def compile_filter(conditions: list[Condition], table: pa.Table) -> pc.Expression:
    """An Arrow expression over ``table``'s columns; unknown columns are refused."""
    allowed = [c for c in table.column_names if c not in RESERVED]
    expr: pc.Expression | None = None
    for cond in conditions:
        if cond.column not in allowed:
            raise BadQueryError(
                f"cannot filter on {cond.column!r}; filterable columns: {', '.join(sorted(allowed)) or 'none'}"
            )
        arrow_type = table.schema.field(cond.column).type
        field = pc.field(cond.column)
        if cond.op == "in":
            values = [_typed(v, arrow_type, cond.column) for v in cond.value]  # type: ignore[union-attr]
            part = field.isin(values)
        elif cond.op == "contains":
            if not (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)):
                raise BadQueryError(
                    f"'contains' needs a text column; {cond.column!r} is {arrow_type}"
                )
            part = pc.match_substring(field, str(cond.value), ignore_case=True)
        else:
            value = _typed(cond.value, arrow_type, cond.column)  # type: ignore[arg-type]
            if cond.op in ("<", "<=", ">", ">=") and isinstance(value, (str, bool)):
                raise BadQueryError(
                    f"{cond.op!r} needs a numeric column; {cond.column!r} is {arrow_type}"
                )
            part = {
                "=": field == value,
                "!=": field != value,
                "<": field < value,
                "<=": field <= value,
                ">": field > value,
                ">=": field >= value,
            }[cond.op]
        expr = part if expr is None else (expr & part)
    if expr is None:
        raise BadQueryError("empty filter")
    return expr
