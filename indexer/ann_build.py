"""Build the ANN indexes of an index directory from its table, and publish a snapshot.

One :class:`mmsearch.ann.VectorIndex` per kind (image, text), each matching the table
at one version, and the table's full-text index brought up to date first (see
:meth:`mmsearch.storage.table.ItemStore.update_lexical_index`). When the previous snapshot holds a trained IVF-PQ index, the rows
that changed since its table version are removed/added in place (no retraining);
the index retrains by itself once the rows added since training exceed
``RETRAIN_GROWTH_RATIO`` × the rows it was trained on, and ``retrain=True`` (``mmsearch
build-index --retrain``) forces it. Flat indexes (small collections) are rebuilt.

Each build goes to a new directory ``ann/<kind>-g<generation>``; the snapshot naming
it is written last, so a run killed anywhere in here leaves the previous snapshot —
and its files — intact, and readers of the old snapshot keep working.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mmsearch.errors import MMSearchError
from mmsearch.models.base import Encoder
from mmsearch.models.prompts import (  # noqa: F401 - the calibration vocabulary's old home
    CALIBRATION_COLOURS,
    CALIBRATION_NOUNS,
    CALIBRATION_PLACES,
    calibration_prompts,
)
from mmsearch.models.spec import ModelSpec
from mmsearch.storage.rowsfile import rows_file_name, write_rows_file
from mmsearch.storage.schema import fixed_list_to_numpy, sql_quote
from mmsearch.storage.snapshot import ANN_DIRNAME, Snapshot, read_snapshot, write_snapshot
from mmsearch.storage.table import ItemStore

KINDS = ("image", "text")
#: Cross-modal tuning sample size (text queries against images, and back).
CROSS_TUNE_QUERIES = 500
#: Above this fraction of changed rows, rebuilding is cheaper than patching.
INCREMENTAL_MAX_CHANGE = 0.5
_ID_CHUNK = 5000


@dataclass(frozen=True)
class RowDelta:
    """Rows of one kind that differ between two table versions."""

    removed: npt.NDArray[np.int64]  # ids gone or whose content changed
    added: npt.NDArray[np.int64]  # ids new or whose content changed


def build_ann(
    store: ItemStore,
    spec: ModelSpec,
    *,
    index_type: str = "auto",
    target_recall: float = 0.95,
    retrain: bool = False,
    progress: Callable[[str, int, int | None], None] | None = None,
    seed: int = 0,
    encoder: Encoder | None = None,
    refine_dtype: str = "float32",
    use_gpu: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Builds or updates every kind's ANN index from the table's current version.

    Each IVF-PQ index is also tuned for cross-modal queries (profile ``"cross"``): with
    a sample of the other kind's vectors from the table, or else — for image indexes,
    given the ``encoder`` — with embedded calibration texts.
    A rebuilt index is streamed from the table (bounded memory); an updated one keeps
    its refine segments (hard-linked into the new directory) and adds one segment with
    the new rows plus a tombstone file. ``refine_dtype="float16"`` halves the refine
    vectors of rebuilt indexes. ``use_gpu``: train with faiss-gpu (None: when FAISS
    sees a GPU; the CPU whenever it sees none).
    Returns each kind's ``VectorIndex.info`` plus ``"mode"``: ``incremental`` or ``rebuilt``.
    """
    from mmsearch.ann import VectorIndex
    from mmsearch.ann.persist import verify_files

    index_dir = store.index_dir
    # The full-text index first: updating it commits a table version, and the
    # snapshot must name the version that has it.
    lexical_index = store.update_lexical_index()
    version = store.version
    previous = _read_snapshot_or_none(store)
    if (
        previous is not None
        and not retrain
        and index_type == "auto"
        and previous.table_version == version
        and previous.lexical_index == lexical_index
    ):
        unchanged = _unchanged_infos(store, spec, previous)
        if unchanged is not None:  # nothing was written since the snapshot: keep it as it is
            return unchanged
    generation = (previous.generation + 1) if previous else 1
    ann_dirs: dict[str, str] = {}
    infos: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        rel = f"{ANN_DIRNAME}/{kind}-g{generation}"
        target = index_dir / rel
        if target.exists():  # left over by a run killed before its snapshot switch
            shutil.rmtree(target)
        index = None
        mode = "rebuilt"
        if previous is not None and not retrain and kind in previous.ann_dirs:
            index = _update_in_place(store, spec, previous, kind, index_type)
            mode = "incremental" if index is not None else mode
        if index is None:
            if not store.scan(["id"], f"kind = {sql_quote(kind)}").num_rows:
                continue
            # Streamed from the table into the new directory: the float vectors are
            # never all in RAM, and the save below reuses the segment file.
            index = VectorIndex.build_streamed(
                store.iter_vectors(kind),
                target,
                index_type=index_type,  # type: ignore[arg-type]
                target_recall=target_recall,
                seed=seed,
                refine_dtype=refine_dtype,
                use_gpu=use_gpu,
            )
        if len(index) == 0:
            shutil.rmtree(target, ignore_errors=True)
            continue
        # Only IVF-PQ has parameters to tune: a flat index answers exactly, so no
        # calibration vectors are read or encoded for it.
        if index.info["type"] == "ivfpq":
            cross = _cross_queries(store, kind, encoder, seed)
            if cross is not None and len(cross):
                index.tune_profile("cross", cross, target_recall=target_recall)
        index.save(target, table_version=version, model_key=spec.key)
        verify_files(target)  # read back what was written before the snapshot names it
        ann_dirs[kind] = rel
        infos[kind] = {**index.info, "mode": mode}
        if progress is not None:
            progress("ann", 1, 1)
    rows_rel = rows_file_name(generation)
    write_rows_file(store, index_dir / rows_rel, spec)  # what queries show, without LanceDB
    write_snapshot(index_dir, Snapshot(version, spec.key, ann_dirs, generation, lexical_index))
    _collect_garbage(store, {*ann_dirs.values(), rows_rel})
    return infos


def rebuild_ann(
    index: str | os.PathLike[str],
    *,
    index_type: str = "auto",
    target_recall: float = 0.95,
    retrain: bool = False,
    progress: Callable[[str, int, int | None], None] | None = None,
    wait_s: float = 0.0,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """``mmsearch build-index``: (re)builds the ANN indexes of ``index`` from its table and
    publishes the new snapshot, as one writer (see :func:`writer_session`). What went
    wrong after publishing (clean-up of old files) is appended to ``warnings``."""
    from mmsearch.indexer.session import writer_session

    with writer_session(index, wait_s=wait_s) as session:
        store = ItemStore.open(session.local_dir)
        infos = build_ann(
            store, store.model_spec, index_type=index_type, target_recall=target_recall,
            retrain=retrain, progress=progress,
        )  # fmt: skip
        session.publish()
        if warnings is not None:
            warnings.extend(session.warnings)
    return infos


def _cross_queries(
    store: ItemStore, kind: str, encoder: Encoder | None, seed: int
) -> npt.NDArray[np.float32] | None:
    """Vectors that look like queries from the other modality, for ``kind``'s index."""
    other = "text" if kind == "image" else "image"
    ids = store.scan(["id"], f"kind = {sql_quote(other)}").column("id").to_numpy()
    if len(ids):
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(ids, size=min(CROSS_TUNE_QUERIES, len(ids)), replace=False))
        return vectors_of(store, pick.astype(np.int64))[1]
    if kind == "image" and encoder is not None:
        return calibration_vectors(encoder, seed)
    return None


def calibration_vectors(encoder: Encoder, seed: int) -> npt.NDArray[np.float32]:
    """Embeddings of :func:`calibration_prompts`, cached per model spec and backend.

    Encoding the prompts costs seconds with a real model; the result depends only on
    the model, so it is kept under the user cache directory and reused by every index.
    """
    from mmsearch.models.cache import user_cache_dir

    prompts = calibration_prompts(seed, CROSS_TUNE_QUERIES)
    spec = getattr(encoder, "spec", None)
    ident = {
        "spec": spec.to_json() if spec is not None else type(encoder).__name__,
        "weights": _weights_stamp(spec),
        "backend": getattr(encoder, "backend", "torch"),
        "quantize": getattr(encoder, "quantize", None),
        "dim": int(encoder.dim),
        "prompts": prompts,
    }
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    path = user_cache_dir() / "calibration" / f"{key}.npy"
    try:
        cached = np.load(path)
        if cached.shape == (len(prompts), encoder.dim) and cached.dtype == np.float32:
            return cached
    except (OSError, ValueError):
        pass
    vectors = np.ascontiguousarray(encoder.encode_texts(prompts), dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    return vectors


def _weights_stamp(spec: ModelSpec | None) -> str:
    """Size and mtime of a local checkpoint named by ``spec`` (its content may change)."""
    if spec is None or not spec.pretrained or not os.path.isfile(spec.pretrained):
        return ""
    st = os.stat(spec.pretrained)
    return f"{os.path.realpath(spec.pretrained)}:{st.st_size}:{st.st_mtime_ns}"


def row_delta(old: ItemStore, new: ItemStore, kind: str) -> RowDelta:
    """Which ids of ``kind`` were removed/added (content change = both) between versions."""
    where = f"kind = {sql_quote(kind)}"
    before = old.scan(["id", "sha256"], where)
    after = new.scan(["id", "sha256"], where)
    new.check_unique_ids(after.column("id").to_numpy().astype(np.int64))
    old_map = dict(
        zip(before.column("id").to_pylist(), before.column("sha256").to_pylist(), strict=True)
    )
    new_map = dict(
        zip(after.column("id").to_pylist(), after.column("sha256").to_pylist(), strict=True)
    )
    removed = [i for i, sha in old_map.items() if new_map.get(i, None) != sha or i not in new_map]
    added = [i for i, sha in new_map.items() if old_map.get(i, None) != sha or i not in old_map]
    return RowDelta(np.asarray(sorted(removed), np.int64), np.asarray(sorted(added), np.int64))


def vectors_of(
    store: ItemStore, ids: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(ids, vectors) of the given ids, read from the table in chunks."""
    out_ids, out_vecs = [], []
    for start in range(0, len(ids), _ID_CHUNK):
        part = ",".join(str(int(i)) for i in ids[start : start + _ID_CHUNK])
        tbl = store.scan(["id", "vector"], f"id IN ({part})")
        out_ids.append(tbl.column("id").to_numpy().astype(np.int64))
        out_vecs.append(fixed_list_to_numpy(tbl.column("vector"), store.dim))
    if not out_ids:
        return np.zeros(0, np.int64), np.zeros((0, store.dim), np.float32)
    return np.concatenate(out_ids), np.concatenate(out_vecs)


def _update_in_place(
    store: ItemStore, spec: ModelSpec, previous: Snapshot, kind: str, index_type: str
) -> Any:
    """The previous IVF-PQ index patched to the current table, or None to rebuild."""
    from mmsearch.ann import VectorIndex

    try:
        index = VectorIndex.load(
            previous.ann_path(store.index_dir, kind),
            expect_table_version=previous.table_version,
            expect_model_key=spec.key,
        )
        old_store = ItemStore.open(store.index_dir, version=previous.table_version)
        delta = row_delta(old_store, store, kind)
    except (MMSearchError, OSError, ValueError, RuntimeError):  # damaged or cleaned up: rebuild
        return None
    info = index.info
    if info["type"] != "ivfpq" or index_type not in ("auto", info["type"]):
        return None
    index.merge_pending()  # rows record upserts left beside the structure go in now
    if len(delta.removed) + len(delta.added) > INCREMENTAL_MAX_CHANGE * max(len(index), 1):
        return None
    if len(delta.removed):
        index.remove(delta.removed)
    if len(delta.added):
        ids, vectors = vectors_of(store, delta.added)
        index.add(vectors, ids)  # retrains by itself past the growth ratio
    return index


def _unchanged_infos(
    store: ItemStore, spec: ModelSpec, snapshot: Snapshot
) -> dict[str, dict[str, Any]] | None:
    """Info of the snapshot's indexes when they all load and match; None to rebuild."""
    from mmsearch.ann import VectorIndex

    infos: dict[str, dict[str, Any]] = {}
    try:
        for kind, rel in snapshot.ann_dirs.items():
            index = VectorIndex.load(
                store.index_dir / rel,
                expect_table_version=snapshot.table_version,
                expect_model_key=spec.key,
            )
            if index.info["waiting_rows"]:  # record upserts left rows beside it: merge them
                return None
            infos[kind] = {**index.info, "mode": "unchanged"}
    except (MMSearchError, OSError, ValueError, RuntimeError):
        return None
    kinds_with_rows = {k for k in KINDS if store.scan(["id"], f"kind = {sql_quote(k)}").num_rows}
    return infos if set(infos) == kinds_with_rows else None


def _read_snapshot_or_none(store: ItemStore) -> Snapshot | None:
    try:
        return read_snapshot(store.index_dir)
    except MMSearchError:  # a damaged snapshot is replaced by the new one
        return None


def _collect_garbage(store: ItemStore, keep: set[str]) -> None:
    root = store.index_dir / ANN_DIRNAME
    if not root.is_dir():
        return
    for child in root.iterdir():
        if f"{ANN_DIRNAME}/{child.name}" not in keep:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
