"""Indexes on object storage, against a real S3-compatible server on loopback (moto)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from mmsearch.indexer.pipeline import IndexOptions, run_index

from mmsearch.engine import SearchIndex
from mmsearch.storage.objectstore import RemoteIndex, normalise_uri
from tests.s3server import BUCKET, keys

REPO = Path(__file__).resolve().parents[1]
URI = f"s3://{BUCKET}/shop/index"
OPTS = IndexOptions(workers=1, batch_size=16, commit_every=16)


def reader(tmp_path: Path, name: str, encoder, monkeypatch) -> SearchIndex:
    """A query replica with its own cache (as on another machine)."""
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / f"cache-{name}"))
    try:
        return SearchIndex(URI, encoder=encoder)
    finally:
        monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-writer"))


def test_uri_forms() -> None:
    assert normalise_uri("s3://b/p/") == "s3://b/p"
    assert normalise_uri(Path("s3://b/p")) == "s3://b/p"  # a Path collapses the //
    assert normalise_uri("file:///tmp/x") is None and normalise_uri("/tmp/x") is None
    remote = RemoteIndex("s3://bucket/a/b")
    assert (remote.bucket, remote.prefix) == ("bucket", "a/b")


def test_index_query_incremental_and_second_reader(s3, tmp_path, fake_encoder, monkeypatch) -> None:
    from mmsearch.datasets.synthetic import generate_catalog

    cat = generate_catalog(tmp_path / "catalog", n=40, seed=3)
    images = sorted((cat.root / "images").rglob("*.*"))
    held = tmp_path / "held"
    held.mkdir()
    for path in images[::4]:  # indexed by the second run
        shutil.move(path, held / path.name)
    first = run_index([cat.root], URI, fake_encoder.spec, options=OPTS, encoder=fake_encoder)
    assert first.added == 30 and first.failed == 0
    stored = keys(s3, "shop/index/")
    assert "shop/index/snapshot.json" in stored
    assert any(k.startswith("shop/index/db/") for k in stored)
    first_objects = set(keys(s3, "shop/index/ann/objects/"))
    assert first_objects
    writer_cache = RemoteIndex(URI).local_dir("writer")
    assert not (writer_cache / "db").exists()  # the table lives in the object store only

    one = reader(tmp_path, "a", fake_encoder, monkeypatch)
    assert len(one) == 30
    vecs = one.store.scan(["id", "vector"])
    probe = np.asarray(vecs.column("vector").to_pylist()[0], np.float32)
    assert one.search_vector(probe, k=1)[0].id == vecs.column("id")[0].as_py()

    for path in images[::4]:
        shutil.move(held / path.name, path)
    second = run_index([cat.root], URI, fake_encoder.spec, options=OPTS, encoder=fake_encoder)
    assert second.added == 10 and second.unchanged == 30

    two = reader(tmp_path, "b", fake_encoder, monkeypatch)  # a fresh replica
    assert len(two) == 40 and two.snapshot.generation == one.snapshot.generation + 1
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-a"))
    assert one.reload() and len(one) == 40  # an open replica picks up the new snapshot
    assert one.snapshot == two.snapshot
    # unchanged objects were not uploaded again; nothing unreferenced is left behind
    later = set(keys(s3, "shop/index/ann/objects/"))
    assert later - first_objects  # the new snapshot's files
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-writer"))
    third = run_index([cat.root], URI, fake_encoder.spec, options=OPTS, encoder=fake_encoder)
    assert third.embedded == 0 and set(keys(s3, "shop/index/ann/objects/")) == later


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    import mmsearch.storage.objectstore as objectstore
    from mmsearch.indexer.pipeline import IndexOptions, run_index
    from tests.conftest import FakeEncoder

    def hang(self, **kwargs):  # stop where the snapshot object would be published
        Path({marker!r}).write_text("ready")
        time.sleep(600)

    if __name__ == "__main__":  # decode workers are spawned and import this module
        objectstore.RemoteIndex.publish = hang
        enc = FakeEncoder()
        run_index([{root!r}], {uri!r}, enc.spec, options=IndexOptions(workers=1, batch_size=16, commit_every=16),
                  encoder=enc)
    """
)


def test_killed_writer_leaves_the_published_snapshot_and_a_rerun_completes(
    s3, tmp_path, fake_encoder, monkeypatch
) -> None:
    from mmsearch.datasets.synthetic import generate_catalog

    cat = generate_catalog(tmp_path / "catalog", n=24, seed=4)
    extra = generate_catalog(tmp_path / "extra", n=8, seed=5)
    run_index([cat.root], URI, fake_encoder.spec, options=OPTS, encoder=fake_encoder)
    before = reader(tmp_path, "r", fake_encoder, monkeypatch)
    marker = tmp_path / "marker"
    script = tmp_path / "child.py"
    script.write_text(
        KILLED_WRITER.format(repo=str(REPO), marker=str(marker), root=str(extra.root), uri=URI)
    )
    child = subprocess.Popen(
        [sys.executable, str(script)],
        env=dict(os.environ, PYTHONPATH=str(REPO), MMSEARCH_LEASE_TTL_S="2"),  # dies fast
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while not marker.exists():
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    # the table in the store has the new rows, but readers keep the published snapshot
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-r"))
    assert not before.reload() and len(before) == 24 and before.stale
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-writer"))
    rerun = run_index(  # waits for the dead writer's lease to expire
        [cat.root, extra.root], URI, fake_encoder.spec, options=replace(OPTS, lock_wait_s=30),
        encoder=fake_encoder,
    )  # fmt: skip
    assert rerun.embedded == 0 and rerun.failed == 0  # committed rows are not embedded again
    after = reader(tmp_path, "s", fake_encoder, monkeypatch)
    assert len(after) == 32 and not after.stale
    ids = after.store.scan(["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 32


def test_commands_take_an_object_store_uri(s3, tmp_path, tiny_encoder) -> None:
    """info, check, eval, remove, build-index and repair on ``s3://`` (issue 27, finding 4)."""
    import json

    from typer.testing import CliRunner

    from mmsearch.cli import app
    from mmsearch.datasets.synthetic import generate_catalog

    cat = generate_catalog(tmp_path / "catalog", n=16, seed=6)
    run_index([cat.image_dir], URI, tiny_encoder.spec, options=OPTS, encoder=tiny_encoder)
    runner = CliRunner()

    def ok(*args: str) -> str:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    info = json.loads(ok("info", "--index", URI, "--json"))
    assert info["index_dir"] == URI and info["rows"] == 16 and info["stale"] is False
    assert "16 rows; ANN files match" in ok("check", "--index", URI)
    queries = cat.root / "queries.jsonl"
    colour = cat.rows[0]["colour"]
    relevant = [str(r["file"]) for r in cat.rows if r["colour"] == colour]
    queries.write_text(json.dumps({"query": colour, "relevant": relevant, "kind": "image"}) + "\n")
    figures = json.loads(ok("eval", str(queries), "--index", URI, "--json"))
    assert figures["n_queries"] == 1
    victim = cat.image_dir / str(cat.rows[0]["file"]).split("/", 1)[1]
    assert "removed 1 item(s)" in ok("remove", str(victim), "--index", URI)
    ok("build-index", "--index", URI, "--retrain")
    assert "nothing to repair" in ok("repair", "--index", URI)
    assert json.loads(ok("info", "--index", URI, "--json"))["rows"] == 15
