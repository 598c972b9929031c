"""``VectorIndex``: exact flat search for small collections, IVF-PQ + exact refine for large.

Example:
    >>> import numpy as np
    >>> from mmsearch.ann import VectorIndex
    >>> x = np.random.default_rng(0).normal(size=(1000, 32)).astype(np.float32)
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> index = VectorIndex.build(x, np.arange(1000, dtype=np.int64))
    >>> scores, ids = index.search(x[:2], k=5)
    >>> ids[:, 0].tolist()
    [0, 1]
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from mmsearch.ann._rwlock import RWLock
from mmsearch.ann.checks import check_queries, check_rows, positive_int
from mmsearch.ann.params import (
    FLAT_THRESHOLD,
    IndexParams,
    choose_index_params,
    estimate_flat_bytes,
    estimate_ivfpq_bytes,
    retrain_due,
)
from mmsearch.ann.pending import id_list, merge_answers, search_pending, store_ids
from mmsearch.ann.persist import load_index, save_index
from mmsearch.ann.segment import check_dtype
from mmsearch.ann.store import VectorStore, top_k
from mmsearch.ann.tuning import (
    ADD_CHUNK,
    TUNE_K,
    build_index_structure,
    gpu_available,
    search_params,
    to_gpu,
    tune_on_queries,
)
from mmsearch.errors import BadQueryError

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


class VectorIndex:
    """Inner-product (cosine on L2-normalised vectors) k-NN index over int64 ids.

    * ``flat``: ``IndexIDMap(IndexFlatIP)``, exact.
    * ``ivfpq``: [OPQ] + IVF-PQ (8-bit codes) returns ``k * refine`` candidates that are
      re-scored exactly against the float32 vectors (memory-mapped after ``save``/``load``).
      ``nprobe`` and ``refine`` are tuned at build time to ``target_recall`` recall@10.

    Searches may run from many threads at once; ``add``/``remove``/``save`` are
    serialised and briefly exclude searches. Build with ``build``, persist with
    ``save``, reopen with ``load``.
    """

    def __init__(
        self,
        *,
        params: IndexParams,
        index: faiss.Index,
        store: VectorStore,
        nprobe: int,
        refine: int,
        meta: dict[str, Any],
    ) -> None:
        """Internal: use ``build`` or ``load``."""
        self._params = params
        self._index = index
        self._store = store
        self._nprobe = nprobe
        self._refine = refine
        self._meta = meta  # requested_type, target_recall, seed, recall_at_10, build_seconds, trained_n, added_since_train
        self._index_readonly_mmap = False
        self._index_dirty = True
        self._files: dict[str, dict[str, Any]] = {}
        self._files_dir: Path | None = None
        self._gpu_index: faiss.Index | None = None
        self._gpu_lock = threading.Lock()
        self._rw = RWLock()
        self._mutate = threading.Lock()

    # ------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        vectors: F32,
        ids: I64,
        *,
        index_type: Literal["auto", "flat", "ivfpq"] = "auto",
        target_recall: float = 0.95,
        seed: int = 0,
        use_gpu: bool | None = None,
        memory_budget_bytes: int | None = None,
        opq: bool = False,
        refine_dtype: str = "float32",
        quantizer: Literal["auto", "flat", "hnsw"] = "auto",
    ) -> VectorIndex:
        """Build (train, fill and tune) an index over ``vectors`` (n, d), L2-normalised,
        with unique non-negative ``ids``. ``use_gpu=None`` uses a GPU when FAISS sees one.
        ``memory_budget_bytes``, ``opq`` and ``quantizer`` go to ``choose_index_params``;
        ``refine_dtype="float16"`` stores the refine vectors at half size.

        Raises ``BadQueryError`` for invalid input.
        """
        vectors, ids = check_rows(vectors, ids, d=None)
        if not 0.0 < target_recall <= 1.0:
            raise BadQueryError(f"target_recall must be in (0, 1], got {target_recall}")
        if len(np.unique(ids)) != len(ids):
            raise BadQueryError("ids passed to build must be unique")
        params = choose_index_params(
            len(ids),
            vectors.shape[1],
            memory_budget_bytes=memory_budget_bytes,
            index_type=index_type,
            opq=opq,
            quantizer=quantizer,
        )
        _check_dtype(refine_dtype)
        store = VectorStore.from_arrays(vectors, ids, dtype=refine_dtype)
        meta = _build_meta(index_type, target_recall, seed, memory_budget_bytes, opq, quantizer)
        return cls._from_store(store, params, meta, use_gpu=use_gpu)

    @classmethod
    def build_streamed(
        cls,
        chunks: Iterable[tuple[F32, I64]],
        directory: str | os.PathLike[str],
        *,
        index_type: Literal["auto", "flat", "ivfpq"] = "auto",
        target_recall: float = 0.95,
        seed: int = 0,
        use_gpu: bool | None = None,
        opq: bool = False,
        refine_dtype: str = "float32",
        quantizer: Literal["auto", "flat", "hnsw"] = "auto",
    ) -> VectorIndex:
        """Build from (vectors, ids) chunks without holding all vectors in RAM.

        The chunks (e.g. batches of a table scan, any id order) are streamed into a
        refine segment file in ``directory``; IVF-PQ is then trained on a seeded sample
        read back from that file and filled chunk by chunk. Peak memory is about the
        FAISS index (codes + ids) plus one chunk and the training sample. Save the
        result into the same ``directory`` (the segment is reused, not copied).
        """
        from mmsearch.ann.persist import streamed_store

        if not 0.0 < target_recall <= 1.0:
            raise BadQueryError(f"target_recall must be in (0, 1], got {target_recall}")
        _check_dtype(refine_dtype)
        store, files, root = streamed_store(chunks, Path(directory), refine_dtype)
        if store.n_live == 0:
            raise BadQueryError("cannot build an index from no rows")
        params = choose_index_params(
            store.n_live, store.d, index_type=index_type, opq=opq, quantizer=quantizer
        )
        meta = _build_meta(index_type, target_recall, seed, None, opq, quantizer)
        out = cls._from_store(store, params, meta, use_gpu=use_gpu)
        out._files, out._files_dir = files, root
        return out

    @classmethod
    def _from_store(
        cls, store: VectorStore, params: IndexParams, meta: dict[str, Any], *, use_gpu: bool | None
    ) -> VectorIndex:
        t0 = time.perf_counter()
        gpu = gpu_available() if use_gpu is None else bool(use_gpu and gpu_available())
        phases: dict[str, float] = {}
        index, nprobe, refine, recall = build_index_structure(
            store, params, meta, use_gpu=gpu, phases=phases
        )
        meta = dict(meta)
        meta.update(
            recall_at_10=recall,
            build_seconds=round(time.perf_counter() - t0, 3),
            build_phases_s=phases,
            trained_n=store.n_live,
            added_since_train=0,
            gpu=gpu,
        )
        out = cls(params=params, index=index, store=store, nprobe=nprobe, refine=refine, meta=meta)
        if gpu and params.index_type == "ivfpq":  # pragma: no cover - no GPU in CI
            try:
                out._gpu_index = to_gpu(index)
            except RuntimeError as exc:  # GPU IVF-PQ lacks some (m, nbits): stay on CPU
                out._meta["gpu"] = False
                out._meta["gpu_error"] = str(exc)
        return out

    # ----------------------------------------------------------------- search

    def search(
        self,
        queries: F32,
        k: int,
        *,
        nprobe: int | None = None,
        refine: int | None = None,
        exact: bool = False,
        profile: str | None = None,
    ) -> tuple[F32, I64]:
        """Top-``k`` by inner product: (scores (q, k) float32, ids (q, k) int64), padded
        with (-inf, -1) when fewer than ``k`` rows exist. ``nprobe``/``refine`` override
        the tuned values for this call; ``exact=True`` brute-forces the stored vectors.
        ``profile`` picks parameters tuned by :meth:`tune_profile` for a kind of query
        (e.g. ``"cross"`` for text queries against image vectors), when one was tuned.
        A single query may be passed as shape (d,).
        """
        q = check_queries(queries, self._params.d)
        k = positive_int("k", k)
        tuned = self._meta.get("profiles", {}).get(profile, {}) if profile else {}
        default_nprobe = int(tuned.get("nprobe", self._nprobe))
        default_refine = int(tuned.get("refine", self._refine))
        nprobe_v = default_nprobe if nprobe is None else positive_int("nprobe", nprobe)
        refine_v = default_refine if refine is None else positive_int("refine", refine)
        with self._rw.read():
            pending = id_list(self._meta, "pending")
            if exact or (self._params.index_type == "flat" and self.waiting_rows):
                return self._store.exact_search(q, k)  # covers pending rows, skips removed ones
            if self._params.index_type == "flat":
                scores, ids = self._index.search(q, k)
                return _pads(scores, ids)
            if len(pending):
                answer = self._search_ivf(q, k, nprobe_v, refine_v)
                return merge_answers(answer, search_pending(self._store, q, pending, k), k)
            return self._search_ivf(q, k, nprobe_v, refine_v)

    def _search_ivf(self, q: F32, k: int, nprobe_v: int, refine_v: int) -> tuple[F32, I64]:
        nprobe_v = min(nprobe_v, self._params.nlist)
        # The tuned refine holds for top-TUNE_K; smaller k keep that many candidates,
        # or near-duplicate neighbours crowd the true top-1 out of k*refine.
        n_cand = max(k, TUNE_K) * refine_v
        if self._gpu_index is not None:  # pragma: no cover - no GPU in CI
            with self._gpu_lock:  # GPU nprobe is set on the index, not per call
                faiss.GpuParameterSpace().set_index_parameter(self._gpu_index, "nprobe", nprobe_v)
                _, cand = self._gpu_index.search(q, min(n_cand, 2048))
        else:
            _, cand = self._index.search(
                q,
                n_cand,
                params=search_params(self._index, nprobe_v, hnsw=self._params.quantizer == "hnsw"),
            )
        return self._rescore(q, cand, k)

    def _rescore(self, q: F32, cand: I64, k: int) -> tuple[F32, I64]:
        """Exact inner products of the candidates; unknown or removed ids drop out."""
        vecs, found = self._store.lookup(cand)
        vecs = vecs.reshape(cand.shape[0], cand.shape[1], -1)
        scores = np.einsum("qcd,qd->qc", vecs, q, optimize=False).astype(np.float32)
        found = found.reshape(cand.shape) & (cand >= 0)
        scores[~found] = -np.inf
        return top_k(scores, np.where(found, cand, -1), k)

    def lookup(self, ids: I64) -> tuple[F32, npt.NDArray[np.bool_]]:
        """Stored float vectors of ``ids`` (rows of unknown or removed ids are zero) and a
        mask of the ids found; safe alongside concurrent add/remove."""
        with self._rw.read():
            return self._store.lookup(np.asarray(ids, dtype=np.int64))

    def tune_profile(
        self, name: str, queries: F32, *, target_recall: float | None = None
    ) -> dict[str, Any]:
        """Tunes nprobe/refine for queries unlike the stored rows and keeps them as ``name``.

        Tuning at build uses stored rows as queries. Queries from another modality (text
        embeddings against image vectors) sit elsewhere in the space and need more
        probes for the same recall; pass a sample of such queries here. Saved with the
        index; a flat index needs no tuning and records none.
        """
        q = check_queries(queries, self._params.d)
        if self._params.index_type == "flat" or len(q) == 0:
            return {}
        target = float(
            self._meta.get("target_recall", 0.95) if target_recall is None else target_recall
        )
        with self._rw.read():
            tuned = tune_on_queries(
                self._index,
                self._store,
                self._params,
                lambda qs, cand: self._rescore(qs, cand, TUNE_K),
                q,
                target,
            )
        result = {
            "nprobe": tuned.nprobe,
            "refine": tuned.refine,
            "recall_at_10": tuned.recall,
            "queries": len(q),
        }
        with self._mutate:
            self._meta.setdefault("profiles", {})[name] = result
        return result

    # ------------------------------------------------------------- mutation

    @property
    def needs_retrain(self) -> bool:
        """True when the index should be rebuilt: IVF-PQ after more rows were added than it
        was trained on (``RETRAIN_GROWTH_RATIO``), or an auto-chosen flat index that grew
        past ``FLAT_THRESHOLD``."""
        if self._params.index_type == "flat":
            return (
                self._meta.get("requested_type") == "auto" and self._store.n_live >= FLAT_THRESHOLD
            )
        return retrain_due(int(self._meta["trained_n"]), int(self._meta["added_since_train"]))

    @property
    def waiting_rows(self) -> int:
        """Pending plus lazily removed rows (see :mod:`mmsearch.ann.pending`)."""
        return len(self._meta.get("pending", ())) + len(self._meta.get("lazily_removed", ()))

    def add_pending(self, vectors: F32, ids: I64) -> None:
        """Add rows to the refine store only: searched exactly beside the ANN structure
        until :meth:`merge_pending` (ids must not be present already)."""
        vectors, ids = check_rows(vectors, ids, d=self._params.d, allow_empty=True)
        if not len(ids):
            return
        with self._mutate:
            present = self._store.contains(ids)
            if present.any() or len(np.unique(ids)) != len(ids):
                raise BadQueryError("ids passed to add_pending are present already or repeated")
            with self._rw.write():
                self._store.add(vectors, ids)
                both = np.concatenate([id_list(self._meta, "pending"), ids])
                store_ids(self._meta, "pending", both)

    def remove_lazily(self, ids: I64) -> None:
        """Remove rows from the refine store only (never returned again); the ANN
        structure forgets them at :meth:`merge_pending`."""
        arr = np.unique(np.asarray(ids, np.int64))
        if not len(arr):
            return
        with self._mutate, self._rw.write():
            arr = arr[self._store.contains(arr)]  # unknown ids are ignored
            self._store.remove(arr)
            pending = id_list(self._meta, "pending")
            store_ids(self._meta, "pending", pending[~np.isin(pending, arr)])
            lazy = np.concatenate(
                [id_list(self._meta, "lazily_removed"), arr[~np.isin(arr, pending)]]
            )
            store_ids(self._meta, "lazily_removed", lazy)

    def merge_pending(self) -> int:
        """Adds the pending rows to the ANN structure and drops the lazily removed ones;
        returns how many rows were waiting."""
        with self._mutate:
            pending = id_list(self._meta, "pending")
            lazy = id_list(self._meta, "lazily_removed")
            if not len(pending) and not len(lazy):
                return 0
            vectors, found = self._store.lookup(pending, bulk=True)
            with self._rw.write():
                self._make_mutable()
                if len(lazy):
                    self._index.remove_ids(lazy)
                for start in range(0, int(found.sum()), ADD_CHUNK):
                    part = slice(start, start + ADD_CHUNK)
                    self._index.add_with_ids(vectors[found][part], pending[found][part])
                self._meta["added_since_train"] = int(self._meta.get("added_since_train", 0)) + len(
                    pending
                )
                store_ids(self._meta, "pending", pending[:0])
                store_ids(self._meta, "lazily_removed", lazy[:0])
                self._index_dirty = True
                self._gpu_index = None
            return len(pending) + len(lazy)

    def add(self, vectors: F32, ids: I64, *, retrain: bool | None = None) -> None:
        """Add rows (ids must not be present already). ``retrain=None`` retrains when
        ``needs_retrain`` becomes true, ``True`` always, ``False`` never."""
        self.merge_pending()  # rows waiting beside the structure go in first
        vectors, ids = check_rows(vectors, ids, d=self._params.d, allow_empty=True)
        with self._mutate:
            if len(ids):
                if len(np.unique(ids)) != len(ids):
                    raise BadQueryError("ids passed to add contain duplicates")
                present = self._store.contains(ids)
                if present.any():
                    raise BadQueryError(
                        f"{int(present.sum())} ids are already in the index (e.g. "
                        f"{int(ids[present][0])}); remove them first to replace their vectors"
                    )
                with self._rw.write():
                    self._make_mutable()
                    self._store.add(vectors, ids)
                    for start in range(0, len(ids), ADD_CHUNK):
                        self._index.add_with_ids(
                            vectors[start : start + ADD_CHUNK], ids[start : start + ADD_CHUNK]
                        )
                    self._index_dirty = True
                    self._gpu_index = None
                    self._meta["added_since_train"] = int(self._meta["added_since_train"]) + len(
                        ids
                    )
            if retrain or (retrain is None and self.needs_retrain):
                self._retrain_locked()

    def remove(self, ids: I64) -> None:
        """Remove rows by id (unknown ids are ignored); they are never returned again."""
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise BadQueryError("ids to remove must be a 1-D integer array")
        arr = np.unique(arr.astype(np.int64))
        if not len(arr):
            return
        self.merge_pending()
        with self._mutate, self._rw.write():
            self._make_mutable()
            self._store.remove(arr)
            self._index.remove_ids(arr)
            self._index_dirty = True
            self._gpu_index = None

    def retrain(self) -> None:
        """Rebuild the index structure (params, training, tuning) from the live rows."""
        with self._mutate:
            self._retrain_locked()

    def _retrain_locked(self) -> None:
        store = self._store
        store_ids(self._meta, "pending", np.empty(0, np.int64))  # the rebuild takes every live row
        store_ids(self._meta, "lazily_removed", np.empty(0, np.int64))
        if store.n_live == 0:
            raise BadQueryError("cannot retrain an empty index")
        requested = self._meta.get("requested_type", "auto")
        params = choose_index_params(
            store.n_live,
            store.d,
            memory_budget_bytes=self._meta.get("memory_budget_bytes"),
            index_type=requested,
            opq=bool(self._meta.get("opq", False)),
            quantizer=self._meta.get("quantizer", "auto"),
        )
        # Searches keep using the old index while the new one trains.
        fresh = VectorIndex._from_store(
            store, params, self._meta, use_gpu=bool(self._meta.get("gpu"))
        )
        with self._rw.write():
            self._params, self._index = fresh._params, fresh._index
            self._nprobe, self._refine, self._meta = fresh._nprobe, fresh._refine, fresh._meta
            self._gpu_index = fresh._gpu_index
            self._index_readonly_mmap = False
            self._index_dirty = True

    def _make_mutable(self) -> None:
        """A memory-mapped FAISS index is read-only (mutating it aborts the process):
        copy it into RAM before the first add/remove."""
        if self._index_readonly_mmap:
            entry = self._files.get("index")
            fresh = None
            if entry is not None and self._files_dir is not None:
                try:  # one read of the file, not a serialised copy of the map
                    fresh = faiss.read_index(str(self._files_dir / entry["name"]))
                except RuntimeError:  # collected by another writer's save since we mapped it
                    fresh = None
            if fresh is None or fresh.ntotal != self._index.ntotal:
                fresh = faiss.deserialize_index(faiss.serialize_index(self._index))
            self._index = fresh
            self._index_readonly_mmap = False

    # --------------------------------------------------------------- persist

    def save(
        self, directory: str | os.PathLike[str], *, table_version: int, model_key: str
    ) -> None:
        """Write the index to ``directory`` crash-safely (new generation files, then the
        manifest, then old generations are deleted). Unchanged files are reused."""
        save_index(self, directory, table_version=table_version, model_key=model_key)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        expect_table_version: int | None = None,
        expect_model_key: str | None = None,
        verify_checksums: bool = True,
        mmap: bool = True,
    ) -> VectorIndex:
        """Open a saved index. Raises IndexNotFoundError (no manifest), ModelMismatchError
        (other model), IndexCorruptError (stale table version, missing/truncated/corrupt
        files). ``mmap=True`` maps the IVF lists and refine vectors instead of reading them."""
        return load_index(
            cls,
            directory,
            expect_table_version=expect_table_version,
            expect_model_key=expect_model_key,
            verify_checksums=verify_checksums,
            mmap=mmap,
        )

    # ------------------------------------------------------------------ info

    @property
    def info(self) -> dict[str, Any]:
        """Summary: type, n, d, params, tuned nprobe/refine, recall@10 measured at build,
        bytes per vector of the in-RAM ANN structures, build seconds, needs_retrain."""
        p, n = self._params, self._store.n_live
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
            "nprobe": self._nprobe,
            "refine": self._refine,
            "recall_at_10": self._meta.get("recall_at_10"),
            "target_recall": self._meta.get("target_recall"),
            "bytes_per_vector": ram / max(n, 1),
            "refine_vectors_memory_mapped": self._store.is_memory_mapped,
            "refine_dtype": self._store.dtype,
            "refine_segments": len(self._store.segments) + (1 if self._store.delta_rows else 0),
            "refine_dead_rows": self._store.n_dead,
            "build_seconds": self._meta.get("build_seconds"),
            "build_phases_s": self._meta.get("build_phases_s"),
            "trained_n": self._meta.get("trained_n"),
            "added_since_train": self._meta.get("added_since_train"),
            "needs_retrain": self.needs_retrain,
            "pending_rows": len(self._meta.get("pending", ())),
            "profiles": dict(self._meta.get("profiles", {})),
            "gpu": bool(self._meta.get("gpu")),
        }

    def __len__(self) -> int:
        return self._store.n_live


# ---------------------------------------------------------------- helpers


def _check_dtype(refine_dtype: str) -> None:
    try:
        check_dtype(refine_dtype)
    except ValueError as exc:
        raise BadQueryError(str(exc)) from None


def _build_meta(
    index_type: str,
    target_recall: float,
    seed: int,
    memory_budget_bytes: int | None,
    opq: bool,
    quantizer: str = "auto",
) -> dict[str, Any]:
    return {
        "requested_type": index_type,
        "target_recall": float(target_recall),
        "seed": int(seed),
        "memory_budget_bytes": memory_budget_bytes,
        "opq": bool(opq),
        "quantizer": quantizer,
    }


def _pads(scores: F32, ids: I64) -> tuple[F32, I64]:
    scores = np.asarray(scores, np.float32).copy()
    scores[ids < 0] = -np.inf
    return scores, np.asarray(ids, np.int64)
