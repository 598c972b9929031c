"""Publish record writes without rebuilding: new rows wait beside the ANN index.

An upsert or delete changes a few rows of a possibly large index. :func:`publish_changes`
makes them what readers see in a fraction of what :func:`~mmsearch.indexer.ann_build.build_ann`
costs, and never rebuilds, retrains or re-tunes:

* each kind's index from the previous snapshot takes the new rows as *pending* rows
  (refine store only, searched exactly beside the ANN structure) and forgets removed
  ones lazily (:mod:`mmsearch.ann.pending`); the FAISS file is hard-linked, not written;
  once too many rows wait, they are merged into the structure (an add, not a rebuild);
* the full-text index is left as it is: LanceDB searches rows it does not cover yet
  by a flat scan; it is updated once they are many;
* the rows file is a delta of the changed rows (:func:`~mmsearch.storage.rowsfile.write_rows_delta`).

The next indexing run or ``build-index`` merges everything (``build_ann`` adds pending
rows to the structure before its own changes). The snapshot is written last, as always.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from mmsearch.indexer.ann_build import KINDS, build_ann, row_delta, vectors_of

from mmsearch.errors import MMSearchError
from mmsearch.models.base import Encoder
from mmsearch.models.spec import ModelSpec
from mmsearch.storage.rowsfile import (
    rows_file_name,
    rows_file_path,
    write_rows_delta,
    write_rows_file,
)
from mmsearch.storage.schema import LEXICAL_INDEX_NAME
from mmsearch.storage.snapshot import ANN_DIRNAME, Snapshot, read_snapshot, write_snapshot
from mmsearch.storage.table import ItemStore

I64 = npt.NDArray[np.int64]
#: The full-text index is brought up to date past this many rows it does not cover
#: (and this fraction of the table); below, LanceDB scans them flat.
LEXICAL_LAG_ROWS = 50_000
LEXICAL_LAG_FRACTION = 0.1


@dataclass
class RowChanges:
    """What one writer did to the table between two versions: rows written, ids deleted."""

    since: int
    written: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in KINDS})
    removed: list[int] = field(default_factory=list)
    until: int | None = None

    def ids(self, kind: str) -> tuple[I64, I64]:
        """(ids to remove from ``kind``'s index, ids to add to it)."""
        written = np.unique(np.asarray(self.written.get(kind, []), np.int64))
        gone = np.unique(np.asarray(self.removed, np.int64))
        return np.union1d(gone, written), written


def publish_changes(
    store: ItemStore, spec: ModelSpec, changes: RowChanges | None, *, encoder: Encoder | None = None
) -> dict[str, dict[str, Any]]:
    """Makes the table's current version the snapshot readers see (see the module doc).

    ``changes`` (what this writer did since the previous snapshot) spares a comparison
    of the two table versions; without it, or when the table moved otherwise (a writer
    killed before it published), the versions are compared.
    """
    previous = _snapshot_or_none(store)
    version = store.version
    if previous is None or not previous.ann_dirs:
        return build_ann(store, spec, encoder=encoder)
    if previous.table_version == version:
        return {}
    exact = (
        changes is not None and changes.since == previous.table_version and changes.until == version
    )
    # The full-text index first: folding it commits a table version (rows unchanged), and
    # the ANN manifests and the snapshot must all name the version that has it.
    lexical = _lexical_index(store)
    version = store.version
    generation = previous.generation + 1
    old_store = None if exact else ItemStore.open(store.index_dir, version=previous.table_version)
    ann_dirs: dict[str, str] = {}
    infos: dict[str, dict[str, Any]] = {}
    touched: list[I64] = []
    for kind in KINDS:
        if exact:
            assert changes is not None
            removed, added = changes.ids(kind)
        else:
            delta = row_delta(old_store, store, kind)  # type: ignore[arg-type]
            removed, added = delta.removed, delta.added
        touched.append(added)
        rel = f"{ANN_DIRNAME}/{kind}-g{generation}"
        target = store.index_dir / rel
        if target.exists():  # left over by a writer killed before its snapshot switch
            shutil.rmtree(target)
        index = _updated(store, spec, previous, kind, removed, added)
        if index is None:
            if kind in previous.ann_dirs or len(added):  # a new kind, or the old one unreadable
                return build_ann(store, spec, encoder=encoder)
            continue
        if len(index) == 0:
            continue
        index.save(target, table_version=version, model_key=spec.key)
        ann_dirs[kind] = rel
        infos[kind] = {**index.info, "mode": "pending"}
    if exact:
        assert changes is not None
        gone = np.asarray(changes.removed, np.int64)
    else:
        gone = _removed_ids(old_store, store)  # type: ignore[arg-type]
    rows_rel = rows_file_name(generation)
    keep = {*ann_dirs.values(), rows_rel}
    try:
        base = write_rows_delta(
            store, store.index_dir / rows_rel, spec, previous=rows_file_path(store.index_dir, previous),
            changed=np.concatenate(touched), removed=gone,
        )  # fmt: skip
        keep.add(f"{ANN_DIRNAME}/{base}")
    except (OSError, KeyError, ValueError):  # no rows file before (an older index): a full one
        write_rows_file(store, store.index_dir / rows_rel, spec)
    write_snapshot(store.index_dir, Snapshot(version, spec.key, ann_dirs, generation, lexical))
    _collect(store, keep)
    return infos


def _updated(
    store: ItemStore, spec: ModelSpec, previous: Snapshot, kind: str, removed: I64, added: I64
) -> Any:
    """``kind``'s index of the previous snapshot with the changes waiting beside it."""
    from mmsearch.ann import VectorIndex
    from mmsearch.ann.pending import merge_due

    if kind not in previous.ann_dirs:
        return None
    try:
        index = VectorIndex.load(
            previous.ann_path(store.index_dir, kind),
            expect_table_version=previous.table_version,
            expect_model_key=spec.key,
            verify_checksums=False,  # sizes and ids: hashing every segment costs seconds at 1M
        )
    except (MMSearchError, OSError, ValueError, RuntimeError):  # damaged or cleaned up
        return None
    index.remove_lazily(removed)
    if len(added):
        ids, vectors = vectors_of(store, added)
        index.add_pending(vectors, ids)
    info = index.info
    if merge_due(info["pending_rows"], info["waiting_rows"] - info["pending_rows"], len(index)):
        index.merge_pending()
    return index


def _removed_ids(old: ItemStore, new: ItemStore) -> I64:
    before = old.scan(["id"]).column("id").to_numpy()
    after = new.scan(["id"]).column("id").to_numpy()
    return np.setdiff1d(before, after).astype(np.int64)


def _lexical_index(store: ItemStore) -> str | None:
    """The full-text index's name; created, or updated once it lags too far behind."""
    if not store.has_lexical_column:
        return None
    names = [ix.name for ix in store.table.list_indices()]
    if LEXICAL_INDEX_NAME in names:
        stats = store.table.index_stats(LEXICAL_INDEX_NAME)
        lag = int(stats.num_unindexed_rows) if stats is not None else 0
        if lag <= max(LEXICAL_LAG_ROWS, LEXICAL_LAG_FRACTION * store.count()):
            return LEXICAL_INDEX_NAME
    return store.update_lexical_index()


def _snapshot_or_none(store: ItemStore) -> Snapshot | None:
    try:
        return read_snapshot(store.index_dir)
    except MMSearchError:
        return None


def _collect(store: ItemStore, keep: set[str]) -> None:
    """Deletes ANN directories and rows files the new snapshot does not name."""
    root = store.index_dir / ANN_DIRNAME
    for child in root.iterdir() if root.is_dir() else ():
        if f"{ANN_DIRNAME}/{child.name}" in keep:
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
