"""The rows file lets queries skip LanceDB; without it the engine reads the table."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmsearch.indexer.ann_build import build_ann
from mmsearch.indexer.pipeline import IndexOptions, run_index
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.engine import SearchIndex
from mmsearch.errors import IndexCorruptError
from mmsearch.maintenance.info import check_index, index_info
from mmsearch.storage.rowsfile import read_rows_file, rows_file_path
from mmsearch.storage.snapshot import read_snapshot
from mmsearch.storage.table import ItemStore


@pytest.fixture
def indexed(tmp_path: Path, small_catalog, fake_encoder) -> Path:
    index_dir = tmp_path / "index"
    opts = IndexOptions(workers=1, batch_size=16)
    run_index(
        [small_catalog.image_dir], index_dir, fake_encoder.spec, options=opts, encoder=fake_encoder
    )
    return index_dir


def test_rows_file_matches_table_and_fallback_gives_same_hits(indexed: Path, fake_encoder) -> None:
    snapshot = read_snapshot(indexed)
    path = rows_file_path(indexed, snapshot)
    table, spec, dim = read_rows_file(path)
    assert spec == fake_encoder.spec and dim == fake_encoder.dim
    assert table.column("id").to_pylist() == sorted(
        ItemStore.open(indexed).scan(["id"]).column("id").to_pylist()
    )
    with_file = SearchIndex(indexed, encoder=fake_encoder).search("a red circle", k=5)
    assert (
        with_file and SearchIndex(indexed, encoder=fake_encoder).current._store is None
    )  # LanceDB untouched
    path.unlink()
    without = SearchIndex(indexed, encoder=fake_encoder).search("a red circle", k=5)
    assert [(h.id, h.uri, h.metadata) for h in with_file] == [
        (h.id, h.uri, h.metadata) for h in without
    ]


def test_rebuild_replaces_rows_file_and_info_matches_engine(indexed: Path, fake_encoder) -> None:
    old = rows_file_path(indexed, read_snapshot(indexed))
    store = ItemStore.open(indexed)
    build_ann(store, store.model_spec, retrain=True)
    new = rows_file_path(indexed, read_snapshot(indexed))
    assert new != old and new.exists() and not old.exists()
    info = index_info(indexed)
    engine = SearchIndex(indexed, encoder=fake_encoder).info()
    for key in ("model", "dim", "rows", "table_version", "stale"):
        assert info[key] == engine[key], key
    assert info["ann"]["image"]["n"] == engine["ann"]["image"]["n"]


def test_check_finds_a_flipped_byte_that_open_does_not(indexed: Path, fake_encoder) -> None:
    assert check_index(indexed) == {"image": 60}
    ann_dir = read_snapshot(indexed).ann_path(indexed, "image")
    vectors = next(ann_dir.glob("vectors-*.f32"))
    data = bytearray(vectors.read_bytes())
    data[len(data) // 2] ^= 0x01
    vectors.write_bytes(bytes(data))
    SearchIndex(indexed, encoder=fake_encoder)  # cheap open: sizes and ids still match
    with pytest.raises(IndexCorruptError, match="SHA-256"):
        check_index(indexed)
    result = CliRunner().invoke(app, ["check", "--index", str(indexed)])
    assert result.exit_code == 2 and "SHA-256" in result.output
