"""The one shape of everything an index is fed from: the :class:`Source` protocol.

A source knows what it holds and how that compares with the table; the loop
(:func:`mmsearch.indexer.writeloop.write_source`) does the rest the same way for every
source::

    source.plan(store, report, progress)  ─▶ lists of Items (new, changed, or with a vector)
    executor.run(kind, items)             ─▶ (item, vector | failure) in batches
    source.rows(done, ids, vectors, schema) ─▶ Arrow rows ─▶ committed in groups
    source.failure(failed)                ─▶ the report's Failure entry
    source.sweep(store, report)           ─▶ rows of what the source no longer holds, deleted

Implementations: image folders (:mod:`.folder`), text collections (:mod:`.collection`),
records from a backend and product feeds (:mod:`.records`), the rows of an index being
re-embedded (:mod:`.reembed`). A new kind of input is one more source, never another loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from mmsearch.indexer.items import Embedded, Failed, Item
from mmsearch.indexer.options import ProgressFn
from mmsearch.indexer.report import Failure, IndexReport

from mmsearch.storage.table import ItemStore


class Source(Protocol):
    """What one input holds, diffed against the table (see the module docstring)."""

    def plan(
        self, store: ItemStore, report: IndexReport, progress: ProgressFn
    ) -> Iterator[list[Item]]:
        """Compares the input with the table: unchanged items are counted in ``report``;
        yields the items to write, in lists written one after the other (a source that
        reads in chunks yields one list per chunk, so memory stays bounded)."""
        ...

    def rows(
        self,
        done: Sequence[Embedded],
        ids: Sequence[int],
        vectors: npt.NDArray[np.float32],
        schema: pa.Schema,
    ) -> pa.Table:
        """The table rows of embedded items (one kind at a time), aligned with ``ids``."""
        ...

    def failure(self, failed: Failed) -> Failure:
        """The report entry of an item that could not be embedded."""
        ...

    def sweep(self, store: ItemStore, report: IndexReport) -> None:
        """Deletes the rows of items the input no longer holds (never on doubt)."""
        ...
