"""ANN benchmark: mmsearch VectorIndex vs FAISS exact flat vs LanceDB IVF_PQ, one run.

Same machine, same seeded data (``benchmarks/datasets.py``: clustered, low intrinsic
dimension, CLIP-like cosine statistics), same held-out queries. Prints build time,
bytes per vector in RAM, recall@1/@10 vs exact, p50/p99 single-query latency,
batched QPS and ratios, as a Markdown table plus JSON.

    python benchmarks/ann.py                  # 1,000,000 x 512, 1000 queries
    python benchmarks/ann.py --quick          # 100,000 x 512, 300 queries
    python benchmarks/ann.py --n 200000 --skip-lancedb

LanceDB gets the same nlist/m (num_partitions/num_sub_vectors), the same k-means
budget (39 training points per partition, 20 iterations), and its nprobes /
refine_factor are tuned on the same queries to the recall@10 our index reached.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see mmsearch/ann/__init__.py
os.environ.setdefault("LANCE_LOG", "error")
os.environ.setdefault("RUST_LOG", "error")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from benchmarks import ann_scale  # noqa: E402
from benchmarks.datasets import SyntheticSpec, generate  # noqa: E402
from mmsearch.ann import VectorIndex, choose_index_params  # noqa: E402

K = 10


def rss_anon_bytes() -> int:
    """Anonymous resident memory of this process (heap; excludes file-backed mmaps)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = [len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth, strict=True)]
    return float(np.sum(hits) / (k * len(truth)))


def latency_ms(fn, queries: np.ndarray, n: int) -> tuple[float, float]:
    """p50/p99 of one-query calls (after 5 warm-up calls)."""
    for i in range(min(5, n)):
        fn(queries[i : i + 1])
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(queries[i : i + 1])
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def batched_qps(fn, queries: np.ndarray, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(queries)
        best = min(best, time.perf_counter() - t0)
    return len(queries) / best


def load_data(args: argparse.Namespace, work: Path) -> tuple[np.ndarray, np.ndarray]:
    spec = SyntheticSpec(d=args.d, seed=args.seed)
    path = work / f"data-{args.n}x{args.d}-s{args.seed}.npy"
    if not path.exists():
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, generate(spec, args.n, stream=0))
        tmp.rename(path)
    x = np.load(path, mmap_mode="r")
    q = generate(spec, args.queries, stream=1)  # held out: another stream
    return x, q


def load_tiny_embeddings(
    args: argparse.Namespace, work: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image embeddings of a generated catalog by mmsearch-tiny; text queries (the real
    workload: text→image) held out from the calibration texts used for tuning."""
    from mmsearch.indexer.ann_build import (
        CALIBRATION_COLOURS,
        CALIBRATION_NOUNS,
        CALIBRATION_PLACES,
    )
    from mmsearch.indexer.decode import DecodePool
    from mmsearch.indexer.discover import walk_images

    from mmsearch.datasets.synthetic import COLOURS, POSITIONS, SHAPES, generate_catalog
    from mmsearch.models import load_encoder
    from mmsearch.models.spec import ModelSpec

    encoder = load_encoder(ModelSpec("mmsearch-tiny", ""), device="cpu")
    path = work / f"tiny-{args.n}-s{args.seed}.npy"
    if not path.exists():
        cat = generate_catalog(
            work / f"catalog-{args.n}-s{args.seed}", n=args.n, seed=args.seed, image_size=64
        )
        items = walk_images(cat.root).items
        chunks = []
        with DecodePool(encoder.image_size) as pool:
            batch = []
            for result in pool.decode(enumerate(item.path for item in items)):
                batch.append(result.array)
                if len(batch) == 512:
                    chunks.append(encoder.encode_images(np.stack(batch)))
                    batch = []
            if batch:
                chunks.append(encoder.encode_images(np.stack(batch)))
        np.save(path, np.concatenate(chunks))
    x = np.load(path, mmap_mode="r")
    texts = [f"a {c} {s} on the {p}" for c in COLOURS for s in SHAPES for p in POSITIONS]
    texts += [f"{c} {s}" for c in COLOURS for s in SHAPES] + [
        f"a {s} on the {p}" for s in SHAPES for p in POSITIONS
    ]
    texts += [f"{c} {s}" for c in COLOURS for s in ("circle", "square", "triangle", "star")]
    rng = np.random.default_rng(args.seed)
    q = encoder.encode_texts([texts[int(i)] for i in rng.integers(0, len(texts), args.queries)])
    calibration = [
        f"a {c} {n}{p}".replace("  ", " ")
        for n in CALIBRATION_NOUNS
        for c in CALIBRATION_COLOURS
        for p in CALIBRATION_PLACES
    ]
    tune = encoder.encode_texts(
        [calibration[int(i)] for i in rng.choice(len(calibration), 500, replace=False)]
    )
    return x, q.astype(np.float32), tune.astype(np.float32)


def bench_flat(x: np.ndarray, q: np.ndarray, n_single: int) -> tuple[dict[str, Any], np.ndarray]:
    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(x.shape[1])
    for start in range(0, len(x), 1 << 17):
        flat.add(np.ascontiguousarray(x[start : start + (1 << 17)]))
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, truth = flat.search(q, 100)
    qps = len(q) / (time.perf_counter() - t0)
    p50, p99 = latency_ms(lambda qq: flat.search(qq, K), q, n_single)
    flat.reset()  # free the 2 GB copy before the next contender
    row = {
        "name": "FAISS flat (exact)",
        "build_s": build,
        "bytes_per_vector": 4 * x.shape[1],
        "recall@1": 1.0,
        "recall@10": 1.0,
        "p50_ms": p50,
        "p99_ms": p99,
        "qps": qps,
    }
    return row, truth


def bench_flat_streamed(path: Path, q: np.ndarray, n: int) -> tuple[dict[str, Any], np.ndarray]:
    """Exact search over the data file for a sample of queries (it does not fit in RAM)."""
    truth, seconds = ann_scale.exact_truth(path, q)
    _, one = ann_scale.exact_truth(path, q[:1], K)
    row = {
        "name": f"FAISS flat (exact, blocked scan from disk, {len(q)} queries)",
        "build_s": 0.0,
        "bytes_per_vector": 4 * q.shape[1],
        "recall@1": 1.0,
        "recall@10": 1.0,
        "p50_ms": one * 1000,
        "p99_ms": one * 1000,
        "qps": len(q) / seconds,
    }
    return row, truth


def bench_ours(
    x: np.ndarray, q: np.ndarray, truth: np.ndarray, work: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    directory = work / "ours"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(work / "ours-incremental", ignore_errors=True)
    t0 = time.perf_counter()
    with ann_scale.PeakMemory() as build_memory:
        if args.streamed:  # from the data file in chunks: the float matrix is never in RAM
            built = VectorIndex.build_streamed(
                ann_scale.iter_rows(args.data_path),
                directory,
                seed=args.seed,
                target_recall=args.target_recall,
                refine_dtype=args.refine_dtype,
                quantizer=args.quantizer,
            )
        else:
            ids = np.arange(len(x), dtype=np.int64)
            built = VectorIndex.build(
                np.asarray(x),
                ids,
                seed=args.seed,
                target_recall=args.target_recall,
                refine_dtype=args.refine_dtype,
                quantizer=args.quantizer,
            )
        if (
            getattr(args, "cross_tune", None) is not None
        ):  # cross-modal queries: tune their own profile
            built.tune_profile("cross", args.cross_tune, target_recall=args.target_recall)
    build = time.perf_counter() - t0
    profile = "cross" if getattr(args, "cross_tune", None) is not None else None
    build_peak_rss = ann_scale.peak_rss_bytes()
    t0 = time.perf_counter()
    built.save(directory, table_version=1, model_key="synthetic")
    save = time.perf_counter() - t0
    build_info = built.info
    del built
    anon0 = rss_anon_bytes()
    t0 = time.perf_counter()
    index = VectorIndex.load(directory, verify_checksums=False)
    load = time.perf_counter() - t0
    index.search(q[:50], K, profile=profile)  # touch
    anon_per_vector = (rss_anon_bytes() - anon0) / len(x)
    _, found = index.search(q[: len(truth)], K, profile=profile)
    p50, p99 = latency_ms(lambda qq: index.search(qq, K, profile=profile), q, args.single)
    qps = batched_qps(lambda qq: index.search(qq, K, profile=profile), q)
    info = index.info
    row = {
        "name": "mmsearch IVF-PQ + exact refine",
        "build_s": build,
        "bytes_per_vector": info["bytes_per_vector"],
        "recall@1": recall_at(found, truth, 1),
        "recall@10": recall_at(found, truth, K),
        "p50_ms": p50,
        "p99_ms": p99,
        "qps": qps,
    }
    extra = {
        "info": info,
        "build_info_recall_at_10": build_info["recall_at_10"],
        "save_s": save,
        "load_s": load,
        "rss_anon_bytes_per_vector_after_load": anon_per_vector,
        "peak_rss_bytes_after_build": build_peak_rss,
        "build_memory": build_memory.as_dict(),
        "disk_bytes_per_vector": ann_scale.dir_bytes(directory) / len(x),
        "refine_dtype": args.refine_dtype,
        "incremental_add_1pct": ann_scale.incremental_add(
            index, SyntheticSpec(d=args.d, seed=args.seed), len(x), work
        )
        if args.embeddings == "synthetic"
        else None,
    }
    return row, extra


def bench_lancedb(
    x: np.ndarray,
    q: np.ndarray,
    truth: np.ndarray,
    work: Path,
    nlist: int,
    m: int,
    want_recall: float,
    args,
) -> tuple[dict[str, Any], dict[str, Any]]:
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfPq

    d = x.shape[1]
    path = work / "lance"
    shutil.rmtree(path, ignore_errors=True)
    db = lancedb.connect(path)

    def batch(start: int, stop: int) -> pa.Table:
        v = np.ascontiguousarray(x[start:stop], np.float32)
        return pa.table(
            {
                "id": pa.array(np.arange(start, stop), pa.int64()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), d),
            }
        )

    t0 = time.perf_counter()
    step = 1 << 17
    table = db.create_table("items", data=batch(0, min(step, len(x))), mode="overwrite")
    for start in range(step, len(x), step):
        table.add(batch(start, min(start + step, len(x))))
    write_s = time.perf_counter() - t0
    print(f"lancedb: table of {len(x)} rows written in {write_s:.1f} s", flush=True)
    t0 = time.perf_counter()
    table.create_index(
        "vector",
        config=IvfPq(
            distance_type="dot",
            num_partitions=nlist,
            num_sub_vectors=m,
            sample_rate=39,
            max_iterations=20,
        ),
    )
    index_s = time.perf_counter() - t0
    print(f"lancedb: IVF_PQ index built in {index_s:.1f} s", flush=True)

    def search_one(qq: np.ndarray, nprobes: int, refine: int) -> np.ndarray:
        r = (
            table.search(qq[0])
            .distance_type("dot")
            .nprobes(nprobes)
            .refine_factor(refine)
            .limit(K)
            .select(["id", "_distance"])
            .to_arrow()
        )
        out = np.full(K, -1, np.int64)
        ids = r.column("id").to_numpy()
        out[: len(ids)] = ids
        return out

    def search_batch(qq: np.ndarray, nprobes: int, refine: int) -> np.ndarray:
        r = (
            table.search(qq)
            .distance_type("dot")
            .nprobes(nprobes)
            .refine_factor(refine)
            .limit(K)
            .select(["id", "_distance"])
            .to_arrow()
        )
        out = np.full((len(qq), K), -1, np.int64)
        qi = r.column("query_index").to_numpy()
        ids = r.column("id").to_numpy()
        for i in range(len(qq)):
            row = ids[qi == i][:K]
            out[i, : len(row)] = row
        return out

    # Tune: for each refine factor, the smallest nprobes reaching our recall@10 on the
    # same queries (doubling nprobes stops once recall stops growing: the refine factor
    # caps it); keep the fastest of those (batched time).
    n_tune = min(args.tune_queries, len(truth))  # --streamed: exact truth for a sample only
    tune_q, tune_t = q[:n_tune], truth[:n_tune]
    tried = []
    best = None
    for refine in (1, 2, 4, 8, 16):
        nprobes, previous = 4, -1.0
        while nprobes <= nlist:
            t0 = time.perf_counter()
            found = search_batch(tune_q, nprobes, refine)
            dt = time.perf_counter() - t0
            rec = recall_at(found, tune_t, K)
            tried.append({"nprobes": nprobes, "refine": refine, "recall@10": rec, "batch_s": dt})
            print(f"lancedb: tuning {tried[-1]}", flush=True)
            if rec >= want_recall:
                if best is None or dt < best["batch_s"]:
                    best = tried[-1]
                break
            if (
                rec <= previous + 0.002
            ):  # plateau: this refine factor caps recall, more probes only cost
                break
            previous = rec
            nprobes *= 2
    if best is None:
        best = max(tried, key=lambda t: t["recall@10"])
    nprobes, refine = best["nprobes"], best["refine"]
    found = search_batch(q[: len(truth)], nprobes, refine)
    p50, p99 = latency_ms(lambda qq: search_one(qq, nprobes, refine), q, args.single)
    qps = batched_qps(lambda qq: search_batch(qq, nprobes, refine), q)
    config = table.list_indices()[0]
    stats = table.index_stats(config.name)
    index_bytes = float(getattr(config, "size_bytes", None) or float("nan"))
    row = {
        "name": f"LanceDB IVF_PQ (nprobes={nprobes}, refine_factor={refine})",
        "build_s": index_s,
        "bytes_per_vector": index_bytes / len(x),  # its index file; cached in RAM when used
        "recall@1": recall_at(found, truth, 1),
        "recall@10": recall_at(found, truth, K),
        "p50_ms": p50,
        "p99_ms": p99,
        "qps": qps,
    }
    return row, {"table_write_s": write_s, "tuning": tried, "index_stats": str(stats)}


def markdown(rows: list[dict[str, Any]]) -> str:
    ours = next((r for r in rows if r["name"].startswith("mmsearch")), rows[0])
    head = "| index | build s | B/vector in RAM | recall@1 | recall@10 | p50 ms | p99 ms | batched QPS | p50 vs ours | QPS: ours / this |\n"
    head += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    lines = []
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['build_s']:.1f} | {r['bytes_per_vector']:.1f} | {r['recall@1']:.4f} | "
            f"{r['recall@10']:.4f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['qps']:.0f} | "
            f"{r['p50_ms'] / ours['p50_ms']:.1f}x | {ours['qps'] / r['qps']:.2f}x |"
        )
    return head + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=300, help="queries timed one at a time")
    ap.add_argument("--flat-single", type=int, default=50, help="single queries timed for flat")
    ap.add_argument("--tune-queries", type=int, default=300, help="queries used to tune LanceDB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--skip-lancedb", action="store_true")
    ap.add_argument(
        "--skip-ours",
        action="store_true",
        help="LanceDB only (e.g. at 10M, after a run of ours): same nlist/m as ours "
        "would choose, tuned to --match-recall",
    )
    ap.add_argument(
        "--match-recall",
        type=float,
        default=None,
        help="--skip-ours: the recall@10 our index reached in its own run",
    )
    ap.add_argument(
        "--streamed",
        action="store_true",
        help="larger than RAM: data generated to disk, exact truth by a blocked scan for "
        "--flat-queries queries, our index built with build_streamed (default above 2M rows)",
    )
    ap.add_argument(
        "--flat-queries", type=int, default=200, help="--streamed: queries with exact ground truth"
    )
    ap.add_argument("--refine-dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument(
        "--quantizer",
        choices=["auto", "flat", "hnsw"],
        default="auto",
        help="IVF-PQ coarse quantizer (auto: HNSW from 8,192 lists up)",
    )
    ap.add_argument("--quick", action="store_true", help="100k vectors, 300 queries")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mmsearch-ann-bench"))
    ap.add_argument("--json", type=Path, default=None, help="write all figures here")
    ap.add_argument(
        "--embeddings",
        choices=["synthetic", "tiny"],
        default="synthetic",
        help="tiny: image embeddings of a generated catalog by mmsearch-tiny, text queries",
    )
    args = ap.parse_args()
    args.cross_tune = None
    if args.embeddings == "tiny" and args.n == 1_000_000:
        args.n = 60_000
    if args.quick:
        args.n, args.queries = min(args.n, 100_000), min(args.queries, 300)
    args.single = min(args.single, args.queries)
    args.workdir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    args.streamed = args.streamed or (args.n > 2_000_000 and args.embeddings == "synthetic")
    if args.embeddings == "tiny":
        x, q, args.cross_tune = load_tiny_embeddings(args, args.workdir)
        args.d = x.shape[1]
    elif args.streamed:
        spec = SyntheticSpec(d=args.d, seed=args.seed)
        args.data_path = ann_scale.ensure_data(spec, args.n, args.workdir)
        x = np.load(
            args.data_path, mmap_mode="r"
        )  # only its length is used, and LanceDB's chunked writes
        q = generate(spec, args.queries, stream=1)
    else:
        x, q = load_data(args, args.workdir)
    print(
        f"data: {x.shape} + {len(q)} held-out queries in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    if args.streamed:
        flat_row, truth = bench_flat_streamed(args.data_path, q[: args.flat_queries], len(x))
    else:
        flat_row, truth = bench_flat(x, q, min(args.flat_single, len(q)))
    print(f"flat: {flat_row}", flush=True)
    rows = [flat_row]
    extra: dict[str, Any] = {}
    if args.skip_ours:
        if args.match_recall is None:
            ap.error("--skip-ours needs --match-recall (the recall@10 of our index's run)")
        chosen = choose_index_params(len(x), args.d)
        p, want = {"nlist": chosen.nlist, "m": chosen.m}, args.match_recall
    else:
        ours_row, ours_extra = bench_ours(x, q, truth, args.workdir, args)
        print(f"ours: {ours_row}\n      {ours_extra}", flush=True)
        rows.append(ours_row)
        extra["ours"] = ours_extra
        p, want = ours_extra["info"]["params"], ours_row["recall@10"]
    if not args.skip_lancedb:
        lance_row, lance_extra = bench_lancedb(
            x, q, truth, args.workdir, p["nlist"], p["m"], want, args
        )
        print(f"lancedb: {lance_row}\n      {lance_extra}", flush=True)
        rows.append(lance_row)
        extra["lancedb"] = lance_extra
    print()
    print(
        f"n={args.n} d={args.d} queries={len(q)} cores={os.cpu_count()} faiss={faiss.__version__}"
    )
    print(markdown(rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: v for k, v in vars(args).items() if k != "cross_tune"}
                    | {"workdir": str(args.workdir), "json": str(args.json)},
                    "rows": rows,
                    "extra": extra,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
