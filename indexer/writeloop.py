"""The one write-and-report loop that every source and executor feeds.

For each list of items a :class:`~mmsearch.indexer.source.Source` plans, per kind:
items that carry a vector already are written as they are, the others go through the
executor; each batch of outcomes becomes rows (ids from the one
:class:`~mmsearch.indexer.items.IdAllocator`) committed in groups of ``commit_every``,
and each failure a report entry. After the last list the source sweeps what it no
longer holds. A killed run leaves the groups committed so far; the next run sees them
as unchanged and writes only the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pyarrow as pa
from mmsearch.indexer.executor import Executor
from mmsearch.indexer.items import Embedded, Failed, IdAllocator, Item, Kind
from mmsearch.indexer.options import ProgressFn
from mmsearch.indexer.report import IndexReport
from mmsearch.indexer.source import Source

from mmsearch.storage.table import ItemStore

#: The progress stage of each kind.
STAGES: dict[str, str] = {"image": "images", "text": "texts"}


class RowSink(Protocol):
    """Where rows go: :class:`~mmsearch.indexer.writer.BatchWriter` (the items table) or
    a re-embedding's staging table."""

    @property
    def schema(self) -> pa.Schema: ...

    def add(self, rows: pa.Table) -> None: ...

    def flush(self) -> None: ...


def write_source(
    source: Source,
    store: ItemStore,
    executor: Executor,
    sink: RowSink,
    ids: IdAllocator,
    report: IndexReport,
    progress: ProgressFn,
) -> None:
    """Plans ``source`` against ``store``, embeds, writes, reports, then sweeps."""
    for items in source.plan(store, report, progress):
        for kind in ("text", "image"):
            write_items(
                source, [i for i in items if i.kind == kind], kind, executor, sink, ids, report,
                progress,
            )  # fmt: skip
        sink.flush()
    source.sweep(store, report)


def write_items(
    source: Source,
    items: Sequence[Item],
    kind: Kind,
    executor: Executor,
    sink: RowSink,
    ids: IdAllocator,
    report: IndexReport,
    progress: ProgressFn,
) -> None:
    """Writes one kind's items: vectors known already, then the executor's batches."""
    known = [Embedded(i, i.vector, i.sha256) for i in items if i.vector is not None]
    todo = [i for i in items if i.vector is None]
    if known:  # metadata changed, content did not: the stored vector is kept
        _write(source, known, sink, ids, report, counted=False)
    if not todo:
        return
    stage = STAGES[kind]
    progress(stage, 0, len(todo))
    for outcomes in executor.run(kind, todo):
        done: list[Embedded] = []
        for outcome in outcomes:
            if isinstance(outcome, Failed):
                report.failures.append(source.failure(outcome))
                progress(stage, 0, -1)  # one item less to embed: never counted as embedded
                progress("failed", 1, None)
            else:
                done.append(outcome)
        if done:
            _write(source, done, sink, ids, report, counted=True)
            progress(stage, len(done), None)


def _write(
    source: Source,
    done: list[Embedded],
    sink: RowSink,
    ids: IdAllocator,
    report: IndexReport,
    *,
    counted: bool,
) -> None:
    items = [d.item for d in done]
    vectors = np.stack([np.asarray(d.vector, np.float32) for d in done])
    sink.add(source.rows(done, ids.ids_for(items), vectors, sink.schema))
    if counted:  # embedded now; rows rewritten with their stored vector were not
        report.embedded += len(done)
    report.added += sum(1 for item in items if item.prev is None)
    report.updated += sum(1 for item in items if item.prev is not None)
