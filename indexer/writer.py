"""Batched, atomic row commits of an indexing run."""

from __future__ import annotations

import pyarrow as pa

from mmsearch.storage.table import ItemStore


class BatchWriter:
    """Collects Arrow row batches and commits them in groups of ``commit_every`` rows.

    Each commit is one atomic LanceDB transaction: what a killed run leaves behind is
    exactly the groups committed so far.
    """

    def __init__(self, store: ItemStore, commit_every: int) -> None:
        self.store = store
        self.commit_every = max(1, commit_every)
        self._batches: list[pa.Table] = []
        self._rows = 0

    @property
    def schema(self) -> pa.Schema:
        return self.store.table.schema

    def add(self, rows: pa.Table) -> None:
        self._batches.append(rows)
        self._rows += rows.num_rows
        if self._rows >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        if self._batches:
            self.store.upsert(pa.concat_tables(self._batches))
            self._batches.clear()
            self._rows = 0
