"""Replicas follow the bucket: ``mmsearch serve --index s3://... --workers 2`` moves every
worker to a snapshot a writer publishes within 10 s; while the store cannot be reached
it keeps serving the previous snapshot and says so in ``/readyz`` and ``/metrics``.
Against moto's S3 server on loopback (the server reaches it through a fault proxy)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index

from tests.faultproxy import FaultProxy
from tests.readme_doc import free_port
from tests.s3server import BUCKET

REPO = Path(__file__).resolve().parents[1]
URI = f"s3://{BUCKET}/replicas"
WORKERS = 2
FOLLOW_WITHIN_S = 10.0  # the acceptance bound (the default check interval is 5 s)


def _images(tmp_path: Path, n: int) -> list[Path]:
    from mmsearch.datasets.synthetic import generate_catalog

    cat = generate_catalog(tmp_path / "catalog", n=n, seed=11)
    return sorted(p for p in (cat.root / "images").rglob("*") if p.is_file())[:n]


def _folder(path: Path, images: list[Path]) -> Path:
    path.mkdir()
    for i, image in enumerate(images):
        shutil.copy(image, path / f"{i:02d}{image.suffix}")
    return path


def _ready_workers(base: str, until: Callable[[dict], bool], timeout: float) -> dict[int, dict]:
    """``/readyz`` bodies by worker pid, polled on fresh connections until every worker
    answered one that satisfies ``until`` (or the time is up)."""
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{base}/readyz", headers={"Connection": "close"}, timeout=10)
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if answer.status_code == 200:
            body = answer.json()
            if until(body):
                seen[body["pid"]] = body
            else:
                seen.pop(body["pid"], None)
            if len(seen) == WORKERS:
                return seen
        time.sleep(0.05)
    return seen


@pytest.mark.slow
def test_replicas_follow_the_bucket(s3, s3_server, tmp_path, tiny_encoder) -> None:
    images = _images(tmp_path, 24)
    opts = IndexOptions(workers=1)
    run_index(
        [_folder(tmp_path / "base", images[:12])],
        URI,
        tiny_encoder.spec,
        options=opts,
        encoder=tiny_encoder,
    )
    proxy = FaultProxy(s3_server)
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        AWS_ENDPOINT_URL=proxy.url,
        MMSEARCH_CACHE=str(tmp_path / "cache-replica"),
    )
    for key in ("MMSEARCH_S3_CONNECT_TIMEOUT_S", "MMSEARCH_S3_TIMEOUT_S"):
        env[key] = "1"
    env["MMSEARCH_S3_ATTEMPTS"] = "1"
    server = subprocess.Popen(
        [sys.executable, "-m", "mmsearch.cli", "serve", "--index", URI, "--port", str(port),
         "--workers", str(WORKERS), "--backend", "torch"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"),  # noqa: SIM115
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        first = _ready_workers(base, lambda b: b["items"] == 12, timeout=300)
        assert len(first) == WORKERS, (tmp_path / "serve.log").read_text()[-2000:]
        generation = next(iter(first.values()))["snapshot"]["generation"]

        # a writer (on another machine: its own cache, the store directly) publishes
        run_index(
            [_folder(tmp_path / "more", images[12:18])],
            URI,
            tiny_encoder.spec,
            options=opts,
            encoder=tiny_encoder,
        )
        published = time.monotonic()
        moved = _ready_workers(base, lambda b: b["snapshot"]["generation"] > generation, timeout=60)
        took = time.monotonic() - published
        assert len(moved) == WORKERS and all(b["items"] == 18 for b in moved.values())
        assert took < FOLLOW_WITHIN_S, f"replicas moved after {took:.1f} s"
        info = httpx.get(f"{base}/api/info").json()
        assert info["rows"] == 18 and info["reload_error"] is None

        # the store out of reach: the previous snapshot serves, /readyz and /metrics say why
        proxy.set_mode("refuse")
        generation = next(iter(moved.values()))["snapshot"]["generation"]
        run_index(
            [_folder(tmp_path / "late", images[18:24])],
            URI,
            tiny_encoder.spec,
            options=opts,
            encoder=tiny_encoder,
        )
        failing = _ready_workers(base, lambda b: bool(b.get("reload_error")), timeout=60)
        assert len(failing) == WORKERS and all(b["items"] == 18 for b in failing.values())
        # vector search needs nothing from the store (full-text legs read the table there)
        answer = httpx.get(
            f"{base}/api/search", params={"q": "a red circle", "k": 3, "mode": "vector"}
        )
        assert answer.status_code == 200 and answer.json()["results"]
        metrics = httpx.get(f"{base}/metrics").text
        assert 'mmsearch_reload_failures_total{reason="store"}' in metrics
        assert "mmsearch_reload_failing 1.0" in metrics

        proxy.restore()  # back: every worker catches up and the error clears
        caught_up = _ready_workers(
            base, lambda b: b["items"] == 24 and not b.get("reload_error"), timeout=60
        )
        assert len(caught_up) == WORKERS
        assert all(b["snapshot"]["generation"] > generation for b in caught_up.values())
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        proxy.close()
