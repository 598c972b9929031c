"""The snapshot's non-vector columns, held in memory and looked up by id.

:class:`Rows` answers three questions for the stages: which ids pass a filter
(metadata expanded into typed columns), what are a set of ids' uri/kind/text/metadata,
and which rows carry an exact identifier (a SKU typed as the whole query).
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.search.filters import ROW_ID_COLUMN, Condition, compile_filter
from mmsearch.storage.metadata_keys import normalize_metadata

#: Columns read from the table for results.
ROW_COLUMNS = ["id", "uri", "kind", "text", "metadata"]
#: An identifier: one token of letters/digits with at least one digit, maybe joined by - _ . /
_IDENTIFIER = re.compile(r"^(?=[^\s]*\d)[0-9A-Za-z]+(?:[-_./][0-9A-Za-z]+)*$")
_MAX_IDENTIFIER = 64


def looks_like_identifier(text: str) -> bool:
    """True for ``SKU-00042``, ``00042``, ``A7-III``; False for words and phrases."""
    text = text.strip()
    return 0 < len(text) <= _MAX_IDENTIFIER and bool(_IDENTIFIER.match(text))


class Rows:
    """Rows of one snapshot, sorted by id."""

    def __init__(self, table: pa.Table) -> None:
        ids = table.column("id").to_numpy()
        if len(ids) < 2 or bool(np.all(np.diff(ids) > 0)):  # a rows file comes sorted: no copy
            self.sorted_ids: npt.NDArray[np.int64] = ids.astype(np.int64, copy=False)
            self.table = table
        else:
            order = np.argsort(ids, kind="stable")
            self.sorted_ids = ids[order].astype(np.int64, copy=False)
            self.table = table.take(pa.array(order))
        self._filterable: pa.Table | None = None
        self._lowered: dict[str, pa.Array] | None = None
        self._kinds: npt.NDArray[np.object_] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.sorted_ids)

    def filterable(self) -> pa.Table:
        """Row ids (``ROW_ID_COLUMN``), kind and every metadata key as typed columns (built on first use)."""
        with self._lock:
            if self._filterable is None:
                self._filterable = _expand_metadata(self.sorted_ids, self.table)
            return self._filterable

    def matching_ids(self, conditions: list[Condition]) -> npt.NDArray[np.int64]:
        """Sorted ids of the rows that satisfy every condition."""
        table = self.filterable()
        expr = compile_filter(conditions, table)
        return table.filter(expr).column(ROW_ID_COLUMN).to_numpy().astype(np.int64)

    def kinds_of(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.object_]:
        """The kind of each id ("" for unknown ids)."""
        pos, found = self._positions(ids)
        kinds = self._kinds
        if kinds is None:  # built once per snapshot: a lookup then costs ~len(ids)
            kinds = np.asarray(
                self.table.column("kind").to_numpy(zero_copy_only=False), dtype=object
            )
            self._kinds = kinds
        out = np.full(len(ids), "", dtype=object)
        out[found] = kinds[pos[found]]
        return out

    def _positions(
        self, ids: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.sorted_ids) == 0 or len(ids) == 0:
            return np.zeros(len(ids), np.intp), np.zeros(len(ids), bool)
        pos = np.clip(np.searchsorted(self.sorted_ids, ids), 0, len(self.sorted_ids) - 1)
        return pos, self.sorted_ids[pos] == ids

    def take(self, ids: npt.NDArray[np.int64]) -> tuple[pa.Table, npt.NDArray[np.bool_]]:
        """The rows of ``ids`` that exist (in order) and a mask of which ids were found."""
        pos, found = self._positions(ids)
        return self.table.take(pa.array(pos[found])), found

    def identifier_ids(self, text: str) -> npt.NDArray[np.int64]:
        """Ids of rows holding ``text`` as an identifier, case-insensitively.

        A row matches when one of its string metadata values equals ``text``, or — when no
        value equals it — contains it as a whole token and all such values are one and the
        same (``00042`` names ``SKU-00042`` only while no other value holds ``00042``).
        """
        if not looks_like_identifier(text):
            return np.zeros(0, np.int64)
        needle = text.strip().lower()
        lowered = self._lowered_columns()
        equal = [pc.equal(col, needle) for col in lowered.values()]
        if equal:
            mask = _any(equal)
            if pc.any(mask).as_py():
                return self.sorted_ids[mask.to_numpy(zero_copy_only=False)]
        token = rf"(^|[^0-9a-z]){re.escape(needle)}($|[^0-9a-z])"
        values: set[str] = set()
        masks = []
        for col in lowered.values():
            hit = pc.match_substring_regex(col, token)
            hit = pc.fill_null(hit, False)
            if pc.any(hit).as_py():
                values.update(v for v in pc.filter(col, hit).to_pylist() if v is not None)
                masks.append(hit)
            if len(values) > 1:
                return np.zeros(0, np.int64)
        if len(values) != 1:
            return np.zeros(0, np.int64)
        return self.sorted_ids[_any(masks).to_numpy(zero_copy_only=False)]

    def _lowered_columns(self) -> dict[str, pa.Array]:
        table = self.filterable()
        with self._lock:
            if self._lowered is None:
                self._lowered = {
                    name: pc.utf8_lower(table.column(name).combine_chunks())
                    for name in table.column_names
                    if name not in (ROW_ID_COLUMN, "kind")
                    and pa.types.is_string(table.schema.field(name).type)
                }
            return self._lowered


def _any(masks: list[Any]) -> Any:
    out = masks[0]
    for mask in masks[1:]:
        out = pc.or_(out, mask)
    return pc.fill_null(out, False)


def _expand_metadata(sorted_ids: npt.NDArray[np.int64], table: pa.Table) -> pa.Table:
    records = [
        normalize_metadata(json.loads(m)) if m else {} for m in table.column("metadata").to_pylist()
    ]
    keys = sorted({key for rec in records for key in rec})
    columns: dict[str, pa.Array] = {
        ROW_ID_COLUMN: pa.array(sorted_ids),
        "kind": table.column("kind").combine_chunks(),
    }
    for key in keys:
        if key in columns:
            continue
        values = [rec.get(key) for rec in records]
        try:
            columns[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: compare as text
            columns[key] = pa.array([None if v is None else str(v) for v in values], pa.string())
        if pa.types.is_null(columns[key].type) or pa.types.is_nested(columns[key].type):
            columns[key] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(columns)
