"""Building an index: a FAISS structure trained, filled and tuned over a refine store.

Flat below ``FLAT_THRESHOLD`` rows (exact, nothing to tune); IVF-PQ above it, trained
on a seeded sample of live rows, filled, then tuned to the target recall on stored rows
as queries. :func:`build_state` wraps the result with its build record.
"""

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np

from mmsearch.ann.params import IndexParams
from mmsearch.ann.segment import check_dtype
from mmsearch.ann.state import IndexState
from mmsearch.ann.store import VectorStore
from mmsearch.ann.structure import fill_index, gpu_available, to_gpu, train_ivfpq
from mmsearch.ann.tuning import tune_on_stored_rows
from mmsearch.errors import BadQueryError


def build_state(
    store: VectorStore, params: IndexParams, meta: dict[str, Any], *, use_gpu: bool | None
) -> tuple[IndexState, faiss.Index | None]:
    """The state of an index over ``store`` built with ``params``, and its GPU search copy
    (``None`` on CPU). ``meta`` is the build request (:func:`build_meta`); the returned
    state's meta adds what the build measured. ``use_gpu=None`` uses a GPU when FAISS
    sees one."""
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
    state = IndexState(
        params=params, index=index, store=store, nprobe=nprobe, refine=refine, meta=meta
    )
    gpu_index = None
    if gpu and params.index_type == "ivfpq":  # pragma: no cover - no GPU in CI
        try:
            gpu_index = to_gpu(index)
        except RuntimeError as exc:  # GPU IVF-PQ lacks some (m, nbits): stay on CPU
            state.meta["gpu"] = False
            state.meta["gpu_error"] = str(exc)
    return state, gpu_index


def build_index_structure(
    store: VectorStore,
    params: IndexParams,
    meta: dict[str, Any],
    *,
    use_gpu: bool,
    phases: dict[str, float] | None = None,
) -> tuple[faiss.Index, int, int, float | None]:
    """The FAISS index over ``store`` with its tuned (nprobe, refine) and measured recall@10.

    Flat: exact, nothing to tune. IVF-PQ: trained on a seeded sample of ``params.train_size``
    live rows, filled, then tuned to ``meta["target_recall"]`` with ``meta["seed"]``.
    ``phases`` receives the seconds of each step (train, add, tune).
    """
    phases = {} if phases is None else phases
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 3)
        clock = now

    seed = int(meta["seed"])
    n, d = store.n_live, store.d
    if params.index_type == "flat":
        index: faiss.Index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        fill_index(index, store)
        nprobe = refine = 0
        recall: float | None = 1.0
    else:
        rng = np.random.default_rng(seed)
        live = store.live_ids()
        train_ids = np.sort(rng.choice(live, size=min(params.train_size, n), replace=False))
        xt, _ = store.lookup(train_ids, bulk=True)
        index = train_ivfpq(xt, params, seed=seed, use_gpu=use_gpu)
        del xt
        lap("train")
        fill_index(index, store)
        lap("add")
        tuned = tune_on_stored_rows(index, store, params, live, rng, float(meta["target_recall"]))
        nprobe, refine, recall = tuned.nprobe, tuned.refine, tuned.recall
        lap("tune")
    return index, nprobe, refine, recall


def check_refine_dtype(refine_dtype: str) -> None:
    """Raises :class:`BadQueryError` unless the refine store can hold ``refine_dtype``."""
    try:
        check_dtype(refine_dtype)
    except ValueError as exc:
        raise BadQueryError(str(exc)) from None


def build_meta(
    index_type: str,
    target_recall: float,
    seed: int,
    memory_budget_bytes: int | None,
    opq: bool,
    quantizer: str = "auto",
) -> dict[str, Any]:
    """The build request recorded with an index (a retrain repeats it).

    Raises :class:`BadQueryError` for a ``target_recall`` outside (0, 1].
    """
    if not 0.0 < target_recall <= 1.0:
        raise BadQueryError(f"target_recall must be in (0, 1], got {target_recall}")
    return {
        "requested_type": index_type,
        "target_recall": float(target_recall),
        "seed": int(seed),
        "memory_budget_bytes": memory_budget_bytes,
        "opq": bool(opq),
        "quantizer": quantizer,
    }
