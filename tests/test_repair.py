"""``mmsearch repair`` mends an index broken as two writers that did not see each other
leave it: ids 30-39 given to two items each, and items held by two rows (issue 27,
finding 1), on moto's S3 server on loopback and in a local folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mmsearch.indexer.ann_build import rebuild_ann
from mmsearch.indexer.pipeline import IndexOptions, run_index

from mmsearch.engine import SearchIndex
from mmsearch.errors import IndexCorruptError
from mmsearch.maintenance.info import check_index
from mmsearch.maintenance.repair import repair_index
from mmsearch.storage.objectstore import RemoteIndex
from mmsearch.storage.table import ItemStore
from tests.s3server import BUCKET

REPO = Path(__file__).resolve().parents[1]
URI = f"s3://{BUCKET}/tw"
OPTS = IndexOptions(workers=1, batch_size=16, commit_every=16)


def _folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The first 30 images, and two folders of 10 more (twA, twB), as in the issue."""
    from mmsearch.datasets.synthetic import generate_catalog

    cat = generate_catalog(tmp_path / "catalog", n=50, seed=27)
    images = sorted(p for p in (cat.root / "images").rglob("*") if p.is_file())
    assert len(images) >= 50
    base, tw_a, tw_b = tmp_path / "base", tmp_path / "twA", tmp_path / "twB"
    for folder, start in ((base, 0), (tw_a, 30), (tw_b, 40)):
        folder.mkdir()
        for i in range(start, 30 if start == 0 else start + 10):
            shutil.copy(images[i], folder / f"{i:03d}-{images[i].name}")
    return base, tw_a, tw_b


def break_like_two_writers(index: str | Path, tmp_path: Path, encoder) -> Path:
    """Indexes 30 images, then twA and twB as two writers that both read the highest id
    (29) before either committed, then the same folder twice at once (duplicate rows)."""
    base, tw_a, tw_b = _folders(tmp_path)
    run_index([base], index, encoder.spec, options=OPTS, encoder=encoder)
    run_index([tw_a], index, encoder.spec, options=OPTS, encoder=encoder)
    with (
        pytest.MonkeyPatch.context() as patch,
        pytest.raises(IndexCorruptError, match="repair --index"),
    ):
        patch.setattr(ItemStore, "max_id", lambda self: 29)  # B read the table before A committed
        run_index(
            [tw_b], index, encoder.spec, options=OPTS, encoder=encoder
        )  # rows land, the build fails
    local = (
        RemoteIndex(str(index)).local_dir("writer") if str(index).startswith("s3:") else Path(index)
    )
    store = ItemStore.open(local)
    again = store.scan(store.table.schema.names, f"source = '{_source(store, tw_a)}'")
    store.table.add(again)  # twA indexed on two machines at once: each of its items twice
    return local


def _source(store: ItemStore, folder: Path) -> str:
    return next(s for s in store.sources() if s.endswith(folder.name))


def _assert_mended(store: ItemStore, before: dict[str, np.ndarray]) -> None:
    tbl = store.scan(["id", "uri", "vector"])
    ids, uris = tbl.column("id").to_pylist(), tbl.column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == 50 and len(set(ids)) == 50
    after = dict(zip(uris, tbl.column("vector").to_pylist(), strict=True))
    for uri, vector in before.items():  # nothing embedded again: every item keeps its vector
        np.testing.assert_array_equal(np.asarray(after[uri], np.float32), vector)


def test_repair_mends_an_object_store_index_broken_by_two_writers(
    s3, tmp_path, fake_encoder, monkeypatch
):
    local = break_like_two_writers(URI, tmp_path, fake_encoder)
    store = ItemStore.open(local)
    rows = store.scan(["id", "uri", "vector"])
    assert rows.num_rows == 60 and len(set(rows.column("id").to_pylist())) == 40
    before = {
        u: np.asarray(v, np.float32)
        for u, v in zip(
            rows.column("uri").to_pylist(), rows.column("vector").to_pylist(), strict=True
        )
    }
    with pytest.raises(IndexCorruptError, match=f"mmsearch repair --index {URI}"):
        rebuild_ann(URI, retrain=True)  # as every later build-index did

    dry = repair_index(URI, dry_run=True)
    assert (dry.duplicate_uris, dry.duplicate_ids, dry.rewritten) == (10, 10, False)
    calls = fake_encoder.calls
    env = dict(os.environ, PYTHONPATH=str(REPO), MMSEARCH_CACHE=str(tmp_path / "cache-other"))
    out = subprocess.run(  # from another machine's cache, through the command line
        [sys.executable, "-m", "mmsearch.cli", "repair", "--index", URI, "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "10 duplicate row(s)" in out.stdout and "10 item(s) sharing" in out.stdout
    assert "repaired" in out.stdout and fake_encoder.calls == calls

    _assert_mended(ItemStore.open(local), before)
    assert repair_index(URI).healthy  # a second repair finds nothing
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-reader"))
    reader = SearchIndex(URI, encoder=fake_encoder)
    assert len(reader) == 50 and check_index(URI) == {"image": 50}
    table = reader.store.scan(["id", "vector"])
    for item_id, vector in zip(
        table.column("id").to_pylist()[:50:7],
        table.column("vector").to_pylist()[:50:7],
        strict=True,
    ):
        assert reader.search_vector(np.asarray(vector, np.float32), k=1)[0].id == item_id


def test_repair_mends_a_local_index_and_reports_a_stale_ann(tmp_path, fake_encoder):
    index = tmp_path / "idx"
    break_like_two_writers(index, tmp_path, fake_encoder)
    store = ItemStore.open(index)
    rows = store.scan(["uri", "vector"])
    before = {
        u: np.asarray(v, np.float32)
        for u, v in zip(
            rows.column("uri").to_pylist(), rows.column("vector").to_pylist(), strict=True
        )
    }
    report = repair_index(index)
    assert (
        report.rewritten
        and report.rebuilt
        and (report.duplicate_uris, report.duplicate_ids) == (10, 10)
    )
    _assert_mended(ItemStore.open(index), before)
    assert check_index(index) == {"image": 50}

    # ANN files out of step with the table: a damaged refine file
    from mmsearch.storage.snapshot import read_snapshot

    snap = read_snapshot(index)
    ids_file = next((index / snap.ann_dirs["image"]).glob("ids-*.i64"))
    data = bytearray(ids_file.read_bytes())
    data[:8] = (10**9).to_bytes(8, "little")
    ids_file.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError):
        check_index(index)
    found = repair_index(index)
    assert found.ann_problem and found.rebuilt and not found.rewritten
    assert check_index(index) == {"image": 50}
