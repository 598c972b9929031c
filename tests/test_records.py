"""Records from a backend: ``idx.upsert`` / ``idx.delete`` against a real HTTP server on
127.0.0.1 (images, a 404, a slow URL, an oversized image, a redirect, a non-image, a
flaky 503), LanceDB and FAISS, with the real mmsearch-tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from mmsearch.indexer.upsert import create_index

import mmsearch
from mmsearch.engine import SearchIndex
from mmsearch.storage.schema import fixed_list_to_numpy
from mmsearch.storage.table import ItemStore
from mmsearch.urlfetch import FetchPolicy
from tests.image_server import ImageServer

N = 1000
#: A short, retrying policy that may reach the loopback test server.
POLICY = FetchPolicy(
    allow_private=True, timeout_s=3.0, max_bytes=1_000_000, retries=1, backoff_s=0.05
)
BAD = {  # record index -> (path on the server, words its failure reason holds)
    3: ("missing.jpg", "HTTP 404"),
    7: ("slow.jpg", "timed out"),
    11: ("huge.png", "larger than"),
    13: ("page.jpg", "not return an image"),
}


def token(i: int) -> str:
    """A word only record ``i`` has (its brand), for exact lexical checks."""
    return f"brand{i:04d}x"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from mmsearch.datasets.synthetic import generate_catalog

    return generate_catalog(tmp_path_factory.mktemp("cat") / "c", n=N + 20, seed=21, image_size=64)


@pytest.fixture(scope="module")
def server(catalog):
    with ImageServer(slow_s=8.0) as srv:
        for row in catalog.rows:
            srv.add("img/" + row["file"], (catalog.root / row["file"]).read_bytes())
        yield srv


def records_for(catalog: Any, server: ImageServer) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(catalog.rows[:N]):
        url = server.url("img/" + row["file"])
        if i in BAD:
            url = server.url(BAD[i][0])
        elif i == 17:
            url = server.url("moved/img/" + row["file"])  # a redirect to the image
        elif i == 19:
            url = server.url("flaky/img/" + row["file"])  # a 503 first, then the image
        out.append({"id": f"sku-{i}", "title": row["caption"], "description": row["title"],
                    "price": row["price"], "category": row["category"], "brand": token(i),
                    "image": url})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory, catalog, server, tiny_encoder):
    """A 1,000-record index, upserted in one call; (index dir, records, report)."""
    index = tmp_path_factory.mktemp("shop") / "index"
    create_index(index, tiny_encoder.spec, encoder=tiny_encoder)
    idx = SearchIndex(index, encoder=tiny_encoder)
    records = records_for(catalog, server)
    report = idx.upsert(records, fetch_policy=POLICY)
    return index, records, report


def open_copy(base: Any, tmp_path: Path, encoder: Any) -> SearchIndex:
    shutil.copytree(base[0], tmp_path / "index")
    return SearchIndex(tmp_path / "index", encoder=encoder)


def rows_of(index: Path) -> dict[str, dict[str, Any]]:
    store = ItemStore.open(index)
    tbl = store.scan(["id", "uri", "kind", "sha256", "text", "metadata", "vector"])
    vectors = fixed_list_to_numpy(tbl.column("vector"), store.dim)
    out = {}
    for i, row in enumerate(tbl.drop(["vector"]).to_pylist()):
        row["vector"] = vectors[i]
        out[row["uri"]] = row
    return out


def ids_found(idx: SearchIndex, query: str, **kw: Any) -> set[str]:
    return {h.metadata.get("id") for h in idx.search(query, k=20, **kw)}


def test_every_bad_image_is_reported_and_the_good_ones_are_searchable(base, tiny_encoder):
    index, records, report = base
    assert sorted(f[0] for f in report.failed) == sorted(f"sku-{i}" for i in BAD)
    for record_id, what, reason in report.failed:
        assert what.startswith("image 0 (http://127.0.0.1:")
        assert BAD[int(record_id[4:])][1] in reason, (record_id, reason)
    assert report.texts.added == report.texts.embedded == N
    assert report.images.added == report.images.embedded == N - len(BAD)
    rows = rows_of(index)
    assert len(rows) == 2 * N - len(BAD)
    assert len({r["id"] for r in rows.values()}) == len(rows)
    idx = SearchIndex(index, encoder=tiny_encoder)
    # every good image answers for its own vector, as its record
    images = [r for r in rows.values() if r["kind"] == "image"]
    for row in images[:: len(images) // 40]:
        hit = idx.search_vector(row["vector"], k=1, kind="image", exact=True)[0]
        assert hit.uri == row["uri"]
    # the redirected and the retried images are there; records are whole in every mode
    assert {h.metadata["id"] for h in idx.search(token(17), k=5, mode="lexical")} == {"sku-17"}
    for i in (17, 19, 400):
        got = idx.search(token(i), k=5, mode="lexical", kind="image")
        assert [h.metadata["id"] for h in got] == [f"sku-{i}"]
        assert got[0].metadata["price"] == records[i]["price"]
    grouped = idx.search(records[400]["title"], k=5, group_by="id", where={"price__lt": 1e9})
    assert len({h.metadata["id"] for h in grouped}) == len(grouped)


def test_changes_reembed_exactly_what_changed_and_deletes_vanish(base, tmp_path, catalog, server,
                                                                tiny_encoder):  # fmt: skip
    _, records, _ = base
    idx = open_copy(base, tmp_path, tiny_encoder)
    before = rows_of(tmp_path / "index")
    changed = [dict(r) for r in records]
    titles = list(range(100, 110))
    images = list(range(200, 210))
    for i in titles:
        changed[i]["title"] = f"renamed zebra{i} product"
    for n, i in enumerate(images):  # an image no record had
        changed[i]["image"] = server.url("img/" + catalog.rows[N + n]["file"])
    report = idx.upsert(changed, fetch_policy=POLICY)
    assert report.texts.embedded == 10 and report.images.embedded == 10
    assert (report.texts.updated, report.images.updated, report.images.removed) == (10, 10, 0)
    # a changed title is rewritten into the record's image row too (its vector kept)
    assert report.metadata_updated == 10
    after = rows_of(tmp_path / "index")
    assert len(after) == len(before)
    moved = {u for u in after if u not in before or after[u]["sha256"] != before[u]["sha256"]}
    assert len(moved) == 20
    for i in titles:
        assert ids_found(idx, f"zebra{i}", mode="lexical") == {f"sku-{i}"}
    new_rows = [after[u] for u in moved if after[u]["kind"] == "image"]
    for row in new_rows:
        hit = idx.search_vector(row["vector"], k=1, kind="image", exact=True)[0]
        assert hit.uri == row["uri"] and hit.metadata["id"] in {f"sku-{i}" for i in images}
    # the same records again: nothing to embed, nothing to write
    again = idx.upsert(changed, fetch_policy=POLICY)
    assert again.embedded == 0 and again.metadata_updated == 0
    assert again.images.unchanged == N - len(BAD) and again.texts.unchanged == N
    assert sorted(f[0] for f in again.failed) == sorted(f"sku-{i}" for i in BAD)  # retried

    doomed = [f"sku-{i}" for i in range(500, 510)]
    assert idx.delete([*doomed, "sku-no-such"]) == 10
    assert idx.delete(doomed) == 0  # idempotent
    for i in range(500, 510):
        for mode in ("lexical", "hybrid", "vector"):
            assert f"sku-{i}" not in ids_found(idx, token(i), mode=mode), mode
        assert f"sku-{i}" not in ids_found(idx, changed[i]["title"], group_by="id")
    gone = [r for r in before.values() if json.loads(r["metadata"])["id"] in doomed]
    assert len(gone) == 20
    for row in gone:
        hits = idx.search_vector(row["vector"], k=3, exact=True)
        assert row["uri"] not in {h.uri for h in hits}
    assert len(rows_of(tmp_path / "index")) == len(before) - 20


def test_images_from_every_kind_of_reference(tmp_path, catalog, tiny_encoder):
    from PIL import Image

    files = [catalog.root / row["file"] for row in catalog.rows[:4]]
    data = files[1].read_bytes()
    import base64

    uri = "data:image/jpeg;base64," + base64.b64encode(files[2].read_bytes()).decode()
    pil = Image.open(files[3]).convert("RGB")
    create_index(tmp_path / "i", tiny_encoder.spec, encoder=tiny_encoder)
    idx = SearchIndex(tmp_path / "i", encoder=tiny_encoder)
    report = idx.upsert({"id": 7, "title": "four images", "images": [str(files[0]), data, uri, pil,
                                                                        data]})  # fmt: skip
    assert report.failed == [] and report.images.added == 4  # the repeated bytes: one row
    assert {h.metadata["id"] for h in idx.search("four images", k=10)} == {"7"}
    # fewer images later: the dropped one is removed, the others are untouched
    report = idx.upsert({"id": 7, "title": "four images", "images": [data, uri, pil]})
    assert (report.images.removed, report.images.unchanged, report.embedded) == (1, 3, 0)
    # a record whose image fails keeps its stored images (never delete on doubt)
    report = idx.upsert({"id": 7, "title": "four images", "images": [b"junk"]})
    assert [(f[0], f[1]) for f in report.failed] == [("7", "image 0 (<4 bytes>)")]
    assert report.images.removed == 0 and len(rows_of(tmp_path / "i")) == 4
    # paths refused when the caller says so (a network client's records)
    report = idx.upsert({"id": 8, "image": str(files[0])}, local_paths=False)
    assert "not accepted" in report.failed[0][2]


def test_bad_records_are_refused_before_anything_is_written(tmp_path, tiny_encoder):
    create_index(tmp_path / "i", tiny_encoder.spec, encoder=tiny_encoder)
    idx = SearchIndex(tmp_path / "i", encoder=tiny_encoder)
    version = ItemStore.open(tmp_path / "i").version
    for bad, words in (
        ([{"title": "no id"}], "record 0 has no 'id'"),
        ([{"id": "a"}, {"id": "a"}], "the same id 'a'"),
        (["not a dict"], "not an object"),
        ([{"id": " "}], "empty 'id'"),
    ):
        with pytest.raises(mmsearch.RecordError, match=words):
            idx.upsert(bad)
    assert ItemStore.open(tmp_path / "i").version == version


def test_open_create_with_a_model_then_reopen(tmp_path):
    spec = mmsearch.ModelSpec("mmsearch-tiny", "")
    idx = mmsearch.open(tmp_path / "shop", create=True, model=spec)
    assert len(idx) == 0 and idx.search("anything").reason
    idx.upsert([{"id": "a", "title": "a red circle", "colour": "red"}])
    again = mmsearch.open(tmp_path / "shop", create=True)  # exists: kept as it is
    assert [h.metadata for h in again.search("a red circle", k=1)] == [{"colour": "red", "id": "a"}]
    with pytest.raises(mmsearch.ModelMismatchError):
        mmsearch.open(tmp_path / "shop", create=True, model=mmsearch.ModelSpec("ViT-B-32", "x"))


def test_key_indexes_are_built_once_and_upserts_replace_rows_through_them(tmp_path, tiny_encoder):
    from mmsearch.indexer.recordtypes import record_range

    from mmsearch.storage.schema import KEY_INDEXES

    create_index(tmp_path / "i", tiny_encoder.spec, encoder=tiny_encoder)
    idx = SearchIndex(tmp_path / "i", encoder=tiny_encoder)
    idx.upsert([{"id": f"r{i}", "title": f"first {i}"} for i in range(30)])
    store = ItemStore.open(tmp_path / "i")  # the first rows' full-text index brings them
    assert set(KEY_INDEXES.values()) <= {ix.name for ix in store.table.list_indices()}
    for name in KEY_INDEXES.values():  # an index from before the key indexes
        store.table.drop_index(name)
    assert idx.upsert({"id": "r1", "title": "first 1"}).embedded == 0  # the next writer builds them
    store = ItemStore.open(tmp_path / "i")
    for name in KEY_INDEXES.values():
        assert store.table.index_stats(name).num_unindexed_rows == 0
    for rnd in range(3):  # each upsert appends rows the key indexes do not cover yet
        idx.upsert([{"id": f"r{i}", "title": f"round{rnd} {i}"} for i in range(0, 30, 2)]
                   + [{"id": f"n{rnd}", "title": f"new {rnd}"}])  # fmt: skip
    rows = ItemStore.open(tmp_path / "i").scan(["id", "uri", "text"]).to_pylist()
    assert len(rows) == 33 and len({r["uri"] for r in rows}) == 33
    assert len({r["id"] for r in rows}) == 33
    texts = {r["uri"].split("#")[0]: r["text"] for r in rows}
    assert sum(t.startswith("round2") for t in texts.values()) == 15
    assert sum(t.startswith("first") for t in texts.values()) == 15
    store = ItemStore.open(tmp_path / "i")
    assert store.max_id() == max(r["id"] for r in rows)
    plan = store.table.search().where(record_range("r3")).select(["uri"]).explain_plan(True)
    assert "ScalarIndexQuery" in plan and "uri_idx" in plan  # a lookup, not a scan
    top = store.max_id()
    clash = store.scan(store.table.schema.names, "id = 0")
    for n in range(2):  # two more rows with id 0: the ids reach no longer to count - 1
        store.table.add(clash.set_column(1, "uri", pa.array([f"records:clash{n}#text"])))
    assert store.max_id() == top == max(store.scan(["id"]).column("id").to_pylist())


def test_an_upsert_that_folds_the_full_text_index_publishes_a_readable_snapshot(
    tmp_path, tiny_encoder, monkeypatch
):
    import mmsearch.indexer.ann_delta as ann_delta

    from mmsearch.storage.schema import KEY_INDEXES

    create_index(tmp_path / "i", tiny_encoder.spec, encoder=tiny_encoder)
    idx = SearchIndex(tmp_path / "i", encoder=tiny_encoder)
    idx.upsert([{"id": f"r{i}", "title": f"first {token(i)}"} for i in range(20)])
    monkeypatch.setattr(ann_delta, "LEXICAL_LAG_ROWS", 0)  # every upsert folds it (optimize)
    monkeypatch.setattr(ann_delta, "LEXICAL_LAG_FRACTION", 0.0)
    idx.upsert([{"id": "r3", "title": f"changed {token(500)}"}, {"id": "n1", "title": token(501)}])
    store = ItemStore.open(tmp_path / "i")
    assert store.lexical_index_current()
    for name in KEY_INDEXES.values():  # folded by the same optimize
        assert store.table.index_stats(name).num_unindexed_rows == 0
    reader = SearchIndex(
        tmp_path / "i", encoder=tiny_encoder
    )  # the ANN names the snapshot's version
    for word, want in ((token(500), "r3"), (token(501), "n1"), (token(3), None)):
        hits = reader.search(word, k=1, mode="lexical")
        assert [h.metadata["id"] for h in hits][:1] == ([want] if want else [])


def test_second_writer_waits_then_gets_one_clear_error(tmp_path, tiny_encoder):
    from mmsearch.storage.locks import index_write_lock

    create_index(tmp_path / "i", tiny_encoder.spec, encoder=tiny_encoder)
    idx = SearchIndex(tmp_path / "i", encoder=tiny_encoder)
    with index_write_lock(tmp_path / "i"):
        with pytest.raises(mmsearch.StorageError, match=r"another mmsearch process .*waited 0.3 s"):
            idx.upsert([{"id": "a", "title": "x"}], lock_wait_s=0.3)
        with pytest.raises(mmsearch.StorageError):
            idx.delete(["a"], lock_wait_s=0)
    assert idx.upsert([{"id": "a", "title": "x"}]).texts.added == 1


def test_fetcher_retries_and_refuses(tmp_path, catalog):
    from mmsearch.urlfetch import FetchError, UnsafeURLError, UrlFetcher

    data = (catalog.root / catalog.rows[0]["file"]).read_bytes()
    with ImageServer(slow_s=8.0) as srv, UrlFetcher(POLICY) as fetcher:
        srv.add("a.jpg", data)
        assert fetcher.fetch(srv.url("flaky/a.jpg")) == data
        assert srv.requests.count("/flaky/a.jpg") == 2
        with pytest.raises(FetchError, match="404"):
            fetcher.fetch(srv.url("missing.jpg"))
        assert srv.requests.count("/missing.jpg") == 1  # a 404 is not retried
        with pytest.raises(FetchError, match="timed out"):
            fetcher.fetch(srv.url("slow.jpg"))
        assert srv.requests.count("/slow.jpg") == 2  # a timeout is
        got = fetcher.fetch_many([srv.url("a.jpg"), srv.url("missing.jpg")] * 5)
        assert [isinstance(g, bytes) for g in got] == [True, False] * 5
    with UrlFetcher(FetchPolicy()) as strict:  # the default policy refuses loopback
        with pytest.raises(UnsafeURLError, match="non-public"):
            strict.fetch(srv.url("a.jpg"))


def test_upserts_wait_beside_an_ivfpq_index_until_a_merge(tmp_path, catalog, tiny_encoder):
    from mmsearch.indexer.ann_build import rebuild_ann
    from mmsearch.indexer.pipeline import IndexOptions, run_index

    from mmsearch.storage.snapshot import read_snapshot

    index = tmp_path / "index"
    folder = tmp_path / "photos"
    folder.mkdir()
    for row in catalog.rows[:300]:
        (folder / Path(row["file"]).name).write_bytes((catalog.root / row["file"]).read_bytes())
    opts = IndexOptions(index_type="ivfpq", workers=1)
    run_index([folder], index, tiny_encoder.spec, options=opts, encoder=tiny_encoder)
    writer = SearchIndex(index, encoder=tiny_encoder)
    writer.upsert({"id": "first", "title": "the first text"})  # the index's first text: built
    first = read_snapshot(index)
    structure = next((index / first.ann_dirs["image"]).glob("index-*.faiss")).stat().st_ino
    reader = SearchIndex(index, encoder=tiny_encoder)  # another reader, as a server worker
    recs = [{"id": f"n{i}", "title": row["caption"], "image": str(catalog.root / row["file"])}
            for i, row in enumerate(catalog.rows[300:320])]  # fmt: skip
    writer.upsert(recs)
    snap = read_snapshot(index)
    linked = next((index / snap.ann_dirs["image"]).glob("index-*.faiss"))
    assert linked.stat().st_ino == structure  # the FAISS structure: neither rebuilt nor rewritten
    assert reader.reload() and reader.info()["ann"]["image"]["pending_rows"] == 20
    rows = rows_of(index)
    new = [r for r in rows.values() if r["kind"] == "image" and '"n' in (r["metadata"] or "")]
    assert len(new) == 20
    for row in new:
        assert reader.search_vector(row["vector"], k=1, kind="image")[0].uri == row["uri"]
    writer.delete([f"n{i}" for i in range(5)])
    assert reader.reload()
    doomed = {f"n{i}" for i in range(5)}
    gone = {r["uri"] for r in new if json.loads(r["metadata"])["id"] in doomed}
    assert len(gone) == 5
    for row in new:
        hit = reader.search_vector(row["vector"], k=1, kind="image")[0]
        assert (hit.uri == row["uri"]) == (row["uri"] not in gone)
    rebuild_ann(index)  # build-index merges what waits
    assert reader.reload() and reader.info()["ann"]["image"]["pending_rows"] == 0
    for row in new:
        if row["uri"] not in gone:
            assert reader.search_vector(row["vector"], k=1, kind="image")[0].uri == row["uri"]


def test_images_from_s3_through_the_object_store_client(tmp_path, catalog, tiny_encoder,
                                                       monkeypatch):  # fmt: skip
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ALLOW_HTTP": "true",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_REGION": "us-east-1"}  # fmt: skip
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
        s3.create_bucket(Bucket="shop-images")
        data = (catalog.root / catalog.rows[0]["file"]).read_bytes()
        s3.put_object(Bucket="shop-images", Key="p/1.jpg", Body=data)
        create_index(tmp_path / "i", tiny_encoder.spec, encoder=tiny_encoder)
        idx = SearchIndex(tmp_path / "i", encoder=tiny_encoder)
        report = idx.upsert(
            {"id": "s", "images": ["s3://shop-images/p/1.jpg", "s3://shop-images/none.jpg"]}
        )
        assert report.images.added == 1
        assert [(f[0], f[1]) for f in report.failed] == [
            ("s", "image 1 (s3://shop-images/none.jpg)")
        ]
        assert "NoSuchKey" in report.failed[0][2]
        row = next(r for r in rows_of(tmp_path / "i").values() if r["kind"] == "image")
        assert row["sha256"] == __import__("hashlib").sha256(data).hexdigest()
    finally:
        server.stop()
