"""Hostile clients vs one authorised client: does anyone wait for the attackers?

    python benchmarks/hostile_clients.py --requests 400 --idle 500

Starts ``mmsearch serve`` (the demo index, mmsearch-tiny, token required, default
limits) on 127.0.0.1 and measures one authorised client sending
``GET /api/search?q=...&k=10`` back to back on a keep-alive connection:

1. **quiet**: nothing else talks to the server;
2. **under attack**, with at the same time
   - a client sending oversized request headers over and over (each attempt sends up
     to ``--header-mb`` MB of one header line, without a token);
   - a slowloris client sending a request one byte every 0.5 s (reconnecting when closed);
   - ``--idle`` sockets that connect and send nothing (reopened when closed).

It prints p50/p99 for both phases, their ratio, the statuses the authorised client
got, and what the attackers got back (431, 408, closed). Exit status 1 when any
answer to the authorised client was a 5xx or not an answer, or when the p99 under
attack is over ``--max-ratio`` (default 2) times the quiet p99. Loopback only; stops
by itself.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.httpclient import KeepAliveClient  # noqa: E402
from benchmarks.load import _queries  # noqa: E402
from benchmarks.serve import AUTH, Server, build_demo_index  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(
    port: int, queries: list[str], n: int, min_seconds: float = 0.0
) -> tuple[list[float], dict[str, int]]:
    """Latencies (ms) and status counts of searches by one keep-alive client: ``n`` of
    them, and more until ``min_seconds`` have passed."""
    from urllib.parse import urlencode

    client = KeepAliveClient("127.0.0.1", port, AUTH, timeout=30)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + min_seconds
    i = 0
    while i < n or time.monotonic() < deadline:
        i += 1
        path = "/api/search?" + urlencode({"q": queries[i % len(queries)], "k": 10})
        start = time.perf_counter()
        try:
            status, _, _ = client.get(path)
            key = str(status)
        except OSError as exc:
            key = type(exc).__name__
        latencies.append((time.perf_counter() - start) * 1000)
        statuses[key] = statuses.get(key, 0) + 1
    client.close()
    return latencies, statuses


class Attackers:
    """The three hostile clients, each in its own thread, until :meth:`stop`."""

    def __init__(self, port: int, idle: int, header_mb: float) -> None:
        self.port, self.idle, self.header_bytes = port, idle, int(header_mb * 1024 * 1024)
        self.stop_event = threading.Event()
        self.outcomes: dict[str, dict[str, int]] = {"oversized": {}, "slowloris": {}, "idle": {}}
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._oversized, daemon=True),
            threading.Thread(target=self._slowloris, daemon=True),
            threading.Thread(target=self._idle_sockets, daemon=True),
        ]

    def _note(self, who: str, outcome: str) -> None:
        with self.lock:
            self.outcomes[who][outcome] = self.outcomes[who].get(outcome, 0) + 1

    def _connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    @staticmethod
    def _answer(sock: socket.socket) -> str:
        try:
            data = sock.recv(64)
        except OSError as exc:
            return type(exc).__name__
        return data.split(b"\r\n", 1)[0].decode("latin-1")[9:12] if data else "closed"

    def _oversized(self) -> None:
        chunk = b"a" * 65536
        while not self.stop_event.is_set():
            try:
                with self._connect() as sock:
                    sock.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
                    sent = 0
                    try:
                        while sent < self.header_bytes and not self.stop_event.is_set():
                            sock.sendall(chunk)
                            sent += len(chunk)
                        sock.sendall(b"\r\n\r\n")
                    except OSError:
                        pass
                    self._note("oversized", self._answer(sock))
            except OSError as exc:
                self._note("oversized", type(exc).__name__)

    def _slowloris(self) -> None:
        request = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 10_000
        while not self.stop_event.is_set():
            try:
                with self._connect() as sock:
                    sock.settimeout(0.5)
                    for byte in request:
                        if self.stop_event.is_set():
                            break
                        sock.sendall(bytes([byte]))
                        try:
                            data = sock.recv(64)
                        except TimeoutError:
                            continue
                        self._note("slowloris", data[9:12].decode("latin-1") if data else "closed")
                        break
            except OSError as exc:
                self._note("slowloris", type(exc).__name__)

    def _idle_sockets(self) -> None:
        import selectors

        selector = selectors.DefaultSelector()
        open_count = 0
        while not self.stop_event.is_set():
            while open_count < self.idle:
                try:
                    sock = self._connect()
                except OSError as exc:
                    self._note("idle", type(exc).__name__)
                    break
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
                open_count += 1
            for key, _ in selector.select(timeout=0.2):  # readable: answered or closed
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(64)
                except OSError:
                    data = b""
                self._note("idle", data[9:12].decode("latin-1") if data else "closed")
                selector.unregister(sock)
                sock.close()
                open_count -= 1
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]

    def run(self, stop: Any, results: Any) -> None:
        """Attacks until ``stop`` (a multiprocessing event) is set; puts the outcomes on ``results``."""
        for thread in self.threads:
            thread.start()
        stop.wait()
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)
        results.put(self.outcomes)


def _attack(port: int, idle: int, header_mb: float, stop: Any, results: Any) -> None:
    Attackers(port, idle, header_mb).run(stop, results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="searches per phase (at least)")
    parser.add_argument(
        "--seconds", type=float, default=15.0,
        help="each phase lasts at least this long (longer than the server's 10 s header timeout)",
    )  # fmt: skip
    parser.add_argument("--idle", type=int, default=500, help="idle sockets during the attack")
    parser.add_argument(
        "--header-mb", type=float, default=48.0, help="size of each oversized header"
    )
    parser.add_argument("--n", type=int, default=200, help="demo catalog items")
    parser.add_argument("--max-ratio", type=float, default=2.0)
    parser.add_argument("--http", default="auto", help="--http of mmsearch serve")
    parser.add_argument("--work", type=Path, default=None, help="folder for the index (kept)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="mmsearch-hostile-"))
    index_dir, _ = build_demo_index(work, args.n, seed=7)
    queries = _queries(64, seed=3)
    server = Server(index_dir, 1, extra=["--http", args.http])
    try:
        server.wait_ready()
        measure(server.port, queries, 50)  # warm-up
        quiet, quiet_statuses = measure(server.port, queries, args.requests, args.seconds)
        # The attackers run in a process of their own: in this one they would compete
        # with the measuring client for the GIL and inflate its own timings.
        stop, results = multiprocessing.Event(), multiprocessing.Queue()
        attackers = multiprocessing.Process(
            target=_attack, args=(server.port, args.idle, args.header_mb, stop, results)
        )
        attackers.start()
        time.sleep(2.0)  # let the idle sockets pile up and the attacks start
        attacked, attacked_statuses = measure(server.port, queries, args.requests, args.seconds)
        stop.set()
        outcomes = results.get(timeout=60)
        attackers.join(timeout=60)
    finally:
        server.stop()
    p99_quiet, p99_attacked = _percentile(quiet, 99), _percentile(attacked, 99)
    bad = {k: v for k, v in {**quiet_statuses, **attacked_statuses}.items() if k != "200"}
    ratio = p99_attacked / p99_quiet
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "http": args.http,
        "requests": {"quiet": len(quiet), "attacked": len(attacked)},
        "quiet_ms": {"p50": round(_percentile(quiet, 50), 2), "p99": round(p99_quiet, 2)},
        "attacked_ms": {"p50": round(_percentile(attacked, 50), 2), "p99": round(p99_attacked, 2)},
        "p99_ratio": round(ratio, 2),
        "statuses": {"quiet": quiet_statuses, "attacked": attacked_statuses},
        "attackers_got": outcomes,
    }
    print(json.dumps(report, indent=2))
    if bad or ratio > args.max_ratio:
        print(f"FAILED: non-200 answers {bad}, p99 ratio {ratio:.2f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
