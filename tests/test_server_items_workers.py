"""Issue 21's acceptance for writes over HTTP: with ``mmsearch serve --workers 2``
running (the real CLI, the real mmsearch-tiny model, images fetched from an image
server on 127.0.0.1 under ``--allow-private-urls``), 20 batches of 5 records land
through ``PUT /api/items`` while readers search on fresh connections (so both workers
answer). Every item put appears in search, and every answer is one complete
snapshot: the records it holds are exactly those of the batches whose upsert had
committed by the table version in its ``X-Mmsearch-Snapshot``, each with its text
and its image row. Visibility latency (p99 <= 1 s) is measured by
``benchmarks/upsert.py --http``, not asserted here (it depends on machine speed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from mmsearch.indexer.upsert import create_index

from mmsearch.datasets.synthetic import generate_catalog
from tests.image_server import ImageServer
from tests.readme_doc import free_port

REPO = Path(__file__).resolve().parents[1]
TOKEN = "workers-token-0123456789-abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BATCHES, PER_BATCH = 20, 5
WORD = "zqshop"  # in every record's title: one lexical query sees every record


def _ready(base: str, timeout: float, version: int = 0) -> set[int]:
    """The pids of the workers that answered ``/readyz`` (fresh connections) from table
    version ``version`` or later within ``timeout``."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(pids) < 2:
        try:
            res = httpx.get(f"{base}/readyz", headers={**AUTH, "Connection": "close"}, timeout=10)
        except httpx.HTTPError:
            res = None
        if res is not None and res.status_code == 200:
            if res.json()["snapshot"]["table_version"] >= version:
                pids.add(res.json()["pid"])
        time.sleep(0.05)
    return pids


def _search(base: str) -> tuple[int, set[tuple[str, str]]]:
    """(table version, {(record id, row kind)}) of one lexical search on a fresh connection."""
    res = httpx.get(f"{base}/api/search", params={"q": WORD, "mode": "lexical", "kind": "any", "k": 1000},
                    headers={**AUTH, "Connection": "close"}, timeout=60)  # fmt: skip
    assert res.status_code == 200, res.text
    rows = {(h["metadata"]["id"], h["kind"]) for h in res.json()["results"]}
    return int(res.headers["x-mmsearch-snapshot"].split(".")[0]), rows


@pytest.mark.slow
def test_writes_through_two_workers_are_seen_whole(tmp_path: Path, tiny_encoder: Any) -> None:
    catalog = generate_catalog(tmp_path / "cat", n=BATCHES * PER_BATCH, seed=2121, image_size=48)
    index = tmp_path / "idx"
    create_index(index, tiny_encoder.spec, encoder=tiny_encoder)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MMSEARCH_TOKEN": TOKEN}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    with ImageServer() as images:
        for row in catalog.rows:
            images.add("img/" + row["file"], (catalog.root / row["file"]).read_bytes())
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmsearch.cli", "serve", "--index", str(index), "--port", str(port),
             "--workers", "2", "--backend", "torch", "--allow-writes", "--allow-private-urls"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )  # fmt: skip
        try:
            assert len(_ready(base, timeout=240)) == 2, (tmp_path / "serve.log").read_text()[-2000:]
            answers: list[tuple[int, set[tuple[str, str]]]] = []
            errors: list[str] = []
            stop = threading.Event()

            def read() -> None:
                while not stop.is_set():
                    try:
                        answers.append(_search(base))
                    except (AssertionError, httpx.HTTPError) as exc:
                        errors.append(repr(exc)[:300])

            readers = [threading.Thread(target=read) for _ in range(2)]
            committed: list[tuple[int, set[str]]] = []  # (table version, ids) per batch
            try:
                with httpx.Client(base_url=base, headers=AUTH, timeout=120) as http:
                    for b in range(BATCHES):
                        rows = catalog.rows[b * PER_BATCH : (b + 1) * PER_BATCH]
                        batch = [{"id": f"sku-{b}-{j}", "title": f"{WORD} {row['caption']}",
                                  "price": float(row["price"]), "image": images.url("img/" + row["file"])}
                                 for j, row in enumerate(rows)]  # fmt: skip
                        res = http.put("/api/items", json=batch)
                        assert res.status_code == 200, res.text
                        body = res.json()
                        assert body["failed"] == [] and body["images"]["added"] == PER_BATCH
                        committed.append((body["table_version"], {r["id"] for r in batch}))
                        if b == 0:  # an index with no rows has no full-text index yet:
                            assert len(_ready(base, 60, body["table_version"])) == 2
                            for t in readers:  # search once both workers have rows
                                t.start()
                        wanted = {(r["id"], k) for r in batch for k in ("text", "image")}
                        deadline = time.monotonic() + 60
                        while not wanted <= _search(base)[1]:  # every item put appears
                            assert time.monotonic() < deadline, f"batch {b} not visible"
                            time.sleep(0.05)
            finally:
                stop.set()
                for t in readers:
                    if t.is_alive():
                        t.join(timeout=120)
            assert errors == []
            assert len(answers) > BATCHES
            all_ids = set().union(*(ids for _, ids in committed))
            final_version, final_rows = _search(base)
            assert {i for i, _ in final_rows} == all_ids and len(final_rows) == 2 * len(all_ids)
            versions = [v for v, _ in committed]
            assert versions == sorted(versions) and final_version >= versions[-1]
            for version, rows in answers:  # one complete snapshot per answer
                expected = set().union(*(ids for v, ids in committed if v <= version))
                assert {i for i, _ in rows} == expected, version
                assert rows == {(i, k) for i in expected for k in ("text", "image")}, version
            assert len({v for v, _ in answers}) > 2  # the readers saw the index grow
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            log.close()
