"""An image folder as a :class:`~mmsearch.indexer.source.Source`: mark and sweep, as rclip does.

A file whose mtime and size match its row is unchanged (marked seen); the others are
embedded (a changed one keeps its id). Rows of files gone from the folder are deleted
only after a complete walk of it: an unmounted disk, an unreadable subfolder or a
suddenly empty root aborts the sweep.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from mmsearch.indexer.discover import FileItem, WalkResult, path_to_uri
from mmsearch.indexer.items import Embedded, Failed, Item
from mmsearch.indexer.options import ProgressFn
from mmsearch.indexer.report import Failure, IndexReport
from mmsearch.indexer.sidecar import TEXT_KEY, ImageSidecar

from mmsearch.storage.metadata_keys import FILE_KEY
from mmsearch.storage.schema import make_rows
from mmsearch.storage.table import ItemStore, StoredState


def _relative(path: str, root: Path) -> str:
    """``path`` relative to the indexed folder, with ``/`` separators (the ``file`` key)."""
    return Path(os.path.relpath(path, root)).as_posix()


@dataclass
class ImageFolder:
    """One walked image root; ``sidecar`` adds metadata (and text) to its images."""

    root: Path
    walk: WalkResult
    sidecar: ImageSidecar | None = None
    stored: dict[str, StoredState] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.root = Path(os.path.abspath(self.root))
        self.source = path_to_uri(str(self.root))

    def plan(
        self, store: ItemStore, report: IndexReport, progress: ProgressFn
    ) -> Iterator[list[Item]]:
        """Walk problems into the report; unchanged files (mtime, size) marked seen."""
        for problem in self.walk.problems:
            report.failures.append(Failure(problem.path, problem.reason, problem.kind, "walk"))
        self.stored = store.state_by_uri(self.source)
        todo: list[Item] = []
        for entry in self.walk.items:
            uri = path_to_uri(entry.path)
            prev = self.stored.get(uri)
            if prev is not None and prev.mtime_ns == entry.mtime_ns and prev.size == entry.size:
                self.seen.add(uri)
                report.unchanged += 1
            else:
                todo.append(Item("image", uri, entry.path, prev, entry.path, ref=entry))
        progress("scan", len(self.walk.items), len(self.walk.items))
        yield todo

    def rows(
        self,
        done: Sequence[Embedded],
        ids: Sequence[int],
        vectors: npt.NDArray[np.float32],
        schema: pa.Schema,
    ) -> pa.Table:
        entries: list[FileItem] = [d.item.ref for d in done]
        extra = [self.sidecar.metadata_for(e.path) if self.sidecar else {} for e in entries]
        self.seen.update(d.item.uri for d in done)
        return make_rows(
            ids=ids,
            uris=[d.item.uri for d in done],
            kind="image",
            texts=[e.get(TEXT_KEY) for e in extra],
            source=self.source,
            mtime_ns=[e.mtime_ns for e in entries],
            sizes=[e.size for e in entries],
            sha256=[d.sha256 for d in done],
            metadata=[
                {
                    FILE_KEY: _relative(e.path, self.root),
                    **{k: v for k, v in x.items() if k != TEXT_KEY},
                }
                for e, x in zip(entries, extra, strict=True)
            ],
            vectors=vectors,
            schema=schema,
        )

    def failure(self, failed: Failed) -> Failure:
        return Failure(failed.item.where, failed.reason, failed.exc_class, failed.stage)

    def sweep(self, store: ItemStore, report: IndexReport) -> None:
        """Delete rows of files gone from a completely walked root (never on doubt)."""
        # An unmounted mount point looks like an empty folder: never read "no files at
        # all" as "every file deleted".
        if self.walk.complete and not self.walk.items and self.stored:
            report.failures.append(
                Failure(
                    str(self.root),
                    "folder is empty but the index has files from it; is it unmounted?",
                    "EmptyRoot",
                    "walk",
                )
            )
            report.sweep_aborted.append(str(self.root))
        elif self.walk.complete:
            gone = [state.id for uri, state in self.stored.items() if uri not in self.seen]
            report.deleted += store.delete_ids(gone)
        else:
            report.sweep_aborted.append(str(self.root))
