"""Coarse quantizer choice for IVF at large nlist: flat scan vs HNSW vs nested IVF.

The figures behind ``HNSW_QUANTIZER_MIN_NLIST`` in ``mmsearch/ann/params.py``: the
centroids are trained the way ``VectorIndex`` trains them (two-level spherical k-means)
on rows of ``benchmarks/datasets.py``; then each quantizer assigns a block of held-out
rows to one list (what adding rows does) and answers single queries for their top
``--nprobe`` lists (what a search does), against the exact flat answer.

    python benchmarks/coarse_quantizer.py                 # 16,384 lists x 512 (10M scale)
    python benchmarks/coarse_quantizer.py --nlist 4096 --train 160000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from benchmarks.datasets import SyntheticSpec, generate  # noqa: E402
from mmsearch.ann.kmeans import two_level_kmeans  # noqa: E402


def single_query_ms(index: faiss.Index, q: np.ndarray, k: int) -> float:
    for i in range(5):
        index.search(q[i : i + 1], k)
    times = []
    for i in range(len(q)):
        t0 = time.perf_counter()
        index.search(q[i : i + 1], k)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nlist", type=int, default=16384)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--train", type=int, default=640_000, help="k-means rows (39 per list)")
    ap.add_argument("--assign", type=int, default=65_536, help="held-out rows to assign")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    spec = SyntheticSpec(d=args.d, seed=args.seed)
    t0 = time.perf_counter()
    centroids = two_level_kmeans(
        generate(spec, args.train, stream=0), args.nlist, seed=args.seed, use_gpu=False
    )
    print(
        f"k-means: {args.nlist} centroids from {args.train} rows in {time.perf_counter() - t0:.1f} s"
    )
    x = generate(spec, args.assign, stream=3)
    q = generate(spec, args.queries, stream=1)

    flat = faiss.IndexFlatIP(args.d)
    flat.add(centroids)
    t0 = time.perf_counter()
    _, exact_assign = flat.search(x, 1)
    flat_assign_s = time.perf_counter() - t0
    _, exact_top = flat.search(q, args.nprobe)

    def top_recall(index: faiss.Index) -> float:
        _, found = index.search(q, args.nprobe)
        return float(
            np.mean(
                [
                    len(np.intersect1d(f, t)) / args.nprobe
                    for f, t in zip(found, exact_top, strict=True)
                ]
            )
        )

    rows = [("flat (exact)", flat_assign_s, 1.0, single_query_ms(flat, q, args.nprobe), 1.0)]

    hnsw = faiss.IndexHNSWFlat(args.d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(centroids)
    for ef in (16, 32, 64, 128):
        hnsw.hnsw.efSearch = ef
        t0 = time.perf_counter()
        _, a = hnsw.search(x, 1)
        dt = time.perf_counter() - t0
        same = float(np.mean(a[:, 0] == exact_assign[:, 0]))
        rows.append(
            (
                f"HNSW32, efSearch {ef}",
                dt,
                same,
                single_query_ms(hnsw, q, args.nprobe),
                top_recall(hnsw),
            )
        )

    top = int(round(np.sqrt(args.nlist) / 128) * 128) or 128
    nested = faiss.IndexIVFFlat(faiss.IndexFlatIP(args.d), args.d, top, faiss.METRIC_INNER_PRODUCT)
    nested.train(centroids)
    nested.add(centroids)
    for nprobe in (4, 8, 16):
        nested.nprobe = nprobe
        t0 = time.perf_counter()
        _, a = nested.search(x, 1)
        dt = time.perf_counter() - t0
        same = float(np.mean(a[:, 0] == exact_assign[:, 0]))
        rows.append(
            (
                f"nested IVF ({top} top lists), nprobe {nprobe}",
                dt,
                same,
                single_query_ms(nested, q, args.nprobe),
                top_recall(nested),
            )
        )

    print(f"\nnlist={args.nlist} d={args.d} cores={os.cpu_count()} faiss={faiss.__version__}")
    print(
        f"| coarse quantizer | assign {args.assign:,} rows s | same list as exact | one query, top-{args.nprobe} ms | top-{args.nprobe} recall |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, assign_s, same, ms, rec in rows:
        print(f"| {name} | {assign_s:.2f} | {same:.4f} | {ms:.3f} | {rec:.3f} |")


if __name__ == "__main__":
    main()
