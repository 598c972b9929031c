"""Single-query ANN latency on one OpenMP thread vs the whole team, idle and with busy cores.

A query searches one vector. ``VectorIndex.search`` runs searches of fewer than
``SMALL_SEARCH`` vectors on one OpenMP thread (:mod:`mmsearch.ann.threads`); this
benchmark measures why, on the same indexes and query vectors in one process:

* ``team``: the FAISS calls on every core's thread (the OpenMP default, what
  ``VectorIndex.search`` did before);
* ``one``: one thread (what it does now);

for a flat index and an IVF-PQ index of ``--rows`` random unit vectors, with the machine
as it is and then with ``--busy`` extra processes spinning at nice 10 (another job on
a shared machine). Both OpenMP wait policies are reported: ``PASSIVE`` (what
``import mmsearch.ann`` sets unless the environment says otherwise) and the OpenMP
default (spinning), each in its own child process since the policy is read when the
runtime starts.

    python benchmarks/faiss_threads.py --rows 20000 --queries 300 --busy 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_CHILD = "--child"


def measure(rows: int, queries: int, dim: int) -> dict[str, dict[str, float]]:
    """p50 ms per single-vector search, per index type and thread setting (this process)."""
    import faiss
    import numpy as np

    from mmsearch.ann import VectorIndex
    from mmsearch.ann.structure import search_params
    from mmsearch.ann.threads import omp_threads

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, rows, queries)]
    team = faiss.omp_get_max_threads()
    out: dict[str, dict[str, float]] = {}
    for index_type in ("flat", "ivfpq"):
        index = VectorIndex.build(x, np.arange(rows, dtype=np.int64), index_type=index_type)
        st = index._state  # the FAISS call VectorIndex.search makes, thread count forced
        kwargs = {}
        k = 50
        if index_type == "ivfpq":
            kwargs["params"] = search_params(st.index, st.nprobe, hnsw=False)
            k = 50 * max(st.refine, 1)
        medians: dict[str, list[float]] = {}
        for label, threads in (("team", team), ("one", 1), ("team", team), ("one", 1)):
            with omp_threads(threads):
                times = []
                for v in q:
                    t0 = time.perf_counter()
                    st.index.search(v[None, :], k, **kwargs)
                    times.append((time.perf_counter() - t0) * 1000)
            medians.setdefault(label, []).append(statistics.median(times))
        out[index_type] = {label: min(v) for label, v in medians.items()}
    return out


def child(args: argparse.Namespace) -> None:
    print(json.dumps(measure(args.rows, args.queries, args.dim)))


def run_child(args: argparse.Namespace, policy: str | None) -> dict[str, dict[str, float]]:
    # ACTIVE is OpenMP's default; set explicitly, mmsearch.ann keeps it.
    env = dict(os.environ, OMP_WAIT_POLICY=policy or "ACTIVE")
    cmd = [sys.executable, __file__, _CHILD, "--rows", str(args.rows)]
    cmd += ["--queries", str(args.queries), "--dim", str(args.dim)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--busy", type=int, default=1, help="spinning processes for the busy run")
    ap.add_argument(_CHILD, action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    print(f"rows={args.rows} dim={args.dim} queries={args.queries} cores={os.cpu_count()}")
    print("| machine | wait policy | index | p50 ms, team | p50 ms, one thread | team / one |")
    print("|---|---|---|---:|---:|---:|")
    for busy in (0, args.busy):
        spinners = [
            subprocess.Popen(["nice", "-n", "10", sys.executable, "-c", "while True: pass"])
            for _ in range(busy)
        ]
        try:
            time.sleep(0.5 if busy else 0)
            load = os.getloadavg()[0]
            for policy in ("PASSIVE", None):
                result = run_child(args, policy)
                for index_type, r in result.items():
                    print(
                        f"| {busy} busy (load {load:.1f}) | {policy or 'ACTIVE (default)'} | "
                        f"{index_type} | {r['team']:.3f} | {r['one']:.3f} | "
                        f"{r['team'] / r['one']:.1f}x |"
                    )
        finally:
            for p in spinners:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
