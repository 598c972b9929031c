"""CPU time per search request, server and client side: what a request costs, not how long it waits.

    python benchmarks/serve_cpu.py --requests 400 \\
        --config "onnx=--backend onnx" --config "torch=--backend torch"

Wall-clock latency on a shared machine mostly measures the other jobs; CPU time
spent by the processes involved barely depends on them. For each ``--config``
(a name, then extra ``mmsearch serve`` arguments, after optional ``VAR=value``
environment settings for the server) this script starts ``mmsearch serve``
with ``--workers`` workers (default 1) on the demo index (as ``benchmarks/serve.py`` does: token required,
access log off), warms it up, then sends ``--requests`` sequential
``GET /api/search?q=...&k=10`` requests on one keep-alive connection, once per client
kind (``http.client`` via :mod:`benchmarks.httpclient`, and ``httpx``), and with
``--concurrency`` also over N concurrent ``http.client`` connections (the CPU cost of
a request under load: threads that spin or contend show up here), and reports:

- server CPU ms per request: utime + stime of every server process (``/proc/PID/stat``),
  after minus before, over the requests;
- client CPU ms per request: this process's CPU time over the same requests (it does
  nothing else meanwhile), including parsing each answer's JSON and checking it;
- wall ms per request and the server's own per-stage timings (from the answers).

Queries cycle through 200 distinct seeded captions. With ``--py-spy DIR`` the worker
is also sampled by ``py-spy record`` during the first client's requests (collapsed
stacks in DIR, summarised as the top self and cumulative frames).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.httpclient import KeepAliveClient, json_loads, search_path  # noqa: E402
from benchmarks.load import _queries  # noqa: E402
from benchmarks.serve import AUTH, Server, build_demo_index  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                text = Path(f"/proc/{p}/task/{tid}/children").read_text()
                todo.extend(int(x) for x in text.split())
        except OSError:
            continue
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of ``pids`` (all their threads, living or ended), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICK


def _check(status: int, body: bytes, snapshot: str | None, k: int) -> dict[str, float]:
    if status != 200:
        raise RuntimeError(f"{status}: {body[:200]!r}")
    answer = json_loads(body)
    if len(answer["results"]) != k or snapshot is None:
        raise RuntimeError(f"bad answer: {len(answer['results'])} results, snapshot {snapshot}")
    return answer["timings"]


def _send_http_client(
    server: Server, paths: list[str], k: int, concurrency: int = 1
) -> list[dict[str, float]]:
    """Sends ``paths`` over ``concurrency`` keep-alive connections (one thread each)."""
    import threading

    out: list[dict[str, float]] = []
    failures: list[BaseException] = []

    def run(share: list[str]) -> None:
        client = KeepAliveClient("127.0.0.1", server.port, AUTH)
        try:
            for path in share:
                status, headers, body = client.get(path)
                out.append(_check(status, body, headers.get("x-mmsearch-snapshot"), k))
        except BaseException as exc:  # reported below, after the other threads finish
            failures.append(exc)
        finally:
            client.close()

    threads = [
        threading.Thread(target=run, args=(paths[i::concurrency],)) for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return out


def _send_httpx(server: Server, queries: list[str], k: int) -> list[dict[str, float]]:
    import httpx

    out = []
    with httpx.Client(base_url=server.base, headers=AUTH, timeout=60.0) as http:
        for q in queries:
            res = http.get("/api/search", params={"q": q, "k": k})
            out.append(
                _check(res.status_code, res.content, res.headers.get("x-mmsearch-snapshot"), k)
            )
    return out


def _spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("py-spy not found: no profile", flush=True)
        return None
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--native", "--format", "raw", "--rate", "100",
         "--duration", str(int(seconds) + 1), "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip


def summarise_profile(path: Path, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    """Top self and cumulative frames (share of samples) of a py-spy ``raw`` (collapsed) file."""
    own: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            cumulative[frame] += n
    share = lambda c: [(f, round(v / max(total, 1), 3)) for f, v in c.most_common(top)]  # noqa: E731
    return {"samples": [("total", total)], "self": share(own), "cumulative": share(cumulative)}


def measure(
    server: Server, queries: list[str], k: int, client: str, spy: Path | None, concurrency: int = 1
) -> dict[str, Any]:
    pids = _tree(server.proc.pid)
    paths = [search_path(q, k) for q in queries]
    spy_proc = None
    if spy is not None:
        workers = [p for p in pids if p != server.proc.pid] or [server.proc.pid]
        spy_proc = _spy(workers[-1], spy, seconds=len(queries) * 0.02 + 5)
        time.sleep(1.0)
    server0, client0, wall0 = cpu_seconds(pids), time.process_time(), time.perf_counter()
    if client == "http.client":
        timings = _send_http_client(server, paths, k, concurrency)
    else:
        timings = _send_httpx(server, queries, k)
    wall = time.perf_counter() - wall0
    client_s, server_s = time.process_time() - client0, cpu_seconds(pids) - server0
    if spy_proc is not None:
        spy_proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        spy_proc.wait(timeout=60)
    n = len(queries)
    stages = collections.Counter()
    for t in timings:
        stages.update(t)
    return {
        "client": client,
        "concurrency": concurrency,
        "requests": n,
        "server_cpu_ms": round(server_s * 1000 / n, 2),
        "client_cpu_ms": round(client_s * 1000 / n, 2),
        "wall_ms": round(wall * 1000 / n, 2),
        "stages_ms": {s: round(v * 1000 / n, 3) for s, v in stages.items() if v},
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=400, help="demo catalog images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--requests", type=int, default=400, help="sequential requests per client kind")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1, help="server worker processes")
    ap.add_argument(
        "--config", action="append", default=None, metavar="NAME=ARGS",
        help="a server configuration: name=extra serve arguments (repeatable)",
    )  # fmt: skip
    ap.add_argument("--clients", default="http.client,httpx", help="client kinds to measure")
    ap.add_argument(
        "--concurrency", default="1", help="concurrent http.client connections (comma-separated)"
    )
    ap.add_argument("--py-spy", type=Path, default=None, help="profile the worker into this folder")
    ap.add_argument("--workdir", type=Path, default=None, help="reused if given")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    configs = [c.partition("=") for c in (args.config or ["onnx=--backend onnx"])]

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmsearch-serve-cpu-"))
    work.mkdir(parents=True, exist_ok=True)
    index_dir, _root = build_demo_index(work, args.n, args.seed)
    queries = _queries(200, args.seed)
    queries = [queries[i % len(queries)] for i in range(args.requests)]
    results = []
    for name, _, extra in configs:
        words = extra.split()
        env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
        server = Server(
            index_dir, args.workers, [w for w in words if w.startswith("-") or "=" not in w], env
        )
        try:
            server.wait_ready()
            _send_http_client(server, [search_path(q, args.k) for q in queries[:100]], args.k)
            runs = [
                (c, int(n)) for c in args.clients.split(",") for n in args.concurrency.split(",")
            ]
            runs = [(c, n) for c, n in runs if c == "http.client" or n == 1]
            for client, concurrency in runs:
                spy = None
                if args.py_spy is not None and (client, concurrency) == runs[0]:
                    args.py_spy.mkdir(parents=True, exist_ok=True)
                    spy = args.py_spy / f"{name}.txt"
                res = measure(server, queries, args.k, client, spy, concurrency)
                res = {"config": name, "workers": args.workers, "serve_args": extra, **res}
                res["load_average"] = [round(x, 2) for x in os.getloadavg()]
                results.append(res)
                print(json.dumps(res), flush=True)
                if spy is not None and spy.is_file():
                    summary = summarise_profile(spy)
                    (args.py_spy / f"{name}.summary.json").write_text(json.dumps(summary, indent=1))
        finally:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
