"""Append-only refine store: new segments, tombstones, hard links, compaction, float16,
streamed builds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mmsearch.ann import VectorIndex, persist
from tests.test_ann_files import D, vectors


def manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def test_update_into_new_directory_links_segments_and_writes_only_new_rows(tmp_path: Path) -> None:
    x, ids = vectors(4000, seed=1), np.arange(4000, dtype=np.int64)
    VectorIndex.build(x, ids, index_type="ivfpq").save(
        tmp_path / "g1", table_version=1, model_key="m"
    )
    index = VectorIndex.load(tmp_path / "g1")
    changed = np.arange(0, 40, dtype=np.int64)  # content change: same ids, new vectors
    new_x = vectors(40, seed=7)
    index.remove(np.concatenate([changed, np.arange(100, 160)]))
    index.add(new_x, changed, retrain=False)
    index.save(tmp_path / "g2", table_version=2, model_key="m")
    m1, m2 = manifest(tmp_path / "g1"), manifest(tmp_path / "g2")
    first = m1["files"]["vectors"]["name"]
    assert m2["files"]["vectors"]["name"] == first
    assert os.stat(tmp_path / "g1" / first).st_ino == os.stat(tmp_path / "g2" / first).st_ino
    assert m2["segments"] == [4000, 40] and m2["files"]["vectors.1"]["size"] == 40 * D * 4
    assert m2["files"]["tombstones"]["size"] == 100 * 8 and m2["n"] == 3940
    for reader in (index, VectorIndex.load(tmp_path / "g2", expect_table_version=2)):
        _, found = reader.search(new_x, 1, exact=True)
        np.testing.assert_array_equal(found[:, 0], changed)  # the new vector, not the old one
        vecs, ok = reader.lookup(changed)
        assert ok.all() and np.allclose(vecs, new_x, atol=1e-6)
        assert not np.isin(reader.search(x[100:160], 10)[1], np.arange(100, 160)).any()
        assert len(reader) == 3940
    # readers of the old directory are unaffected
    old = VectorIndex.load(tmp_path / "g1", expect_table_version=1)
    assert len(old) == 4000 and np.allclose(old.lookup(changed)[0], x[:40], atol=1e-6)


def test_many_dead_rows_compact_into_one_segment(tmp_path: Path) -> None:
    x, ids = vectors(3000, seed=2), np.arange(3000, dtype=np.int64) * 3
    index = VectorIndex.build(x, ids, index_type="ivfpq")
    index.save(tmp_path / "ix", table_version=1, model_key="m")
    index.remove(ids[: int(3000 * persist.COMPACT_DEAD_FRACTION) + 10])
    q = vectors(30, seed=5)
    before = index.search(q, 10, exact=True)
    index.save(tmp_path / "ix", table_version=2, model_key="m")
    m = manifest(tmp_path / "ix")
    assert len(m["segments"]) == 1 and "tombstones" not in m["files"] and m["segments"] == [m["n"]]
    after = VectorIndex.load(tmp_path / "ix").search(q, 10, exact=True)
    np.testing.assert_array_equal(before[1], after[1])


def test_segment_count_stays_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(persist, "MAX_SEGMENTS", 3)
    x = vectors(2500, seed=3)
    index = VectorIndex.build(x[:2000], np.arange(2000, dtype=np.int64), index_type="ivfpq")
    index.save(tmp_path / "ix", table_version=0, model_key="m")
    for step in range(5):
        lo = 2000 + 100 * step
        index.add(x[lo : lo + 100], np.arange(lo, lo + 100, dtype=np.int64), retrain=False)
        index.save(tmp_path / "ix", table_version=step + 1, model_key="m")
        assert len(manifest(tmp_path / "ix")["segments"]) <= 3
    loaded = VectorIndex.load(tmp_path / "ix")
    _, found = loaded.search(x, 1, exact=True)
    np.testing.assert_array_equal(found[:, 0], np.arange(2500))


def test_float16_refine_halves_the_file_and_keeps_recall(tmp_path: Path) -> None:
    x, ids = vectors(20_000, seed=4), np.arange(20_000, dtype=np.int64)
    q = vectors(200, seed=99)
    _, truth = VectorIndex.build(x, ids, index_type="flat").search(q, 10)
    half = VectorIndex.build(x, ids, index_type="ivfpq", refine_dtype="float16", seed=0)
    half.save(tmp_path / "ix", table_version=1, model_key="m")
    m = manifest(tmp_path / "ix")
    assert m["refine_dtype"] == "float16" and m["files"]["vectors"]["size"] == 20_000 * D * 2
    loaded = VectorIndex.load(tmp_path / "ix")
    assert loaded.info["refine_dtype"] == "float16"
    _, found = loaded.search(q, 10)
    recall = np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95
    with pytest.raises(Exception, match="refine dtype"):
        VectorIndex.build(x, ids, refine_dtype="int8")


def test_streamed_build_matches_in_memory_build(tmp_path: Path) -> None:
    x, ids = vectors(5000, seed=6), np.random.default_rng(0).permutation(5000).astype(np.int64) + 7
    chunks = ((x[s : s + 700], ids[s : s + 700]) for s in range(0, 5000, 700))  # unsorted ids
    streamed = VectorIndex.build_streamed(chunks, tmp_path / "ix", index_type="ivfpq", seed=0)
    streamed.save(tmp_path / "ix", table_version=1, model_key="m")
    files = set(os.listdir(tmp_path / "ix"))
    assert sum(n.startswith("vectors-") for n in files) == 1  # the streamed segment, reused
    in_ram = VectorIndex.build(x, ids, index_type="ivfpq", seed=0)
    q = vectors(50, seed=8)
    loaded = VectorIndex.load(tmp_path / "ix")
    np.testing.assert_array_equal(
        loaded.search(q, 10, exact=True)[1], in_ram.search(q, 10, exact=True)[1]
    )
    assert loaded.info["nprobe"] == in_ram.info["nprobe"] and len(loaded) == 5000
    _, own = loaded.search(x[:200], 1, exact=True)
    np.testing.assert_array_equal(own[:, 0], ids[:200])


def test_reader_keeps_working_after_its_files_are_collected(tmp_path: Path) -> None:
    x, ids = vectors(3000, seed=9), np.arange(3000, dtype=np.int64)
    VectorIndex.build(x, ids, index_type="ivfpq").save(
        tmp_path / "g1", table_version=1, model_key="m"
    )
    reader = VectorIndex.load(tmp_path / "g1")
    writer = VectorIndex.load(tmp_path / "g1")
    writer.add(vectors(10, seed=10), np.arange(5000, 5010, dtype=np.int64), retrain=False)
    writer.save(tmp_path / "g2", table_version=2, model_key="m")
    for f in (tmp_path / "g1").iterdir():  # what a snapshot switch's garbage collection does
        f.unlink()
    _, exact = reader.search(x[:20], 1, exact=True)  # sequential reads of unlinked files
    np.testing.assert_array_equal(exact[:, 0], ids[:20])
    assert len(VectorIndex.load(tmp_path / "g2")) == 3010
    # Its FAISS file is gone too: the first change copies the mapped index instead.
    reader.add(vectors(5, seed=11), np.arange(6000, 6005, dtype=np.int64), retrain=False)
    _, top = reader.search(vectors(5, seed=11), 1)
    np.testing.assert_array_equal(top[:, 0], np.arange(6000, 6005))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_large_gathers_read_the_file_and_match_the_map(tmp_path: Path, dtype: str) -> None:
    from mmsearch.ann.segment import GATHER_PREAD_MIN, Segment, write_segment

    n, d = 3 * GATHER_PREAD_MIN, 16
    x = np.random.default_rng(4).normal(size=(n, d)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64) * 3
    vpath, ipath = tmp_path / "v.bin", tmp_path / "i.i64"
    write_segment(vpath, ipath, [(x[: n // 2], ids[: n // 2]), (x[n // 2 :], ids[n // 2 :])], dtype)
    seg = Segment.open(vpath, ipath, n, d, dtype)
    rows = np.random.default_rng(5).integers(0, n, size=GATHER_PREAD_MIN + 7)  # unsorted, repeats
    expect = x.astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(seg.gather(rows, bulk=True), expect[rows])  # pread path
    np.testing.assert_array_equal(seg.gather(rows), expect[rows])  # map path
    np.testing.assert_array_equal(seg.gather(rows[:50], bulk=True), expect[rows[:50]])
