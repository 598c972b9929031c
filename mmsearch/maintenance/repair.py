"""``mmsearch repair``: mend an index whose table and ANN files no longer agree.

What it finds, as one writer (:func:`mmsearch.indexer.session.writer_session`):

- **duplicate uris**: one item held by several rows (two writers indexed the same file);
  the row of the newest file state (``mtime_ns``, then the smaller id) stays, the
  others go;
- **duplicate ids**: one id given to rows of different items (two writers handed out
  the same new ids); the item whose uri sorts first keeps it, the others get fresh
  ids above the table's largest;
- **ANN files out of step** with the table: checksums, or ids that differ from the
  table's at the snapshot's version (what ``mmsearch check`` verifies), or no snapshot.

It mends them without re-embedding anything: the table is rewritten in one commit
(the stored vectors kept, so readers of the published snapshot never notice), then
the ANN indexes are rebuilt from it and the new snapshot published.

>>> report = repair_index("s3://bucket/shop")  # doctest: +SKIP
>>> report.duplicate_ids, report.rewritten  # doctest: +SKIP
(10, True)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmsearch.errors import IndexCorruptError, IndexNotFoundError
from mmsearch.indexer.ann_build import build_ann
from mmsearch.indexer.session import writer_session
from mmsearch.maintenance.info import check_index
from mmsearch.storage.locks import write_guard
from mmsearch.storage.table import ItemStore

#: Rows per batch while the table is rewritten (bounded memory).
REWRITE_BATCH_ROWS = 65_536


@dataclass
class RepairPlan:
    """Rows to drop and ids to change, by LanceDB row id (``_rowid``) at one table version."""

    version: int
    rows: int
    drop: set[int] = field(default_factory=set)
    new_ids: dict[int, int] = field(default_factory=dict)

    @property
    def changes_table(self) -> bool:
        return bool(self.drop or self.new_ids)


@dataclass
class RepairReport:
    """What :func:`repair_index` found and did."""

    rows: int = 0
    duplicate_uris: int = 0  # rows dropped: their uri was held by another row
    duplicate_ids: int = 0  # rows given a new id: theirs belonged to another item
    ann_problem: str | None = None  # why the ANN files were out of step (None: they were not)
    rewritten: bool = False  # the table was rewritten (one commit)
    rebuilt: bool = False  # the ANN indexes were rebuilt and the snapshot published
    ann: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when nothing needed mending."""
        return not (self.duplicate_uris or self.duplicate_ids or self.ann_problem)


def plan_repair(store: ItemStore) -> RepairPlan:
    """Which rows of the table to drop (duplicate uris) and which to give new ids."""
    tbl = (
        store.table.search()
        .with_row_id(True)
        .select(["id", "uri", "mtime_ns"])
        .limit(None)
        .to_arrow()
    )
    plan = RepairPlan(version=store.version, rows=tbl.num_rows)
    if tbl.num_rows == 0:
        return plan
    rowids = tbl.column("_rowid").to_numpy().astype(np.int64)
    ids = tbl.column("id").to_numpy().astype(np.int64)
    uris = tbl.column("uri").to_pylist()
    mtimes = np.asarray(
        [-1 if m is None else m for m in tbl.column("mtime_ns").to_pylist()], np.int64
    )
    # one row per uri: the newest file state, then the smaller id, then the earlier row
    order = sorted(range(len(uris)), key=lambda i: (uris[i], -mtimes[i], ids[i], rowids[i]))
    keep: list[int] = []
    for pos in order:
        if keep and uris[keep[-1]] == uris[pos]:
            plan.drop.add(int(rowids[pos]))
        else:
            keep.append(pos)
    # one item per id: the first by uri keeps it, the others get fresh ids
    next_id = int(ids.max()) + 1
    owner: set[int] = set()
    for pos in keep:  # in uri order
        if int(ids[pos]) in owner:
            plan.new_ids[int(rowids[pos])] = next_id
            next_id += 1
        else:
            owner.add(int(ids[pos]))
    return plan


def _fixed_batches(store: ItemStore, plan: RepairPlan) -> Iterator[pa.RecordBatch]:
    """The table at ``plan.version`` with the plan applied, batch by batch."""
    schema = store.table.schema
    old = ItemStore.open(store.index_dir, version=plan.version)
    drop = pa.array(sorted(plan.drop), pa.uint64())
    remap_from = pa.array(list(plan.new_ids), pa.uint64())
    remap_to = np.asarray(list(plan.new_ids.values()), np.int64)
    query = old.table.search().with_row_id(True).limit(None)
    for batch in query.to_batches(REWRITE_BATCH_ROWS):
        rowid = batch.column("_rowid")
        batch = batch.filter(pc.invert(pc.is_in(rowid, value_set=drop)))
        rowid = batch.column("_rowid")
        where = pc.fill_null(pc.index_in(rowid, value_set=remap_from), -1).to_numpy()
        ids = batch.column("id").to_numpy().astype(np.int64).copy()
        hit = where >= 0
        ids[hit] = remap_to[where[hit]]
        columns = [
            pa.array(ids, pa.int64()) if n == "id" else batch.column(n) for n in schema.names
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def rewrite_table(store: ItemStore, plan: RepairPlan) -> None:
    """Replaces the table's rows with the plan applied, in one commit (older versions stay
    readable, so readers of the published snapshot carry on)."""
    reader = pa.RecordBatchReader.from_batches(store.table.schema, _fixed_batches(store, plan))
    with write_guard(store.index_dir):
        store.table.add(reader, mode="overwrite")


def ann_problem(index_dir: Any) -> str | None:
    """Why the ANN files of ``index_dir``'s snapshot are out of step with the table, or None."""
    try:
        check_index(index_dir)
    except (IndexCorruptError, IndexNotFoundError) as exc:
        return str(exc).split("; ", 1)[0]
    return None


def repair_index(
    index: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    wait_s: float = 0.0,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> RepairReport:
    """Finds duplicate ids and uris and ANN files out of step with the table; unless
    ``dry_run``, mends them (see the module docstring). Returns a :class:`RepairReport`."""
    report = RepairReport()
    with writer_session(index, wait_s=wait_s) as session:
        store = ItemStore.open(session.local_dir)
        plan = plan_repair(store)
        report.rows = plan.rows
        report.duplicate_uris = len(plan.drop)
        report.duplicate_ids = len(plan.new_ids)
        report.ann_problem = ann_problem(session.local_dir) if not plan.changes_table else None
        if plan.changes_table:
            report.ann_problem = "the ANN indexes hold the duplicated rows"
        if dry_run or report.healthy:
            return report
        if plan.changes_table:
            rewrite_table(store, plan)
            report.rewritten = True
            store = ItemStore.open(session.local_dir)
        with write_guard(store.index_dir):
            report.ann = build_ann(store, store.model_spec, retrain=True, progress=progress)
        session.publish()
        report.rebuilt = True
        report.warnings.extend(session.warnings)
    return report
