"""HTTP load: p50/p99 latency and QPS of text queries at 1, 4 and 16 concurrent clients.

    python benchmarks/load.py --n 400 --levels 1,4,16 --duration 8

Generates a seeded catalog, indexes it with mmsearch-tiny when its weights file
exists (else the tests' fake encoder; ``--encoder`` forces one), starts
``mmsearch.serve.app`` under uvicorn in a *separate process* on 127.0.0.1 (so the
load generator does not share the server's GIL), then runs each concurrency level
for ``--duration`` seconds (at most ``--max-requests`` requests): N threads, each
with its own keep-alive httpx client, send ``GET /api/search?q=...&k=10`` back to
back. Every non-200 answer or transport error counts as an error; the script exits
with status 1 if there was any. It stops by itself and stops the server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY_WEIGHTS = REPO / "mmsearch" / "models" / "weights" / "mmsearch-tiny.safetensors"


def _make_encoder(which: str) -> Any:
    if which == "mmsearch-tiny":
        from mmsearch.models import load_encoder
        from mmsearch.models.spec import ModelSpec

        return load_encoder(ModelSpec("mmsearch-tiny", ""), device="cpu")
    from tests.conftest import FakeEncoder

    return FakeEncoder()


def _serve(index_dir: str, port: int, which: str) -> None:
    """Server-process entry point."""
    import uvicorn

    from mmsearch.serve.app import ServerConfig, create_app

    app = create_app(
        ServerConfig(index_dir=Path(index_dir), encoder=_make_encoder(which), device="cpu")
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _queries(n: int, seed: int) -> list[str]:
    import numpy as np

    from mmsearch.datasets.synthetic import COLOURS, POSITIONS, SHAPES

    rng = np.random.default_rng(seed)
    return [
        f"a {COLOURS[rng.integers(len(COLOURS))]} {SHAPES[rng.integers(len(SHAPES))]} "
        f"on the {POSITIONS[rng.integers(len(POSITIONS))]}"
        for _ in range(n)
    ]


def run_level(
    base: str, clients: int, duration: float, max_requests: int, queries: list[str], k: int
) -> dict:
    import httpx
    import numpy as np

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    issued = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def client(slot: int) -> None:
        with httpx.Client(base_url=base, timeout=30.0) as http:
            i = slot
            while time.perf_counter() < deadline:
                with lock:
                    if issued[0] >= max_requests:
                        return
                    issued[0] += 1
                q = queries[i % len(queries)]
                i += clients
                t0 = time.perf_counter()
                try:
                    res = http.get("/api/search", params={"q": q, "k": k, "kind": "image"})
                    ok = res.status_code == 200 and len(res.json()["results"]) == k
                    if not ok:
                        with lock:
                            errors.append(f"{res.status_code}: {res.text[:120]}")
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(repr(exc))
                    continue
                latencies[slot].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 60)
    elapsed = time.perf_counter() - start
    lat = np.array([x for per in latencies for x in per]) * 1000.0
    return {
        "clients": clients,
        "requests": int(lat.size),
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": round(elapsed, 2),
        "qps": round(lat.size / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "max_ms": round(float(lat.max()), 2) if lat.size else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=400, help="catalog images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--levels", default="1,4,16", help="comma-separated concurrent client counts")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per level")
    ap.add_argument("--max-requests", type=int, default=20_000, help="cap per level")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--encoder", choices=["auto", "mmsearch-tiny", "fake"], default="auto")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp folder")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--serve", nargs=3, metavar=("INDEX", "PORT", "ENCODER"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return 0

    which = args.encoder
    why = "forced by --encoder"
    if which == "auto":
        which = "mmsearch-tiny" if TINY_WEIGHTS.is_file() else "fake"
        why = (
            "weights file present"
            if which == "mmsearch-tiny"
            else "mmsearch-tiny weights not found"
        )
    print(f"encoder: {which} ({why})", flush=True)

    from mmsearch.indexer.pipeline import IndexOptions, run_index

    from mmsearch.datasets.synthetic import generate_catalog

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmsearch-load-"))
    catalog = generate_catalog(work / "catalog", n=args.n, seed=args.seed)
    encoder = _make_encoder(which)
    t0 = time.perf_counter()
    report = run_index(
        [catalog.image_dir],
        work / "idx",
        encoder.spec,
        options=IndexOptions(workers=1, image_metadata=catalog.jsonl_path),
        encoder=encoder,
    )
    print(
        f"indexed {report.added} images in {time.perf_counter() - t0:.1f}s into {work / 'idx'}",
        flush=True,
    )
    del encoder

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            str(work / "idx"),
            str(port),
            which,
        ],
        cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    results = []
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if (
                    httpx.get(
                        base + "/api/search", params={"q": "warm up", "k": 1}, timeout=30
                    ).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("server did not start", file=sys.stderr)
                return 2
            time.sleep(0.3)
        queries = _queries(200, args.seed)
        run_level(base, 2, 1.0, 200, queries, args.k)  # warm-up, not reported
        for clients in (int(x) for x in args.levels.split(",")):
            res = run_level(base, clients, args.duration, args.max_requests, queries, args.k)
            results.append(res)
            print(
                f"clients={res['clients']:>3}  requests={res['requests']:>6}  qps={res['qps']:>7}  "
                f"p50={res['p50_ms']} ms  p99={res['p99_ms']} ms  max={res['max_ms']} ms  errors={res['errors']}",
                flush=True,
            )
            for sample in res["error_samples"]:
                print(f"  error: {sample}", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    summary = {
        "encoder": which,
        "catalog_images": report.added,
        "k": args.k,
        "duration_s": args.duration,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "levels": results,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
