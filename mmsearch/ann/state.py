"""What a ``VectorIndex`` is made of: the parts that building, saving and loading
produce and consume.

:class:`IndexState` holds no lock (its one I/O: reading its FAISS file back into RAM). ``VectorIndex`` (``mmsearch.ann.index``)
owns one and serialises access to it; ``mmsearch.ann.build`` makes one from a refine store,
``mmsearch.ann.persist`` writes one to a directory and reads one back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from mmsearch.ann.params import IndexParams, estimate_flat_bytes, estimate_ivfpq_bytes
from mmsearch.ann.pending import id_list, store_ids
from mmsearch.ann.store import VectorStore
from mmsearch.ann.structure import ADD_CHUNK
from mmsearch.errors import BadQueryError

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

FileEntries = dict[str, dict[str, Any]]
"""Manifest role (``index``, ``vectors``, ``ids.1``, ``tombstones``...) → file entry."""


@dataclass
class IndexState:
    """The FAISS structure, the exact refine store, the tuned search parameters and the
    build record of one index, plus the files it was loaded from or last saved to.

    ``meta`` records how the index was built (``requested_type``, ``target_recall``,
    ``seed``, ``memory_budget_bytes``, ``opq``, ``quantizer``) and what the build
    measured (``recall_at_10``, ``build_seconds``, ``build_phases_s``, ``trained_n``,
    ``added_since_train``, ``gpu``, tuned ``profiles``).
    """

    params: IndexParams
    index: faiss.Index
    store: VectorStore
    nprobe: int
    refine: int
    meta: dict[str, Any]
    files: FileEntries = field(default_factory=dict)
    """The manifest entries of the directory the index came from (empty when never saved)."""
    files_dir: Path | None = None
    """That directory."""
    index_dirty: bool = True
    """The FAISS structure differs from the ``index`` file in ``files_dir``."""
    index_readonly_mmap: bool = False
    """The FAISS structure is memory-mapped from its file: mutating it would abort the
    process, so it is copied into RAM first (``VectorIndex`` does)."""

    def make_mutable(self) -> IndexState:
        """A memory-mapped FAISS index is read-only (mutating it aborts the process):
        copies it into RAM before the first add/remove. Returns ``self``."""
        if self.index_readonly_mmap:
            entry = self.files.get("index")
            fresh = None
            if entry is not None and self.files_dir is not None:
                try:  # one read of the file, not a serialised copy of the map
                    fresh = faiss.read_index(str(self.files_dir / entry["name"]))
                except RuntimeError:  # collected by another writer's save since we mapped it
                    fresh = None
            if fresh is None or fresh.ntotal != self.index.ntotal:
                fresh = faiss.deserialize_index(faiss.serialize_index(self.index))
            self.index = fresh
            self.index_readonly_mmap = False
        return self

    # -- rows waiting beside the structure (mmsearch.ann.pending); the caller holds the locks
    def waiting_rows(self) -> int:
        return len(self.meta.get("pending", ())) + len(self.meta.get("lazily_removed", ()))

    def add_pending(self, vectors: F32, ids: I64) -> None:
        if not len(ids):
            return
        if self.store.contains(ids).any() or len(np.unique(ids)) != len(ids):
            raise BadQueryError("ids passed to add_pending are present already or repeated")
        self.store.add(vectors, ids)
        store_ids(self.meta, "pending", np.concatenate([id_list(self.meta, "pending"), ids]))

    def remove_lazily(self, ids: I64) -> None:
        ids = ids[self.store.contains(ids)]  # unknown ids are ignored
        if not len(ids):
            return
        self.store.remove(ids)
        pending = id_list(self.meta, "pending")
        store_ids(self.meta, "pending", pending[~np.isin(pending, ids)])
        lazy = np.concatenate([id_list(self.meta, "lazily_removed"), ids[~np.isin(ids, pending)]])
        store_ids(self.meta, "lazily_removed", lazy)

    def merge_pending(self) -> int:
        """Adds the pending rows to the structure, removes the lazily removed ones."""
        pending, lazy = id_list(self.meta, "pending"), id_list(self.meta, "lazily_removed")
        if not len(pending) and not len(lazy):
            return 0
        vectors, found = self.store.lookup(pending, bulk=True)
        self.make_mutable()
        if len(lazy):
            self.index.remove_ids(lazy)
        for start in range(0, int(found.sum()), ADD_CHUNK):
            part = slice(start, start + ADD_CHUNK)
            self.index.add_with_ids(vectors[found][part], pending[found][part])
        added = int(self.meta.get("added_since_train", 0)) + int(found.sum())
        self.meta["added_since_train"] = added
        store_ids(self.meta, "pending", pending[:0])
        store_ids(self.meta, "lazily_removed", lazy[:0])
        self.index_dirty = True
        return len(pending) + len(lazy)

    def describe(self) -> dict[str, Any]:
        """``VectorIndex.info`` without ``needs_retrain``: type, sizes, parameters,
        tuned values, the build record and the refine store's layout."""
        p, n, store = self.params, self.store.n_live, self.store
        if p.index_type == "flat":
            ram = estimate_flat_bytes(n, p.d)
        else:
            ram = estimate_ivfpq_bytes(
                n, p.d, p.nlist, p.m, opq=p.opq, nbits=p.nbits, quantizer=p.quantizer
            )
        return {
            "type": p.index_type,
            "n": n,
            "d": p.d,
            "params": {
                "nlist": p.nlist,
                "m": p.m,
                "nbits": p.nbits,
                "opq": p.opq,
                "train_size": p.train_size,
                "quantizer": p.quantizer,
            },
            "nprobe": self.nprobe,
            "refine": self.refine,
            "recall_at_10": self.meta.get("recall_at_10"),
            "target_recall": self.meta.get("target_recall"),
            "bytes_per_vector": ram / max(n, 1),
            "refine_vectors_memory_mapped": store.is_memory_mapped,
            "refine_dtype": store.dtype,
            "refine_segments": len(store.segments) + (1 if store.delta_rows else 0),
            "refine_dead_rows": store.n_dead,
            "build_seconds": self.meta.get("build_seconds"),
            "build_phases_s": self.meta.get("build_phases_s"),
            "trained_n": self.meta.get("trained_n"),
            "added_since_train": self.meta.get("added_since_train"),
            "pending_rows": len(self.meta.get("pending", ())),
            "waiting_rows": self.waiting_rows(),
        }
