"""Describe and verify an index directory without loading a model or a database.

:func:`index_info` (``mmsearch info``) reads only small files: the snapshot, each ANN
manifest and the list of table versions, so it answers without importing torch,
FAISS or LanceDB. :func:`check_index` (``mmsearch check``) is the thorough one: it
re-hashes every ANN file, checks every id, opens the table at the snapshot's version
and compares row counts and ids with the ANN files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmsearch.ann.files import read_manifest
from mmsearch.ann.params import (
    FLAT_THRESHOLD,
    IndexParams,
    estimate_flat_bytes,
    estimate_ivfpq_bytes,
    retrain_due,
)
from mmsearch.errors import IndexCorruptError, IndexNotFoundError
from mmsearch.storage.objectstore import local_view, remote_uri_of
from mmsearch.storage.snapshot import Snapshot, read_snapshot
from mmsearch.storage.versions import TABLE_DIR, latest_table_version


def _snapshot_or_raise(index_dir: Path) -> Snapshot:
    snapshot = read_snapshot(index_dir)
    if snapshot is not None:
        return snapshot
    shown = remote_uri_of(index_dir) or index_dir
    if (index_dir / TABLE_DIR).is_dir() or latest_table_version(index_dir) is not None:
        raise IndexNotFoundError(
            f"index at {shown} has rows but no search index yet; run: mmsearch build-index --index {shown}"
        )
    raise IndexNotFoundError(
        f"no mmsearch index at {shown} (create one with: mmsearch index PATH --index {shown})"
    )


def ann_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """The summary ``VectorIndex.info`` gives, computed from a saved manifest alone."""
    params = IndexParams.from_dict(manifest["params"])
    n = int(manifest["n"])
    meta = dict(manifest.get("meta", {}))
    if params.index_type == "flat":
        ram = estimate_flat_bytes(n, params.d)
        needs_retrain = meta.get("requested_type") == "auto" and n >= FLAT_THRESHOLD
    else:
        ram = estimate_ivfpq_bytes(
            n,
            params.d,
            params.nlist,
            params.m,
            opq=params.opq,
            nbits=params.nbits,
            quantizer=params.quantizer,
        )
        needs_retrain = retrain_due(
            int(meta.get("trained_n", n)), int(meta.get("added_since_train", 0))
        )
    return {
        "type": params.index_type,
        "n": n,
        "d": params.d,
        "params": {
            "nlist": params.nlist,
            "m": params.m,
            "nbits": params.nbits,
            "opq": params.opq,
            "train_size": params.train_size,
            "quantizer": params.quantizer,
        },
        "nprobe": int(manifest.get("nprobe", 0)),
        "refine": int(manifest.get("refine", 0)),
        "recall_at_10": meta.get("recall_at_10"),
        "target_recall": meta.get("target_recall"),
        "bytes_per_vector": ram / max(n, 1),
        "build_seconds": meta.get("build_seconds"),
        "trained_n": meta.get("trained_n"),
        "added_since_train": meta.get("added_since_train"),
        "needs_retrain": bool(needs_retrain),
        "profiles": dict(meta.get("profiles", {})),
    }


def index_info(index_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Model, dimension, rows, table version, staleness, backends and per-kind ANN summary.

    ``index_dir`` may be an object-store URI: its published snapshot is pulled into
    the reader cache first (``local_dir`` says where).

    >>> index_info(".mmsearch")["rows"]  # doctest: +SKIP
    400
    """
    from mmsearch.models.backends import read_backend_record

    root = local_view(index_dir)
    snapshot = _snapshot_or_raise(root)
    ann: dict[str, dict[str, Any]] = {}
    for kind in snapshot.ann_dirs:
        manifest = read_manifest(snapshot.ann_path(root, kind))
        try:
            ann[kind] = ann_info(manifest)
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptError(
                f"the {kind} ANN manifest in {root} is incomplete ({exc!r})"
            ) from exc
    latest = latest_table_version(root)
    dims = {info["d"] for info in ann.values()}
    return {
        "index_dir": remote_uri_of(root) or str(root),
        "local_dir": str(root),
        "model": snapshot.model_key,
        "dim": dims.pop() if len(dims) == 1 else None,
        "rows": sum(info["n"] for info in ann.values()),
        "table_version": snapshot.table_version,
        "stale": None if latest is None else latest > snapshot.table_version,
        "backends": sorted(read_backend_record(root).get("backends", {})),
        "ann": ann,
    }


def check_index(index_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Verifies everything an open skips; raises :class:`IndexCorruptError` on the first problem.

    Per kind: every ANN file's size and SHA-256, id order, the FAISS file readable, and
    the ids equal to the table's ids of that kind at the snapshot's version. An
    object-store URI is checked through its reader cache (the published snapshot).
    Returns ``{kind: rows checked}``.
    """
    import numpy as np

    from mmsearch.ann import VectorIndex
    from mmsearch.ann.persist import open_store, verify_files
    from mmsearch.storage.schema import sql_quote
    from mmsearch.storage.table import ItemStore

    root = local_view(index_dir)
    shown = remote_uri_of(root) or root
    snapshot = _snapshot_or_raise(root)
    store = ItemStore.open(root, version=snapshot.table_version)
    checked: dict[str, Any] = {}
    for kind in snapshot.ann_dirs:
        path = snapshot.ann_path(root, kind)
        manifest = verify_files(path)
        index = VectorIndex.load(
            path,
            expect_table_version=snapshot.table_version,
            expect_model_key=store.model_spec.key,
            verify_checksums=False,  # just verified
        )
        ann_ids = np.sort(open_store(path, manifest, checksum=False).live_ids())
        table_ids = np.sort(store.scan(["id"], f"kind = {sql_quote(kind)}").column("id").to_numpy())
        if len(ann_ids) != len(index) or not np.array_equal(ann_ids, table_ids):
            raise IndexCorruptError(
                f"the {kind} ANN index in {path} holds {len(ann_ids)} ids but the table has "
                f"{len(table_ids)} {kind} rows at version {snapshot.table_version} (or other ids); "
                f"rebuild it with: mmsearch build-index --index {shown} (or mmsearch repair --index {shown})"
            )
        checked[kind] = len(table_ids)
    return checked
