"""Indexing on Ray Data, on a local Ray cluster started here: same rows, vectors and
failure report as the single-machine pipeline; a killed driver is completed by a re-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index
from mmsearch.indexer.report import IndexReport

from mmsearch.engine import SearchIndex
from mmsearch.storage.schema import fixed_list_to_numpy
from mmsearch.storage.table import ItemStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def rows_by_uri(index_dir: Path) -> dict[str, dict]:
    store = ItemStore.open(index_dir)
    tbl = store.scan(["id", "uri", "kind", "sha256", "metadata", "vector"])
    vecs = fixed_list_to_numpy(tbl.column("vector"), store.dim)
    out = {}
    for i, row in enumerate(tbl.drop(["vector"]).to_pylist()):
        row["vector"] = vecs[i]
        out[row["uri"]] = row
    return out


def test_ray_pipeline_matches_the_local_one(ray_cluster, tmp_path, tiny_encoder) -> None:
    from mmsearch.datasets.synthetic import generate_catalog

    cat = generate_catalog(tmp_path / "catalog", n=24, seed=11, image_size=64, corrupt=2)
    local = run_index(
        [cat.root], tmp_path / "local", tiny_encoder.spec, options=IndexOptions(workers=1)
    )
    # encoder=None: each embedding actor loads its own copy of the model
    on_ray = run_index(
        [cat.root],
        tmp_path / "ray",
        tiny_encoder.spec,
        options=IndexOptions(ray="local", batch_size=16, commit_every=20),
    )
    assert (
        (on_ray.added, on_ray.embedded, on_ray.failed)
        == (local.added, local.embedded, local.failed)
        == (24, 24, 2)
    )
    assert sorted((f.path, f.reason, f.exc_class, f.stage) for f in on_ray.failures) == sorted(
        (f.path, f.reason, f.exc_class, f.stage) for f in local.failures
    )
    a, b = rows_by_uri(tmp_path / "local"), rows_by_uri(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) == 24
    ids = [row["id"] for row in b.values()]
    assert len(set(ids)) == len(ids)
    cosines = np.array([float(a[u]["vector"] @ b[u]["vector"]) for u in a])
    assert cosines.min() >= 0.999
    for uri in a:
        assert (a[uri]["kind"], a[uri]["sha256"], a[uri]["metadata"]) == (
            b[uri]["kind"],
            b[uri]["sha256"],
            b[uri]["metadata"],
        )
    assert (
        on_ray.report_path
        and json.loads(Path(on_ray.report_path).read_text().splitlines()[0])["stage"] == "decode"
    )
    # the same snapshot at the end: a searchable index at the table's version
    engine = SearchIndex(tmp_path / "ray", encoder=tiny_encoder)
    assert engine.snapshot.table_version == ItemStore.open(tmp_path / "ray").version
    probe = next(iter(b.values()))
    assert engine.search_vector(probe["vector"], k=1)[0].uri == probe["uri"]
    # nothing to do on a second Ray run
    again = run_index(
        [cat.root], tmp_path / "ray", tiny_encoder.spec, options=IndexOptions(ray="local")
    )
    assert again.embedded == 0 and again.unchanged == 24


KILLED_DRIVER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    import mmsearch.indexer.writer as writer
    from mmsearch.indexer.pipeline import IndexOptions, run_index
    from mmsearch.models.spec import ModelSpec

    real_flush = writer.BatchWriter.flush

    def flush_then_hang(self):  # the first group is committed, then the driver stalls
        real_flush(self)
        Path({marker!r}).write_text("ready")
        time.sleep(600)

    if __name__ == "__main__":
        writer.BatchWriter.flush = flush_then_hang
        run_index([{root!r}], {index!r}, ModelSpec("mmsearch-tiny", ""),
                  options=IndexOptions(ray={address!r}, batch_size=4, commit_every=4, build_index=False))
    """
)


def test_killed_driver_leaves_a_state_the_next_run_completes(
    ray_cluster, tmp_path, tiny_encoder
) -> None:
    from mmsearch.datasets.synthetic import generate_catalog

    cat = generate_catalog(tmp_path / "catalog", n=24, seed=12, image_size=64)
    index, marker = tmp_path / "index", tmp_path / "marker"
    script = tmp_path / "driver.py"
    script.write_text(
        KILLED_DRIVER.format(
            repo=str(REPO),
            marker=str(marker),
            root=str(cat.root),
            index=str(index),
            address=ray_cluster,
        )
    )
    driver = subprocess.Popen(
        [sys.executable, str(script)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 400  # a hang guard, not a timing assertion
    while not marker.exists():
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:] if driver.stderr else ""
        assert time.monotonic() < deadline, "the driver never committed"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    committed = ItemStore.open(index).count()
    assert 4 <= committed < 24
    done = run_index(
        [cat.root], index, tiny_encoder.spec, options=IndexOptions(workers=1), encoder=tiny_encoder
    )
    assert done.embedded == 24 - committed and done.unchanged == committed
    rows = rows_by_uri(index)
    assert len(rows) == 24 and len({r["id"] for r in rows.values()}) == 24


def test_text_collection_on_ray_matches_the_local_run(ray_cluster, tmp_path, tiny_encoder) -> None:
    """A JSONL collection embedded by Ray actors: the same rows, vectors and read failures
    as a local run, and an incremental re-run (one row changed, one gone) agrees too."""
    from mmsearch.datasets.synthetic import catalog_rows

    rows = catalog_rows(60, seed=5)
    lines = [json.dumps({"id": r["id"], "caption": r["caption"], "sku": r["sku"]}) for r in rows]
    lines.insert(7, '{"id": "broken", "caption": ')  # malformed JSON: a read failure
    jsonl = tmp_path / "catalog.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def both(**kw):
        local = run_index(
            [jsonl], tmp_path / "local", tiny_encoder.spec, encoder=tiny_encoder, **kw
        )
        on_ray = run_index(
            [jsonl], tmp_path / "ray", tiny_encoder.spec,
            options=IndexOptions(ray="local", batch_size=16, commit_every=25, build_index=False),
        )  # fmt: skip
        return local, on_ray

    local, on_ray = both(options=IndexOptions(batch_size=16, build_index=False))
    assert (on_ray.added, on_ray.failed) == (local.added, local.failed) == (60, 1)
    assert [(f.reason, f.stage, f.row_number) for f in on_ray.failures] == [
        (f.reason, f.stage, f.row_number) for f in local.failures
    ]
    a, b = rows_by_uri(tmp_path / "local"), rows_by_uri(tmp_path / "ray")
    assert a.keys() == b.keys() and len(a) == 60
    assert min(float(a[u]["vector"] @ b[u]["vector"]) for u in a) >= 0.999
    assert all(a[u]["metadata"] == b[u]["metadata"] and a[u]["kind"] == "text" for u in a)
    assert len({row["id"] for row in b.values()}) == 60

    changed = dict(rows[3], caption="a violet hexagon in the middle")
    lines = [json.dumps({"id": r["id"], "caption": r["caption"], "sku": r["sku"]})
             for r in [*rows[:3], changed, *rows[4:-1]]]  # fmt: skip
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    local, on_ray = both(options=IndexOptions(batch_size=16, build_index=False))
    counts = [(r.updated, r.deleted, r.unchanged, r.embedded) for r in (local, on_ray)]
    assert counts[0] == counts[1] == (1, 1, 58, 1)
    a, b = rows_by_uri(tmp_path / "local"), rows_by_uri(tmp_path / "ray")
    assert a.keys() == b.keys() and len(b) == 59
    uri = next(u for u in b if u.endswith(f"#{rows[3]['id']}"))
    assert float(b[uri]["vector"] @ tiny_encoder.encode_texts([changed["caption"]])[0]) >= 0.999


def test_product_feed_on_ray_matches_the_local_run(ray_cluster, tmp_path, tiny_encoder) -> None:
    """A product feed's images are fetched on the driver and travel to the Ray decode tasks
    as bytes: the same rows, vectors and failures (a 404 fetched on the driver, a cut JPEG
    that only decoding finds, in a Ray task) as a local run; a second run embeds nothing."""
    import csv

    from mmsearch.datasets.synthetic import generate_catalog
    from tests.image_server import ImageServer

    cat = generate_catalog(tmp_path / "catalog", n=16, seed=13, image_size=64)
    feed = tmp_path / "feed.csv"
    with ImageServer() as server:
        for row in cat.rows:
            server.add(row["file"], (cat.root / row["file"]).read_bytes())
        whole = next(cat.root / r["file"] for r in cat.rows if r["file"].endswith(".jpg"))
        server.add("cut.jpg", whole.read_bytes()[:400])  # a JPEG header, then nothing
        rows = [{"id": f"P{i:02d}", "title": row["caption"], "brand": f"brand{i}",
                 "image_link": server.url(row["file"]),
                 "additional_image_link": server.url(cat.rows[(i + 1) % 16]["file"]) if i % 4 == 0 else ""}
                for i, row in enumerate(cat.rows)]  # fmt: skip
        rows[3]["image_link"] = server.url("cut.jpg")
        rows[5]["image_link"] = server.url("missing.jpg")
        with open(feed, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

        def run(where: str, **kw: Any) -> IndexReport:
            return run_index(
                [feed], tmp_path / where, tiny_encoder.spec,
                options=IndexOptions(allow_private_urls=True, batch_size=4, commit_every=5,
                                     build_index=where == "ray", **kw),
                encoder=tiny_encoder if where == "local" else None,
            )  # fmt: skip

        local, on_ray = run("local", workers=1), run("ray", ray="local")
        again = run("ray", ray="local")
    assert local.records is not None and on_ray.records is not None and again.records is not None
    assert on_ray.records.to_dict() == {
        **local.records.to_dict(),
        "elapsed_s": on_ray.records.elapsed_s,
    }
    failures = sorted((f.path, f.reason, f.exc_class, f.stage) for f in on_ray.failures)
    assert failures == sorted((f.path, f.reason, f.exc_class, f.stage) for f in local.failures)
    assert [(f[0], f[3]) for f in failures] == [("P03", "decode"), ("P05", "fetch")]
    assert on_ray.embedded == local.embedded == 16 + (16 - 2) + 4
    a, b = rows_by_uri(tmp_path / "local"), rows_by_uri(tmp_path / "ray")
    assert a.keys() == b.keys() and len(b) == 16 + 14 + 4
    assert all(a[u]["sha256"] == b[u]["sha256"] and a[u]["metadata"] == b[u]["metadata"] for u in a)
    assert min(float(a[u]["vector"] @ b[u]["vector"]) for u in a) >= 0.999
    assert len({row["id"] for row in b.values()}) == len(b)
    engine = SearchIndex(tmp_path / "ray", encoder=tiny_encoder)
    image = next(r for r in b.values() if r["kind"] == "image")
    assert engine.search_vector(image["vector"], k=1, kind="image")[0].uri == image["uri"]
    hits = engine.search("brand7", k=3, mode="lexical", group_by="id")
    assert [h.metadata["id"] for h in hits] == ["P07"]
    assert again.embedded == 0 and sorted(f[0] for f in again.records.failed) == ["P03", "P05"]
