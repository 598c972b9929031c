"""``mmsearch remove PATH...``: drop items from an index explicitly.

A path names an image file, a folder (every item under it) or a text collection (all
its rows). Every path must match something, or nothing is removed. The ANN indexes are
then updated and a new snapshot published, so readers never see removed items again.
Files still on disk come back if their folder is indexed again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mmsearch.indexer.discover import path_to_uri
from mmsearch.indexer.session import writer_session

from mmsearch.errors import SourceNotFoundError
from mmsearch.storage.locks import write_guard
from mmsearch.storage.table import ItemStore


@dataclass
class RemoveReport:
    """What :func:`remove_paths` removed: item count per path given, and the new ANN info."""

    removed: dict[str, int] = field(default_factory=dict)
    ann: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # after the snapshot was published

    @property
    def total(self) -> int:
        return sum(self.removed.values())


def _matches(uri: str, target: str) -> bool:
    # a file, a folder's descendants, or a text collection's rows ("collection#row-id")
    return uri == target or uri.startswith(target.rstrip("/") + "/") or uri.startswith(target + "#")


def remove_paths(
    paths: Sequence[str | os.PathLike[str]],
    index_dir: str | os.PathLike[str],
    *,
    build_index: bool = True,
    wait_s: float = 0.0,
) -> RemoveReport:
    """Removes the items under ``paths`` from the index; raises when a path matches none.

    When an earlier run stopped before it published (its rows are deleted, readers still
    see them), a path that matches nothing is no error: the re-run publishes.

    >>> remove_paths(["./photos/old"], ".mmsearch").total  # doctest: +SKIP
    12
    """
    with writer_session(index_dir, wait_s=wait_s) as session:
        store = ItemStore.open(session.local_dir)
        state = store.state_by_uri()
        report = RemoveReport()
        doomed: set[int] = set()
        for raw in paths:
            target = path_to_uri(os.path.abspath(raw))
            ids = {s.id for uri, s in state.items() if _matches(uri, target)}
            if not ids and build_index and session.unpublished(store.version):
                # removed by a run that stopped before it published: this run publishes
                report.removed[os.fspath(raw)] = 0
                continue
            if not ids:
                raise SourceNotFoundError(
                    f"nothing in the index at {session.index} is under {os.fspath(raw)}; nothing removed"
                )
            report.removed[os.fspath(raw)] = len(ids - doomed)
            doomed |= ids
        store.delete_ids(doomed)
        if build_index:
            from mmsearch.indexer.ann_build import build_ann

            with write_guard(store.index_dir):
                report.ann = build_ann(store, store.model_spec)
            session.publish()
            report.warnings.extend(session.warnings)
    return report
