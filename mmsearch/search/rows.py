"""The snapshot's non-vector columns, held in memory and looked up by id.

:class:`Rows` answers three questions for the stages: which ids pass a filter
(metadata expanded into typed columns), what are a set of ids' uri/kind/text/metadata,
which rows carry an exact identifier (a SKU typed as the whole query), and which rows
belong to one record (a uri prefix).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Hashable, Sequence
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
    """Rows of one snapshot, looked up by id.

    ``sorted_ids`` holds every id in order; ``table`` holds the rows, in id order unless
    ``positions`` says where each sorted id's row is (see :meth:`with_changes`).
    ``origin`` is the caller's name for where ``table`` came from (a file's identity), so
    that a later :meth:`with_changes` can find the rows it applies to.
    """

    def __init__(self, table: pa.Table, *, origin: Hashable = None) -> None:
        ids = table.column("id").to_numpy()
        if len(ids) < 2 or bool(np.all(np.diff(ids) > 0)):  # a rows file comes sorted: no copy
            self._setup(table, ids.astype(np.int64, copy=False), None)
        else:
            order = np.argsort(ids, kind="stable")
            self._setup(table, ids[order].astype(np.int64, copy=False), order)
        self.origin = origin

    @property
    def base(self) -> Rows | None:
        """The rows these were built on by :meth:`with_changes` (None: built from a table)."""
        return self._base

    @classmethod
    def with_changes(cls, base: Rows, changed: pa.Table, dropped: npt.NDArray[np.int64]) -> Rows:
        """The rows of ``base`` (a sorted table's, e.g. a full rows file) with those of
        ``changed`` in place of its rows of the same id, and without ``dropped`` ids.

        ``base`` is neither copied nor re-sorted (a memory-mapped rows file stays on its
        pages), and its typed metadata columns (:meth:`filterable`), once built, serve
        every later ``Rows`` of the same base: the cost of a reader's switch to a record
        upsert's snapshot is a few passes over the ids, plus the changed rows."""
        if base.positions is not None:
            raise ValueError("the base rows must come sorted by id")
        base_ids = base.sorted_ids
        changed_ids = np.asarray(changed.column("id").to_numpy(), dtype=np.int64)
        gone = np.union1d(np.asarray(dropped, dtype=np.int64), changed_ids)
        keep = np.ones(len(base_ids), dtype=bool)
        if len(base_ids) and len(gone):
            at = np.minimum(np.searchsorted(base_ids, gone), len(base_ids) - 1)
            keep[at[base_ids[at] == gone]] = False
        live = np.flatnonzero(keep)
        order = np.argsort(changed_ids, kind="stable")
        slots = np.searchsorted(base_ids[live], changed_ids[order])
        sorted_ids = np.insert(base_ids[live], slots, changed_ids[order])
        positions = np.insert(live, slots, len(base_ids) + order)
        changed = changed.select(base.table.column_names).cast(base.table.schema)
        rows = cls.__new__(cls)
        rows._setup(pa.concat_tables([base.table, changed]), sorted_ids, positions)
        rows._base = base
        rows.origin = None
        return rows

    def _setup(
        self,
        table: pa.Table,
        sorted_ids: npt.NDArray[np.int64],
        positions: npt.NDArray[np.intp] | None,
    ) -> None:
        self.table = table
        self.sorted_ids: npt.NDArray[np.int64] = sorted_ids
        self.positions = positions
        self._base: Rows | None = None
        self._filterable: pa.Table | None = None
        self._lowered: dict[str, pa.Array] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.sorted_ids)

    def filterable(self) -> pa.Table:
        """Row ids (``ROW_ID_COLUMN``), kind and every metadata key as typed columns (built on first use)."""
        with self._lock:
            if self._filterable is None:
                self._filterable = self._built_on_base() or self._expanded()
            return self._filterable

    def _expanded(self) -> pa.Table:
        table = self.table.select(["kind", "metadata"])
        if self.positions is not None:
            table = table.take(pa.array(self.positions))
        return _expand_metadata(self.sorted_ids, table)

    def _built_on_base(self) -> pa.Table | None:
        """The base's typed columns (built once per base) joined with the changed rows',
        in id order; None when a key's values change type between the two (the whole
        table is then expanded again, as it would type that key)."""
        if self._base is None or self.positions is None:
            return None
        n_base = len(self._base.table)
        changed = self.table.slice(n_base).select(["id", "kind", "metadata"])
        ids = np.asarray(changed.column("id").to_numpy(), dtype=np.int64)
        joined = _join_typed(self._base.filterable(), _expand_metadata(ids, changed))
        return None if joined is None else joined.take(pa.array(self.positions))

    def matching_ids(self, conditions: list[Condition]) -> npt.NDArray[np.int64]:
        """Sorted ids of the rows that satisfy every condition."""
        table = self.filterable()
        expr = compile_filter(conditions, table)
        return table.filter(expr).column(ROW_ID_COLUMN).to_numpy().astype(np.int64)

    def kinds_of(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.object_]:
        """The kind of each id ("" for unknown ids)."""
        at, found = self._rows_of(ids)
        out = np.full(len(ids), "", dtype=object)
        kinds = self.table.column("kind").take(pa.array(at)).to_numpy(zero_copy_only=False)
        out[found] = kinds
        return out

    def _rows_of(
        self, ids: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """The table rows of the ``ids`` that exist (in order), and a mask of which do."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.sorted_ids) == 0 or len(ids) == 0:
            return np.zeros(0, np.intp), np.zeros(len(ids), bool)
        pos = np.clip(np.searchsorted(self.sorted_ids, ids), 0, len(self.sorted_ids) - 1)
        found = self.sorted_ids[pos] == ids
        at = pos[found]
        return (at if self.positions is None else self.positions[at]), found

    def take(
        self, ids: npt.NDArray[np.int64], columns: Sequence[str] | None = None
    ) -> tuple[pa.Table, npt.NDArray[np.bool_]]:
        """The rows of ``ids`` that exist (in order; only ``columns`` when given) and a mask
        of which ids were found."""
        at, found = self._rows_of(ids)
        table = self.table if columns is None else self.table.select(list(columns))
        return table.take(pa.array(at)), found

    def with_uri_prefix(self, prefix: str) -> pa.Table:
        """The live rows whose uri starts with ``prefix`` (every row of one record), by id
        (rows of the base that :meth:`with_changes` replaced or dropped are not live)."""
        mask = pc.starts_with(self.table.column("uri"), pattern=prefix)
        at = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        if self.positions is not None:
            at = at[np.isin(at, self.positions)]
        found = self.table.take(pa.array(at))
        return found.take(pc.sort_indices(found, sort_keys=[("id", "ascending")]))

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


def _join_typed(first: pa.Table, second: pa.Table) -> pa.Table | None:
    """``first`` then ``second`` (typed columns of :func:`_expand_metadata`), keys in its
    order; None when a key holds values of one type in one and another in the other."""
    keys = sorted((set(first.column_names) | set(second.column_names)) - {ROW_ID_COLUMN, "kind"})
    columns: dict[str, pa.ChunkedArray] = {}
    for key in [ROW_ID_COLUMN, "kind", *keys]:
        parts = [t.column(key) if key in t.column_names else None for t in (first, second)]
        typed = {p.type for p in parts if p is not None and p.null_count < len(p)}
        if len(typed) > 1:
            return None
        kind = typed.pop() if typed else next(p.type for p in parts if p is not None)
        chunks: list[pa.Array] = []
        for part, table in zip(parts, (first, second), strict=True):
            if part is None:
                chunks.append(pa.nulls(table.num_rows, kind))
            else:
                chunks.extend(part.cast(kind).chunks)
        columns[key] = pa.chunked_array(chunks, type=kind)
    return pa.table(columns)


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
