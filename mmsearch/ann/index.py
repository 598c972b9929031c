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
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from mmsearch.ann._rwlock import RWLock
from mmsearch.ann.build import build_meta, build_state, check_refine_dtype
from mmsearch.ann.checks import check_queries, check_rows, positive_int
from mmsearch.ann.params import FLAT_THRESHOLD, choose_index_params, retrain_due
from mmsearch.ann.pending import clear_waiting, id_list, with_pending
from mmsearch.ann.persist import load_index, save_index, streamed_store
from mmsearch.ann.state import FileEntries, IndexState
from mmsearch.ann.store import VectorStore, pad_missing
from mmsearch.ann.structure import ADD_CHUNK, search_params
from mmsearch.ann.threads import search_threads
from mmsearch.ann.tuning import TUNE_K, tune_on_queries
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

    def __init__(self, state: IndexState, gpu_index: faiss.Index | None = None) -> None:
        """Internal: use ``build``, ``build_streamed`` or ``load``."""
        self._state = state
        self._gpu_index = gpu_index  # search copy on the GPU, dropped by any mutation
        self._gpu_lock = threading.Lock()
        self._rw = RWLock()  # searches read; add/remove/retrain and a save's swap write
        self._mutate = threading.Lock()  # one add/remove/retrain/save at a time

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
        meta = build_meta(index_type, target_recall, seed, memory_budget_bytes, opq, quantizer)
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
        check_refine_dtype(refine_dtype)
        store = VectorStore.from_arrays(vectors, ids, dtype=refine_dtype)
        return cls(*build_state(store, params, meta, use_gpu=use_gpu))

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
        meta = build_meta(index_type, target_recall, seed, None, opq, quantizer)
        check_refine_dtype(refine_dtype)
        store, files, root = streamed_store(chunks, Path(directory), refine_dtype)
        if store.n_live == 0:
            raise BadQueryError("cannot build an index from no rows")
        params = choose_index_params(
            store.n_live, store.d, index_type=index_type, opq=opq, quantizer=quantizer
        )
        state, gpu_index = build_state(store, params, meta, use_gpu=use_gpu)
        state.files, state.files_dir = files, root
        return cls(state, gpu_index)

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
        q = check_queries(queries, self._state.params.d)
        k = positive_int("k", k)
        with self._rw.read(), search_threads(len(q)):
            st = self._state
            tuned = st.meta.get("profiles", {}).get(profile, {}) if profile else {}
            default_nprobe = int(tuned.get("nprobe", st.nprobe))
            default_refine = int(tuned.get("refine", st.refine))
            nprobe_v = default_nprobe if nprobe is None else positive_int("nprobe", nprobe)
            refine_v = default_refine if refine is None else positive_int("refine", refine)
            pending = id_list(st.meta, "pending")
            if exact or (st.params.index_type == "flat" and st.waiting_rows()):
                return st.store.exact_search(q, k)  # covers pending rows, skips removed ones
            if st.params.index_type == "flat":
                scores, ids = st.index.search(q, k)
                return pad_missing(scores, ids)
            nprobe_v = min(nprobe_v, st.params.nlist)
            # The tuned refine holds for top-TUNE_K; smaller k keep that many candidates,
            # or near-duplicate neighbours crowd the true top-1 out of k*refine.
            n_cand = max(k, TUNE_K) * refine_v
            if self._gpu_index is not None:  # pragma: no cover - no GPU in CI
                with self._gpu_lock:  # GPU nprobe is set on the index, not per call
                    faiss.GpuParameterSpace().set_index_parameter(
                        self._gpu_index, "nprobe", nprobe_v
                    )
                    _, cand = self._gpu_index.search(q, min(n_cand, 2048))
            else:
                _, cand = st.index.search(
                    q,
                    n_cand,
                    params=search_params(st.index, nprobe_v, hnsw=st.params.quantizer == "hnsw"),
                )
            return with_pending(st.store, q, pending, k, st.store.rescore(q, cand, k))

    def lookup(self, ids: I64) -> tuple[F32, npt.NDArray[np.bool_]]:
        """Stored float vectors of ``ids`` (rows of unknown or removed ids are zero) and a
        mask of the ids found; safe alongside concurrent add/remove."""
        with self._rw.read():
            return self._state.store.lookup(np.asarray(ids, dtype=np.int64))

    def tune_profile(
        self, name: str, queries: F32, *, target_recall: float | None = None
    ) -> dict[str, Any]:
        """Tunes nprobe/refine for queries unlike the stored rows and keeps them as ``name``.

        Tuning at build uses stored rows as queries. Queries from another modality (text
        embeddings against image vectors) sit elsewhere in the space and need more
        probes for the same recall; pass a sample of such queries here. Saved with the
        index; a flat index needs no tuning and records none.
        """
        q = check_queries(queries, self._state.params.d)
        if self._state.params.index_type == "flat" or len(q) == 0:
            return {}
        with self._rw.read():
            st = self._state
            target = float(
                st.meta.get("target_recall", 0.95) if target_recall is None else target_recall
            )
            tuned = tune_on_queries(
                st.index,
                st.store,
                st.params,
                lambda qs, cand: st.store.rescore(qs, cand, TUNE_K),
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
            self._state.meta.setdefault("profiles", {})[name] = result
        return result

    # ------------------------------------------------------------- mutation

    @property
    def needs_retrain(self) -> bool:
        """True when the index should be rebuilt: IVF-PQ after more rows were added than it
        was trained on (``RETRAIN_GROWTH_RATIO``), or an auto-chosen flat index that grew
        past ``FLAT_THRESHOLD``."""
        st = self._state
        if st.params.index_type == "flat":
            return st.meta.get("requested_type") == "auto" and st.store.n_live >= FLAT_THRESHOLD
        return retrain_due(int(st.meta["trained_n"]), int(st.meta["added_since_train"]))

    def add_pending(self, vectors: F32, ids: I64) -> None:
        """Adds rows searched exactly beside the ANN structure until :meth:`merge_pending`."""
        vectors, ids = check_rows(vectors, ids, d=self._state.params.d, allow_empty=True)
        with self._mutate, self._rw.write():
            self._state.add_pending(vectors, ids)

    def remove_lazily(self, ids: I64) -> None:
        """Removes rows (never returned again); the structure forgets them at :meth:`merge_pending`."""
        with self._mutate, self._rw.write():
            self._state.remove_lazily(np.unique(np.asarray(ids, np.int64)))

    def merge_pending(self) -> int:
        """Moves the waiting rows into the ANN structure; returns how many waited."""
        with self._mutate, self._rw.write():
            merged = self._state.merge_pending()
            self._gpu_index = None if merged else self._gpu_index
            return merged

    def add(self, vectors: F32, ids: I64, *, retrain: bool | None = None) -> None:
        """Add rows (ids must not be present already). ``retrain=None`` retrains when
        ``needs_retrain`` becomes true, ``True`` always, ``False`` never."""
        self.merge_pending()  # rows waiting beside the structure go in first
        vectors, ids = check_rows(vectors, ids, d=self._state.params.d, allow_empty=True)
        with self._mutate:
            if len(ids):
                if len(np.unique(ids)) != len(ids):
                    raise BadQueryError("ids passed to add contain duplicates")
                present = self._state.store.contains(ids)
                if present.any():
                    raise BadQueryError(
                        f"{int(present.sum())} ids are already in the index (e.g. "
                        f"{int(ids[present][0])}); remove them first to replace their vectors"
                    )
                with self._rw.write():
                    st = self._state.make_mutable()
                    st.store.add(vectors, ids)
                    for start in range(0, len(ids), ADD_CHUNK):
                        st.index.add_with_ids(
                            vectors[start : start + ADD_CHUNK], ids[start : start + ADD_CHUNK]
                        )
                    st.index_dirty = True
                    self._gpu_index = None
                    st.meta["added_since_train"] = int(st.meta["added_since_train"]) + len(ids)
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
            st = self._state.make_mutable()
            st.store.remove(arr)
            st.index.remove_ids(arr)
            st.index_dirty = True
            self._gpu_index = None

    def retrain(self) -> None:
        """Rebuild the index structure (params, training, tuning) from the live rows."""
        with self._mutate:
            self._retrain_locked()

    def _retrain_locked(self) -> None:
        old = self._state
        store, meta = old.store, old.meta
        clear_waiting(meta)  # the rebuild takes every live row
        if store.n_live == 0:
            raise BadQueryError("cannot retrain an empty index")
        params = choose_index_params(
            store.n_live,
            store.d,
            memory_budget_bytes=meta.get("memory_budget_bytes"),
            index_type=meta.get("requested_type", "auto"),
            opq=bool(meta.get("opq", False)),
            quantizer=meta.get("quantizer", "auto"),
        )
        # Searches keep using the old index while the new one trains.
        fresh, gpu_index = build_state(store, params, meta, use_gpu=bool(meta.get("gpu")))
        fresh.files, fresh.files_dir = old.files, old.files_dir  # the refine segments stay
        with self._rw.write():
            self._state, self._gpu_index = fresh, gpu_index

    # --------------------------------------------------------------- persist

    def save(
        self, directory: str | os.PathLike[str], *, table_version: int, model_key: str
    ) -> None:
        """Write the index to ``directory`` crash-safely (new generation files, then the
        manifest, then old generations are deleted). Unchanged files are reused."""
        with self._mutate:
            save_index(
                self._state,
                directory,
                table_version=table_version,
                model_key=model_key,
                adopt=self._adopt_saved,
            )

    def _adopt_saved(self, store: VectorStore, files: FileEntries, root: Path) -> None:
        """After a save's commit: the refine vectors now come from the saved segments."""
        with self._rw.write():
            st = self._state
            st.store, st.files, st.files_dir, st.index_dirty = store, files, root, False

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
        state = load_index(
            directory,
            expect_table_version=expect_table_version,
            expect_model_key=expect_model_key,
            verify_checksums=verify_checksums,
            mmap=mmap,
        )
        return cls(state)

    # ------------------------------------------------------------------ info

    @property
    def info(self) -> dict[str, Any]:
        """Summary: type, n, d, params, tuned nprobe/refine, recall@10 measured at build,
        bytes per vector of the in-RAM ANN structures, build seconds, needs_retrain."""
        st = self._state
        return {
            **st.describe(),
            "needs_retrain": self.needs_retrain,
            "profiles": dict(st.meta.get("profiles", {})),
            "gpu": bool(st.meta.get("gpu")),
        }

    @property
    def faiss_index(self) -> faiss.Index:
        """The FAISS structure on the CPU (flat, IVF-PQ or OPQ + IVF-PQ), for inspection:
        searching it directly skips the exact refine, mutating it corrupts the index."""
        return self._state.index

    def __len__(self) -> int:
        return self._state.store.n_live
