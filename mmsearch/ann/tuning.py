"""FAISS side of the index: building it (flat, or IVF-PQ trained and filled from the
store), search parameters, tuning nprobe/refine on stored rows or on sample queries.

Coarse centroids come from a seeded two-level spherical k-means (sqrt(nlist) clusters,
then sub-clusters inside each), about 30x cheaper than flat k-means at nlist=4096 and
close in quality; IndexIVF then skips its own coarse training because the quantizer
already holds ``nlist`` centroids.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from mmsearch.ann.params import HNSW_M, MAX_POINTS_PER_CENTROID, IndexParams
from mmsearch.ann.store import VectorStore, top_k

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

KMEANS_NITER = 20
OPQ_NITER = 20
PQ_NITER = 12
PQ_MAX_POINTS_PER_CENTROID = 64
"""PQ codebooks: 12 iterations on <= 16k points (FAISS: 25 on 64k), ~8x less training;
the exact refine absorbs the small loss in code quality."""
TUNE_REFINES = (1, 2, 4, 8, 16, 32)
"""Refine factors tried at build time (candidates = k x refine)."""

RECALL_MARGIN = 0.005
"""Tuning aims this much above the target: 500 tuning queries x 10 neighbours measure
recall with a standard error of ~0.003 at 0.95, and at 1M x 512 a config tuned to
exactly 0.95 (0.9536 measured) gave 0.947 on held-out queries."""

REFINE_ROW_COST = 8
"""Cost of exactly re-scoring one candidate, in bytes touched per dimension (random
read of 4 bytes, roughly twice the cost of a sequential one); a PQ code costs m."""

HNSW_EF_CONSTRUCTION = 80
HNSW_EF_ADD = 32
"""efSearch of the HNSW coarse quantizer when rows are added (assigned to one list):
99.96 % of 65,536 rows land in the same list as with an exact scan (16,384 lists)."""
HNSW_EF_SEARCH_MIN = 64
"""efSearch of the HNSW coarse quantizer at query time: ``max(64, 2 * nprobe)``; at
nprobe 32 over 16,384 lists it finds 99.6 % of the exact top-32 lists."""

TUNE_K = 10
MAX_TUNE_QUERIES = 500
ADD_CHUNK = 65_536


def gpu_available() -> bool:
    """True when this FAISS build sees a GPU."""
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get and get() > 0)


def to_gpu(index: faiss.Index) -> faiss.Index:  # pragma: no cover - no GPU in CI
    """Search copy of ``index`` on GPU 0 (raises RuntimeError if FAISS cannot)."""
    res = faiss.StandardGpuResources()
    co = faiss.GpuClonerOptions()
    co.useFloat16LookupTables = True  # needed by GPU IVF-PQ for m >= 56 at 8 bits
    gpu_index = faiss.index_cpu_to_gpu(res, 0, index, co)
    gpu_index.referenced_resources = res  # keep the resources alive with the index
    return gpu_index


def spherical_kmeans(x: F32, k: int, *, seed: int, use_gpu: bool, niter: int = KMEANS_NITER) -> F32:
    """Seeded k-means with unit-norm centroids (max inner product = min L2 on the sphere)."""
    if k == 1:
        c = x.mean(axis=0, keepdims=True)
        return (c / max(float(np.linalg.norm(c)), 1e-12)).astype(np.float32)
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        gpu=use_gpu,
        max_points_per_centroid=MAX_POINTS_PER_CENTROID,
        min_points_per_centroid=1,  # callers guarantee enough points; silences FAISS's stderr
    )
    km.train(np.ascontiguousarray(x, np.float32))
    return np.asarray(km.centroids, np.float32)


def allocate_subclusters(sizes: npt.NDArray[np.int64], total: int) -> npt.NDArray[np.int64]:
    """Split ``total`` centroids over clusters proportionally to their sizes.

    Floors first, then the remainder goes to the clusters with most points per centroid.
    """
    n = int(sizes.sum())
    alloc = sizes * total // max(n, 1)
    remainder = total - int(alloc.sum())
    if remainder > 0:
        ratio = sizes / (alloc + 1.0)
        alloc[np.argsort(-ratio, kind="stable")[:remainder]] += 1
    return alloc


def two_level_kmeans(x: F32, nlist: int, *, seed: int, use_gpu: bool) -> F32:
    """``nlist`` unit-norm centroids: sqrt(nlist) top clusters, then k-means inside each."""
    if nlist <= 256:
        return spherical_kmeans(x, nlist, seed=seed, use_gpu=use_gpu)
    nc1 = 1 << round(math.log2(math.sqrt(nlist)))
    top = spherical_kmeans(x, nc1, seed=seed, use_gpu=use_gpu)
    assign = _assign(x, top)
    alloc = allocate_subclusters(np.bincount(assign, minlength=nc1).astype(np.int64), nlist)
    parts = []
    for c in range(nc1):
        if alloc[c] == 0:
            continue
        members = x[assign == c]
        parts.append(spherical_kmeans(members, int(alloc[c]), seed=seed + 1 + c, use_gpu=use_gpu))
    centroids = np.concatenate(parts)
    assert len(centroids) == nlist
    return centroids


def _assign(x: F32, centroids: F32) -> npt.NDArray[np.int64]:
    flat = faiss.IndexFlatIP(centroids.shape[1])
    flat.add(centroids)
    _, labels = flat.search(x, 1)
    return labels[:, 0]


def train_ivfpq(xt: F32, params: IndexParams, *, seed: int, use_gpu: bool) -> faiss.Index:
    """Untrained-to-trained, empty IVF-PQ index (optionally behind an OPQ rotation)."""
    d = params.d
    opq = None
    x = np.ascontiguousarray(xt, np.float32)
    if params.opq:
        opq = faiss.OPQMatrix(d, params.m)
        opq.niter = OPQ_NITER
        opq.train(x)
        x = opq.apply(x)  # orthogonal: inner products and norms are preserved
    centroids = two_level_kmeans(x, params.nlist, seed=seed, use_gpu=use_gpu)
    quantizer = coarse_quantizer(centroids, params.quantizer)
    ivf = faiss.IndexIVFPQ(
        quantizer, d, params.nlist, params.m, params.nbits, faiss.METRIC_INNER_PRODUCT
    )
    ivf.pq.cp.seed = seed
    ivf.pq.cp.niter = PQ_NITER
    ivf.pq.cp.max_points_per_centroid = PQ_MAX_POINTS_PER_CENTROID
    # Tiny forced IVF-PQ collections have < 39 points per code: accept it quietly
    # (FAISS would print to stderr); the exact refine absorbs the codebook error.
    ivf.pq.cp.min_points_per_centroid = 1
    ivf.train(x)  # coarse training is skipped: the quantizer already holds nlist centroids
    if opq is None:
        return ivf
    return faiss.IndexPreTransform(opq, ivf)


def coarse_quantizer(centroids: F32, kind: str) -> faiss.Index:
    """Inner-product search over the coarse ``centroids``: exact flat scan, or an HNSW
    graph (``HNSW_M`` links) that answers in a fraction of the time at large ``nlist``.
    The graph is built on one thread (about 2 s for 16,384 x 512): parallel insertion
    would make it depend on thread timing, and the same seed must give the same index."""
    d = centroids.shape[1]
    x = np.ascontiguousarray(centroids, np.float32)
    if kind != "hnsw":
        flat = faiss.IndexFlatIP(d)
        flat.add(x)
        return flat
    quantizer = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    quantizer.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    quantizer.hnsw.efSearch = HNSW_EF_ADD  # used by add(); searches pass their own
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        quantizer.add(x)
    finally:
        faiss.omp_set_num_threads(threads)
    return quantizer


def ivf_of(index: faiss.Index) -> faiss.IndexIVF:
    """The IndexIVF inside an optional IndexPreTransform."""
    if isinstance(index, faiss.IndexPreTransform):
        return faiss.downcast_index(index.index)
    return faiss.downcast_index(index)


def search_params(
    index: faiss.Index, nprobe: int, *, hnsw: bool | None = None
) -> faiss.SearchParameters:
    """Per-call search parameters (the shared index is never mutated, so concurrent
    searches with different nprobe are safe). ``hnsw``: whether the coarse quantizer is
    an HNSW graph, when the caller knows (else it is looked up, ~10 us)."""
    ivf_params = faiss.SearchParametersIVF(nprobe=int(nprobe))
    if hnsw is None:
        hnsw = _has_hnsw_quantizer(index)
    if hnsw:
        hnsw = faiss.SearchParametersHNSW()
        hnsw.efSearch = max(HNSW_EF_SEARCH_MIN, 2 * int(nprobe))
        ivf_params.quantizer_params = hnsw
        ivf_params.referenced_quantizer_params = hnsw  # keep the inner object alive
    if isinstance(index, faiss.IndexPreTransform):
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = ivf_params
        outer.referenced_ivf_params = ivf_params  # keep the inner object alive
        return outer
    return ivf_params


def _has_hnsw_quantizer(index: faiss.Index) -> bool:
    ivf = ivf_of(index)
    return isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)


@dataclass(frozen=True)
class TuneResult:
    """Cheapest (nprobe, refine) reaching the target, with its measured recall@k."""

    nprobe: int
    refine: int
    recall: float
    reached_target: bool


def tune_nprobe_refine(
    index: faiss.Index,
    rescore: Callable[[F32, I64], tuple[F32, I64]],
    queries: F32,
    query_ids: I64,
    truth: I64,
    *,
    k: int,
    nlist: int,
    m: int,
    d: int,
    n: int,
    target_recall: float,
) -> TuneResult:
    """Try nprobe = 1, 2, 4, ... and every refine in ``TUNE_REFINES``; keep the config
    of lowest estimated cost (``nprobe * n/nlist * m + k*refine*d*REFINE_ROW_COST``)
    whose recall@k against ``truth`` reaches ``target_recall + RECALL_MARGIN``. Each query is a data
    row; its own id is excluded from results and ``truth`` (held-out style).

    ``rescore(queries, candidate_ids)`` returns exact (scores, ids) top lists.
    """
    max_refine = TUNE_REFINES[-1]
    list_size = n / max(nlist, 1)
    best: TuneResult | None = None
    best_cost = math.inf
    fallback = TuneResult(nprobe=nlist, refine=max_refine, recall=-1.0, reached_target=False)
    nprobe = 1
    while nprobe <= nlist:
        scan_cost = nprobe * list_size * m
        if scan_cost >= best_cost:
            break
        _, cand = index.search(queries, k * max_refine + 1, params=search_params(index, nprobe))
        for refine in TUNE_REFINES:
            cost = scan_cost + k * refine * d * REFINE_ROW_COST
            if cost >= best_cost:
                continue
            recall = _recall_excluding_self(
                rescore, queries, cand[:, : k * refine + 1], query_ids, truth, k
            )
            if recall >= min(1.0, target_recall + RECALL_MARGIN):
                best, best_cost = TuneResult(nprobe, refine, recall, True), cost
            elif recall > fallback.recall:
                fallback = TuneResult(nprobe, refine, recall, False)
        nprobe *= 2
    return best if best is not None else fallback


def fill_index(index: faiss.Index, store: VectorStore) -> None:
    """Add every live row of ``store`` to ``index``, ``ADD_CHUNK`` rows at a time."""
    for vecs, ids in store.iter_live(ADD_CHUNK):
        index.add_with_ids(vecs, ids)


def tune_on_stored_rows(
    index: faiss.Index,
    store: VectorStore,
    params: IndexParams,
    live: I64,
    rng: np.random.Generator,
    target: float,
) -> TuneResult:
    """Tune on up to 500 data rows as queries (their own id excluded), exact ground truth."""
    n = len(live)
    nq = min(MAX_TUNE_QUERIES, max(min(n, 20), n // 10))
    qids = np.sort(rng.choice(live, size=nq, replace=False))
    queries, _ = store.lookup(qids)
    _, gt = store.exact_search(queries, TUNE_K + 1)
    truth = np.stack([row[row != qid][:TUNE_K] for row, qid in zip(gt, qids, strict=True)])

    def rescore(qs: F32, cand: I64) -> tuple[F32, I64]:
        vecs, found = store.lookup(cand, bulk=True)  # ~80k rows per call at build time
        vecs = vecs.reshape(cand.shape[0], cand.shape[1], -1)
        s = np.einsum("qcd,qd->qc", vecs, qs).astype(np.float32)
        ok = found.reshape(cand.shape) & (cand >= 0)
        s[~ok] = -np.inf
        return top_k(s, np.where(ok, cand, -1), TUNE_K)

    return tune_nprobe_refine(
        index,
        rescore,
        queries,
        qids,
        truth,
        k=TUNE_K,
        nlist=params.nlist,
        m=params.m,
        d=params.d,
        n=n,
        target_recall=target,
    )


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


def tune_on_queries(
    index: faiss.Index,
    store: VectorStore,
    params: IndexParams,
    rescore: Callable[[F32, I64], tuple[F32, I64]],
    queries: F32,
    target: float,
) -> TuneResult:
    """Tune for queries that are not stored rows (nothing to exclude), exact ground truth."""
    _, truth = store.exact_search(queries, TUNE_K)
    return tune_nprobe_refine(
        index,
        rescore,
        queries,
        np.full(len(queries), -1, np.int64),
        truth,
        k=TUNE_K,
        nlist=params.nlist,
        m=params.m,
        d=params.d,
        n=store.n_live,
        target_recall=target,
    )


def _recall_excluding_self(
    rescore: Callable[[F32, I64], tuple[F32, I64]],
    queries: F32,
    cand: I64,
    query_ids: I64,
    truth: I64,
    k: int,
) -> float:
    cand = np.where(cand == query_ids[:, None], -1, cand)
    _, found = rescore(queries, cand)
    found = found[:, :k]
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / max(int((truth >= 0).sum()), 1)
