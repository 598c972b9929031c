"""Serving under load: QPS and p50/p99 with 1 and N workers while an index run commits.

    python benchmarks/serve.py --levels 1,4,16,64 --workers 1,2 --duration 8 --big 100000

For each index (the demo catalog, and a ``--big``-item index) and each worker count,
this script:

1. copies the index to a fresh folder and starts ``mmsearch serve --workers W`` on
   127.0.0.1 (its own process tree, token required, access log off) and waits until
   every worker answers ``/readyz``;
2. measures memory: RSS and PSS (proportional set size: shared pages split between
   the processes that map them) of the server processes;
3. runs each concurrency level for ``--duration`` seconds (at most ``--max-requests``
   requests): N threads of this process (not the server's), each with its own
   keep-alive ``http.client`` connection (:mod:`benchmarks.httpclient`, far cheaper
   per request than httpx), send ``GET /api/search?q=...&k=10`` back to back;
4. at the start of level ``--commit-level`` starts an incremental ``mmsearch index``
   run (a separate process: new images into the same index) that commits a new
   snapshot while the level runs.

Every answer is checked: status 200, exactly k results, an ``X-Mmsearch-Snapshot``
header; answers from the snapshot before the commit contain no id added by it; and
all answers to one query from one snapshot are identical (a request never mixes two
snapshots). Any failed check counts as an error; the script exits 1 if there was one.

The ``--big`` index holds synthetic CLIP-like vectors (``benchmarks/datasets.py``) as
text rows, written straight to the table, plus the demo images: search cost depends on
the row count and the ANN index, not on what the rows mean. Everything runs on
127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import http.client as http_client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.httpclient import KeepAliveClient, json_loads, search_path  # noqa: E402
from benchmarks.load import _free_port, _queries  # noqa: E402  (same port picking and queries)

TOKEN = "benchmark-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _mmsearch(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmsearch.cli", *args]


def _env() -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


# -- indexes ----------------------------------------------------------------------------------
def build_demo_index(work: Path, n: int, seed: int) -> tuple[Path, Path]:
    """(index dir, catalog root): the demo catalog's images indexed with mmsearch-tiny."""
    from mmsearch.datasets.synthetic import generate_catalog

    index_dir = work / "demo-idx"
    catalog = generate_catalog(work / "catalog", n=n, seed=seed)
    if not (index_dir / "snapshot.json").is_file():
        subprocess.run(
            _mmsearch("index", str(catalog.image_dir), "--index", str(index_dir), "--model", "mmsearch-tiny",
                      "--metadata", str(catalog.jsonl_path), "--workers", "1", "--json"),
            check=True, env=_env(), stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return index_dir, catalog.root


def build_big_index(work: Path, demo_index: Path, n: int, seed: int) -> Path:
    """The demo index plus ``n`` synthetic text rows (CLIP-like vectors), with its ANN built."""
    import numpy as np
    from mmsearch.indexer.ann_build import build_ann

    from benchmarks.datasets import SyntheticSpec, generate
    from mmsearch.storage.locks import index_write_lock
    from mmsearch.storage.schema import make_rows
    from mmsearch.storage.table import ItemStore

    index_dir = work / f"big-{n}-idx"
    if (index_dir / "snapshot.json").is_file():
        return index_dir
    shutil.copytree(demo_index, index_dir)
    store = ItemStore.open(index_dir)
    spec, dim = store.model_spec, store.dim
    first = store.max_id() + 1
    source = str(work / "synthetic-texts.jsonl")
    chunk = 20_000
    with index_write_lock(index_dir):
        for start in range(0, n, chunk):
            count = min(chunk, n - start)
            vectors = generate(SyntheticSpec(d=dim, seed=seed), count, stream=start // chunk)
            ids = list(range(first + start, first + start + count))
            store.upsert(
                make_rows(
                    ids=ids, uris=[f"{source}#{i}" for i in ids], kind="text",
                    texts=[f"synthetic item {i}" for i in ids], source=source,
                    mtime_ns=[None] * count, sizes=[None] * count, sha256=[None] * count,
                    metadata=[{"sku": f"S{i % 5000:05d}"} for i in ids],
                    vectors=np.asarray(vectors, np.float32), schema=store.table.schema,
                )
            )  # fmt: skip
        build_ann(ItemStore.open(index_dir), spec)
    return index_dir


# -- server -----------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB of one process."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


class Server:
    """``mmsearch serve`` in its own process group on 127.0.0.1."""

    def __init__(
        self,
        index_dir: Path,
        workers: int,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.proc = subprocess.Popen(
            _mmsearch("serve", "--index", str(index_dir), "--port", str(self.port), "--workers", str(workers),
                      "--log-format", "none", "--drain-seconds", "0", *(extra or [])),
            env={**_env(), **(env or {}), "MMSEARCH_TOKEN": TOKEN}, cwd=str(REPO), start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < self.workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready (exit {self.proc.poll()})")
            try:
                res = httpx.get(
                    self.base + "/readyz", headers=AUTH, timeout=30
                )  # new connection each time
                if res.status_code == 200:
                    seen.add(res.json()["pid"])
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    def memory(self) -> dict[str, Any]:
        workers = [p for p in _children(self.proc.pid) if b"resource_tracker" not in _cmdline(p)]
        workers = workers or [self.proc.pid]
        per = [_memory_kb(pid) for pid in workers]
        parent = _memory_kb(self.proc.pid) if workers != [self.proc.pid] else (0, 0)
        return {
            "worker_rss_mib": [round(r / 1024, 1) for r, _ in per],
            "worker_pss_mib": [round(p / 1024, 1) for _, p in per],
            "supervisor_rss_mib": round(parent[0] / 1024, 1),
            "total_rss_mib": round((sum(r for r, _ in per) + parent[0]) / 1024, 1),
            "total_pss_mib": round((sum(p for _, p in per) + parent[1]) / 1024, 1),
        }

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


# -- load -------------------------------------------------------------------------------------
class Checker:
    """Checks every answer against the snapshot it came from."""

    def __init__(self, old_max_id: int) -> None:
        self.old_max_id = old_max_id
        self.old_snapshot: str | None = None
        self.lock = threading.Lock()
        self.answers: dict[tuple[str, str], tuple[int, ...]] = {}
        self.snapshots: set[str] = set()

    def check(self, query: str, snapshot: str | None, ids: tuple[int, ...], k: int) -> str | None:
        if snapshot is None:
            return "no X-Mmsearch-Snapshot header"
        if len(ids) != k:
            return f"{len(ids)} results instead of {k}"
        with self.lock:
            self.snapshots.add(snapshot)
            if self.old_snapshot is None:
                self.old_snapshot = snapshot
            if snapshot == self.old_snapshot and max(ids) > self.old_max_id:
                return f"snapshot {snapshot} answered with an id added after it"
            previous = self.answers.setdefault((snapshot, query), ids)
        if previous != ids:
            return f"two different answers to {query!r} from snapshot {snapshot}"
        return None


def run_level(
    base: str,
    clients: int,
    duration: float,
    max_requests: int,
    queries: list[str],
    k: int,
    checker: Checker,
    hold: threading.Event | None = None,
) -> dict[str, Any]:
    """One level: ``clients`` threads for ``duration`` seconds (and until ``hold`` is set, if given).

    Each thread keeps one ``http.client`` connection (:mod:`benchmarks.httpclient`):
    about 0.3-0.4 ms of CPU per request with the answer parsed and checked, against
    1.1-1.3 ms for httpx (``benchmarks/serve_cpu.py``), on cores the server shares.
    """
    import numpy as np

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    issued = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + duration
    port = int(base.rsplit(":", 1)[1])
    paths = [search_path(q, k) for q in queries]

    def client(slot: int) -> None:
        http = KeepAliveClient("127.0.0.1", port, AUTH, timeout=60.0)
        i = slot
        while time.perf_counter() < deadline or (hold is not None and not hold.is_set()):
            with lock:
                if issued[0] >= max_requests and (hold is None or hold.is_set()):
                    break
                issued[0] += 1
            q, path = queries[i % len(queries)], paths[i % len(queries)]
            i += clients
            t0 = time.perf_counter()
            try:
                status, headers, body = http.get(path)
                elapsed = time.perf_counter() - t0
                problem = f"{status}: {body[:120]!r}" if status != 200 else None
                if problem is None:
                    ids = tuple(h["id"] for h in json_loads(body)["results"])
                    problem = checker.check(q, headers.get("x-mmsearch-snapshot"), ids, k)
            except (OSError, http_client.HTTPException, ValueError) as exc:
                elapsed, problem = time.perf_counter() - t0, repr(exc)
            if problem is not None:
                with lock:
                    errors.append(problem)
            latencies[slot].append(elapsed)
        http.close()

    threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 900)
    elapsed = time.perf_counter() - start
    lat = np.array([x for per in latencies for x in per]) * 1000.0
    pct = (lambda p: round(float(np.percentile(lat, p)), 1)) if lat.size else (lambda p: None)
    return {
        "clients": clients,
        "requests": int(lat.size),
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": round(elapsed, 2),
        "qps": round(lat.size / elapsed, 1),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": round(float(lat.max()), 1) if lat.size else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _set_after_exit(proc: subprocess.Popen[bytes], event: threading.Event) -> None:
    proc.wait()
    time.sleep(2.0)
    event.set()


def _new_images(work: Path, tag: str, n: int, seed: int) -> Path:
    from mmsearch.datasets.synthetic import generate_catalog

    folder = work / f"new-{tag}"
    shutil.rmtree(folder, ignore_errors=True)
    extra = generate_catalog(work / f"extra-{tag}", n=n, seed=seed)
    shutil.copytree(extra.image_dir, folder)
    return folder


def run_config(
    args: argparse.Namespace, work: Path, name: str, source_index: Path, workers: int
) -> dict[str, Any]:
    from mmsearch.storage.table import ItemStore

    tag = f"{name}-w{workers}"
    index_dir = work / f"run-{tag}"
    shutil.rmtree(index_dir, ignore_errors=True)
    shutil.copytree(source_index, index_dir)
    new_dir = _new_images(work, tag, args.commit_items, seed=1000 + workers)
    checker = Checker(old_max_id=ItemStore.open(index_dir).max_id())
    queries = _queries(200, args.seed)
    env = dict(item.split("=", 1) for item in args.server_env)
    server = Server(index_dir, workers, args.server_args.split(), env)
    levels = []
    commit: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        server.wait_ready()
        ready_s = time.perf_counter() - t0
        run_level(
            server.base, 2, 1.0, 200, queries, args.k, Checker(10**18)
        )  # warm-up, not reported
        memory = server.memory()
        print(f"[{tag}] ready in {ready_s:.1f}s; memory {memory}", flush=True)
        for clients in args.levels:
            indexer, hold = None, None
            if clients == args.commit_level:
                commit["started_s"] = time.perf_counter()
                indexer = subprocess.Popen(
                    _mmsearch("index", str(new_dir), "--index", str(index_dir), "--model", "mmsearch-tiny",
                              "--workers", "1", "--json"),
                    env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                hold = threading.Event()
                # The level lasts until the index run has committed, plus 2 s on the new snapshot.
                threading.Thread(target=_set_after_exit, args=(indexer, hold)).start()
            before = set(checker.snapshots)
            res = run_level(
                server.base,
                clients,
                args.duration,
                args.max_requests,
                queries,
                args.k,
                checker,
                hold,
            )
            res["snapshots"] = sorted(checker.snapshots - before) or sorted(before)[-1:]
            if indexer is not None:
                commit["index_exit"] = indexer.wait(timeout=600)
                commit["index_s"] = round(time.perf_counter() - commit.pop("started_s"), 1)
                res["index_run"] = True
            levels.append(res)
            print(
                f"[{tag}] clients={clients:>3} requests={res['requests']:>6} qps={res['qps']:>7} "
                f"p50={res['p50_ms']} ms p99={res['p99_ms']} ms max={res['max_ms']} ms errors={res['errors']} "
                f"load={res['load_average']}"
                + (" (index run committing)" if indexer is not None else ""),
                flush=True,
            )
            for sample in res["error_samples"]:
                print(f"  error: {sample}", flush=True)
    finally:
        server.stop()
    return {
        "index": name,
        "workers": workers,
        "ready_s": round(ready_s, 1),
        "memory": memory,
        "commit": commit,
        "snapshots_served": sorted(checker.snapshots),
        "levels": levels,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=400, help="demo catalog images")
    ap.add_argument(
        "--big", type=int, default=100_000, help="synthetic rows of the big index (0: skip it)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--levels", default="1,4,16,64", help="comma-separated concurrent client counts"
    )
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per level")
    ap.add_argument("--max-requests", type=int, default=20_000, help="cap per level")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--commit-level", type=int, default=16, help="level during which an index run commits"
    )
    ap.add_argument("--commit-items", type=int, default=40, help="new images the index run adds")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="default: a fresh temp folder (reused if given)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--server-args", default="", help="extra mmsearch serve arguments (e.g. '--backend torch')"
    )
    ap.add_argument(
        "--server-env", action="append", default=[], metavar="VAR=VALUE",
        help="environment of the server (repeatable), e.g. PYTHONPATH=<another checkout> for an A/B",
    )  # fmt: skip
    args = ap.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    worker_counts = [int(x) for x in args.workers.split(",")]

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmsearch-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    demo, _root = build_demo_index(work, args.n, args.seed)
    print(f"demo index ready in {time.perf_counter() - t0:.1f}s: {demo}", flush=True)
    indexes = [("demo", demo)]
    if args.big:
        t0 = time.perf_counter()
        indexes.append((f"big{args.big}", build_big_index(work, demo, args.big, args.seed)))
        print(f"big index ready in {time.perf_counter() - t0:.1f}s", flush=True)

    runs = [run_config(args, work, name, path, w) for name, path in indexes for w in worker_counts]
    summary = {
        "k": args.k,
        "duration_s": args.duration,
        "commit_level": args.commit_level,
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "runs": runs,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    failed = any(level["errors"] for run in runs for level in run["levels"])
    failed |= any(run["commit"].get("index_exit") not in (0, None) for run in runs)
    failed |= any(len(run["snapshots_served"]) < 2 for run in runs if run["commit"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
