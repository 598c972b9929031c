"""A text collection (CSV/TSV/JSONL/Parquet) as a :class:`~mmsearch.indexer.source.Source`.

The file is read and validated first, in one C-speed pass (:mod:`mmsearch.indexer.textsource`):
metadata types are decided per column across the whole file, repeated ids keep their
first row, and each row's content hash (text + typed metadata) decides whether it
changed since the last run. Rows of ids the file no longer has are deleted after the
rest is written. A row that cannot be read or tokenised is reported with its row number.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from mmsearch.indexer.discover import path_to_uri
from mmsearch.indexer.items import Embedded, Failed, Item
from mmsearch.indexer.options import ProgressFn
from mmsearch.indexer.report import Failure, IndexReport
from mmsearch.indexer.textindex import text_sha
from mmsearch.indexer.textsource import TextRow, read_text_collection

from mmsearch.storage.metadata_keys import ID_KEY
from mmsearch.storage.schema import make_rows
from mmsearch.storage.table import ItemStore


@dataclass
class TextCollectionSource:
    """One text collection file; ``text_column``/``id_column`` as in :func:`read_text_collection`."""

    path: Path
    text_column: str | None = None
    id_column: str | None = None
    gone: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(os.path.abspath(self.path))
        self.source = path_to_uri(str(self.path))
        self.mtime_ns = 0

    def plan(
        self, store: ItemStore, report: IndexReport, progress: ProgressFn
    ) -> Iterator[list[Item]]:
        """Reads and validates the collection (problems go to ``report``); unchanged rows
        are counted, the others yielded; ``gone`` holds stored rows the file no longer has."""
        collection = read_text_collection(
            self.path, text_column=self.text_column, id_column=self.id_column
        )
        for problem in collection.problems:
            report.failures.append(
                Failure(
                    str(self.path), problem.reason, problem.exc_class, "read",
                    row_number=problem.row_number,
                )
            )  # fmt: skip
        stored = store.state_by_uri(self.source)
        seen: set[str] = set()
        todo: list[Item] = []
        for row in collection.rows:
            uri = f"{self.source}#{row.id}"
            sha = text_sha(row.text, row.metadata)
            prev = stored.get(uri)
            seen.add(uri)
            if prev is not None and prev.sha256 == sha:
                report.unchanged += 1
            else:
                todo.append(
                    Item("text", uri, row.text, prev, str(self.path), ref=row,
                         row_number=row.row_number, sha256=sha)
                )  # fmt: skip
        progress("scan", len(collection.rows), len(collection.rows))
        self.gone = [state.id for uri, state in stored.items() if uri not in seen]
        self.mtime_ns = os.stat(self.path).st_mtime_ns
        yield todo

    def rows(
        self,
        done: Sequence[Embedded],
        ids: Sequence[int],
        vectors: npt.NDArray[np.float32],
        schema: pa.Schema,
    ) -> pa.Table:
        text_rows: list[TextRow] = [d.item.ref for d in done]
        return make_rows(
            ids=ids,
            uris=[d.item.uri for d in done],
            kind="text",
            texts=[row.text for row in text_rows],
            source=self.source,
            mtime_ns=[self.mtime_ns] * len(done),
            sizes=[len(row.text.encode("utf-8", "surrogatepass")) for row in text_rows],
            sha256=[d.sha256 for d in done],
            metadata=[{**row.metadata, ID_KEY: row.id} for row in text_rows],
            vectors=vectors,
            schema=schema,
        )

    def failure(self, failed: Failed) -> Failure:
        return Failure(
            failed.item.where, failed.reason, failed.exc_class, failed.stage,
            row_number=failed.item.row_number,
        )  # fmt: skip

    def sweep(self, store: ItemStore, report: IndexReport) -> None:
        report.deleted += store.delete_ids(self.gone)
