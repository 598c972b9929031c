"""Indexing pipeline: counts, alignment, incremental mark-and-sweep, text collections."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from mmsearch.indexer.decode import decode_file
from mmsearch.indexer.discover import path_to_uri, uri_to_path
from mmsearch.indexer.pipeline import IndexOptions, run_index

from mmsearch.engine import SearchIndex
from mmsearch.errors import ModelMismatchError
from mmsearch.models.spec import ModelSpec
from mmsearch.storage.table import ItemStore

OPTS = IndexOptions(workers=2, batch_size=16, commit_every=32)


def _index(paths, index_dir, enc, **kw):
    opts = IndexOptions(**{**OPTS.__dict__, **kw})
    return run_index(paths, index_dir, enc.spec, options=opts, encoder=enc)


def _image_files(catalog) -> list[Path]:
    return sorted(catalog.root / row["file"] for row in catalog.rows)


def _assert_rows_match_files(index_dir: Path, enc) -> None:
    """Every row's vector is a fresh embedding of its own file; ids and uris unique."""
    store = ItemStore.open(index_dir)
    tbl = store.scan(["id", "uri", "kind", "vector"], "kind = 'image'")
    ids = tbl.column("id").to_pylist()
    uris = tbl.column("uri").to_pylist()
    assert len(set(ids)) == len(ids)
    assert len(set(uris)) == len(uris)
    from mmsearch.storage.schema import fixed_list_to_numpy

    vecs = fixed_list_to_numpy(tbl.column("vector"), store.dim)
    fresh = enc.encode_images(
        np.stack([decode_file(uri_to_path(u), enc.image_size)[0] for u in uris])
    )
    np.testing.assert_allclose(vecs, fresh, atol=1e-5)


def test_index_counts_and_alignment(tmp_path, small_catalog, fake_encoder):
    report = _index([small_catalog.root], tmp_path / "idx", fake_encoder)
    assert report.added == small_catalog.n
    assert report.failed == 0 and report.deleted == 0 and report.updated == 0
    assert ItemStore.open(tmp_path / "idx").count() == small_catalog.n
    _assert_rows_match_files(tmp_path / "idx", fake_encoder)
    failures = Path(report.report_path)
    assert failures.is_file() and failures.read_text() == ""


def test_schema_stamped_with_model(tmp_path, small_catalog, fake_encoder):
    _index([small_catalog.root], tmp_path / "idx", fake_encoder)
    store = ItemStore.open(tmp_path / "idx")
    assert store.model_spec == fake_encoder.spec
    assert store.dim == fake_encoder.dim
    with pytest.raises(ModelMismatchError, match="fake-test"):
        store.check_model(ModelSpec("mmsearch-tiny", ""))


def test_incremental_reindex_delete_and_update(tmp_path, small_catalog, fake_encoder):
    idx = tmp_path / "idx"
    _index([small_catalog.root], idx, fake_encoder)
    again = _index([small_catalog.root], idx, fake_encoder)
    assert (again.embedded, again.added, again.updated, again.deleted) == (0, 0, 0, 0)
    assert again.unchanged == small_catalog.n

    files = _image_files(small_catalog)
    deleted = files[:3]
    for path in deleted:
        path.unlink()
    rewritten = files[3:5]
    for path, donor in zip(rewritten, files[10:12], strict=True):
        shutil.copyfile(donor, path)  # new content, new mtime
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    ids_before = {r["uri"]: r["id"] for r in ItemStore.open(idx).scan(["uri", "id"]).to_pylist()}

    third = _index([small_catalog.root], idx, fake_encoder)
    assert (third.deleted, third.updated, third.added, third.embedded) == (3, 2, 0, 2)
    store = ItemStore.open(idx)
    assert store.count() == small_catalog.n - 3
    after = {r["uri"]: r["id"] for r in store.scan(["uri", "id"]).to_pylist()}
    for path in rewritten:  # an updated file keeps its id
        assert after[path_to_uri(str(path))] == ids_before[path_to_uri(str(path))]
    _assert_rows_match_files(idx, fake_encoder)

    engine = SearchIndex(idx, encoder=fake_encoder)
    gone = {path_to_uri(str(p)) for p in deleted}
    for path in files[5:15]:
        hits = engine.search(path, k=small_catalog.n)
        assert not gone & {h.uri for h in hits}
        assert hits[0].uri == path_to_uri(str(path)) or hits[0].score == pytest.approx(
            1.0, abs=1e-5
        )


def test_missing_root_aborts_sweep(tmp_path, small_catalog, fake_encoder):
    idx = tmp_path / "idx"
    _index([small_catalog.root], idx, fake_encoder)
    moved = tmp_path / "unmounted"
    small_catalog.root.rename(moved)
    report = _index([small_catalog.root], idx, fake_encoder)
    assert report.deleted == 0
    assert report.sweep_aborted
    assert ItemStore.open(idx).count() == small_catalog.n


def test_bad_files_skipped_and_reported(tmp_path, fake_encoder):
    from mmsearch.datasets.synthetic import generate_catalog

    cat = generate_catalog(tmp_path / "cat", n=40, seed=3, corrupt=3)
    report = _index([cat.root], tmp_path / "idx", fake_encoder)
    assert report.added == 40
    assert report.failed == 3
    assert {Path(f.path).resolve() for f in report.failures} == {
        Path(p).resolve() for p in cat.corrupt_files
    }
    lines = [json.loads(x) for x in Path(report.report_path).read_text().splitlines()]
    assert len(lines) == 3 and all(x["reason"] and x["exc_class"] for x in lines)
    _assert_rows_match_files(tmp_path / "idx", fake_encoder)


def test_text_collection_indexing(tmp_path, small_catalog, fake_encoder):
    idx = tmp_path / "idx"
    report = _index([small_catalog.jsonl_path], idx, fake_encoder)
    assert report.added == small_catalog.n and report.failed == 0
    again = _index([small_catalog.jsonl_path], idx, fake_encoder)
    assert again.embedded == 0 and again.unchanged == small_catalog.n
    engine = SearchIndex(idx, encoder=fake_encoder)
    caption = small_catalog.rows[5]["caption"]
    hits = engine.search(caption, k=3, kind="text")
    assert hits[0].text == caption
    assert hits[0].metadata["sku"] == small_catalog.rows[5]["sku"] or hits[0].text == caption

    # rewrite the collection without its first 4 rows and one caption changed
    rows = [json.loads(x) for x in small_catalog.jsonl_path.read_text().splitlines()]
    rows = rows[4:]
    rows[0]["caption"] = "a black star on the top"
    small_catalog.jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    third = _index([small_catalog.jsonl_path], idx, fake_encoder)
    assert (third.deleted, third.updated, third.added) == (4, 1, 0)


def test_model_mismatch_on_reindex(tmp_path, small_catalog, fake_encoder):
    from tests.conftest import FakeEncoder

    _index([small_catalog.root], tmp_path / "idx", fake_encoder)
    other = FakeEncoder(name="other-model")
    with pytest.raises(ModelMismatchError, match="other-model"):
        _index([small_catalog.root], tmp_path / "idx", other)
    with pytest.raises(ModelMismatchError):
        SearchIndex(tmp_path / "idx", encoder=other)


def test_empty_root_with_indexed_files_aborts_sweep(tmp_path, small_catalog, fake_encoder):
    """An unmounted mount point shows as an empty folder: nothing is deleted."""
    idx = tmp_path / "idx"
    _index([small_catalog.root], idx, fake_encoder)
    shutil.rmtree(small_catalog.root)
    small_catalog.root.mkdir()
    report = _index([small_catalog.root], idx, fake_encoder)
    assert report.deleted == 0 and report.sweep_aborted
    assert ItemStore.open(idx).count() == small_catalog.n


def test_non_utf8_file_name_is_stored_and_found_again(tmp_path, small_catalog, fake_encoder):
    src = small_catalog.root / small_catalog.rows[0]["file"]
    raw_dir = os.fsencode(tmp_path / "odd")
    os.mkdir(raw_dir)
    raw_name = raw_dir + b"/caf\xe9-100%.png"  # latin-1 byte: not valid UTF-8
    with open(raw_name, "wb") as fh:
        fh.write(src.read_bytes())
    report = _index([os.fsdecode(raw_dir)], tmp_path / "idx", fake_encoder)
    assert report.added == 1 and report.failed == 0
    engine = SearchIndex(tmp_path / "idx", encoder=fake_encoder)
    hit = engine.search(os.fsdecode(raw_name), k=1)[0]
    assert os.fsencode(hit.path) == raw_name
    assert open(hit.path, "rb").read() == src.read_bytes()
    again = _index([os.fsdecode(raw_dir)], tmp_path / "idx", fake_encoder)
    assert again.unchanged == 1 and again.embedded == 0 and again.deleted == 0


def test_bad_text_rows_reported_with_row_numbers(tmp_path, fake_encoder):
    path = tmp_path / "titles.csv"
    path.write_text(
        "id,title,price\n"
        "a1,red floral shirt,10\n"
        "a2,,12\n"  # empty text
        "a3,blue jeans,30,extra\n"  # wrong field count
        "a1,duplicate id,5\n"
        "a4,green hat,7\n",
        encoding="utf-8",
    )
    report = _index([path], tmp_path / "idx", fake_encoder)
    assert report.added == 2
    rows = sorted(f.row_number for f in report.failures)
    assert rows == [2, 3, 4]
    assert all(f.path == str(path) and f.reason for f in report.failures)
    store = ItemStore.open(tmp_path / "idx")
    texts = sorted(store.scan(["text"]).column("text").to_pylist())
    assert texts == ["green hat", "red floral shirt"]


def test_second_writer_is_refused(tmp_path, small_catalog, fake_encoder):
    from mmsearch.errors import StorageError
    from mmsearch.storage.locks import index_write_lock

    idx = tmp_path / "idx"
    with index_write_lock(idx):  # as if another process were indexing
        with pytest.raises(StorageError, match="another mmsearch process"):
            _index([small_catalog.root], idx, fake_encoder)
    assert _index([small_catalog.root], idx, fake_encoder).added == small_catalog.n
