"""Build the ANN indexes of an index directory from its table, and publish a snapshot.

One :class:`mmsearch.ann.VectorIndex` per kind (image, text), each built from the
table at one version. The snapshot naming that version is written last, so a run
killed anywhere in here leaves the previous snapshot — and its files — intact.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from mmsearch.models.spec import ModelSpec
from mmsearch.snapshot import ANN_DIRNAME, Snapshot, read_snapshot, write_snapshot
from mmsearch.storage import ItemStore

KINDS = ("image", "text")


def build_ann(
    store: ItemStore,
    spec: ModelSpec,
    *,
    index_type: str = "auto",
    target_recall: float = 0.95,
    progress: Callable[[str, int, int | None], None] | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Builds every kind's ANN index from the table's current version; returns their info."""
    from mmsearch.ann import VectorIndex

    index_dir = store.index_dir
    version = store.version
    previous = read_snapshot_or_none(store)
    generation = (previous.generation + 1) if previous else 1
    ann_dirs: dict[str, str] = {}
    infos: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        ids, vectors = store.vectors(kind)
        if len(ids) == 0:
            continue
        rel = f"{ANN_DIRNAME}/{kind}-g{generation}"
        target = index_dir / rel
        if target.exists():  # left over by a run killed before its snapshot switch
            shutil.rmtree(target)
        index = VectorIndex.build(vectors, ids, index_type=index_type, target_recall=target_recall, seed=seed)
        index.save(target, table_version=version, model_key=spec.key)
        ann_dirs[kind] = rel
        infos[kind] = dict(index.info)
        if progress is not None:
            progress("ann", 1, len(KINDS))
    write_snapshot(index_dir, Snapshot(version, spec.key, ann_dirs, generation))
    _collect_garbage(store, set(ann_dirs.values()))
    return infos


def read_snapshot_or_none(store: ItemStore) -> Snapshot | None:
    try:
        return read_snapshot(store.index_dir)
    except Exception:  # a damaged snapshot is replaced by the new one
        return None


def _collect_garbage(store: ItemStore, keep: set[str]) -> None:
    root = store.index_dir / ANN_DIRNAME
    if not root.is_dir():
        return
    for child in root.iterdir():
        if f"{ANN_DIRNAME}/{child.name}" not in keep:
            shutil.rmtree(child, ignore_errors=True)
