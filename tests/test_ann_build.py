"""ANN build from the table: incremental adds/deletes into a trained IVF-PQ, retrain, snapshots."""

from __future__ import annotations

import numpy as np
import pytest
from mmsearch.indexer.ann_build import build_ann

from mmsearch.engine import SearchIndex
from mmsearch.models.spec import ModelSpec
from mmsearch.storage.schema import make_rows
from mmsearch.storage.snapshot import read_snapshot
from mmsearch.storage.table import ItemStore
from tests.conftest import FakeEncoder

DIM = 32
SPEC = ModelSpec("fake-test", "")


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    centres = rng.standard_normal((64, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 64, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _put(
    store: ItemStore, ids: np.ndarray, vectors: np.ndarray, tag: str, kind: str = "image"
) -> None:
    n = len(ids)
    store.upsert(
        make_rows(
            ids=ids.tolist(),
            uris=[f"mem://{i}" for i in ids],
            kind=kind,
            texts=[None] * n,
            source="mem",
            mtime_ns=[0] * n,
            sizes=[0] * n,
            sha256=[f"{tag}-{i}" for i in ids],
            metadata=[{}] * n,
            vectors=vectors,
            schema=store.table.schema,
        )
    )


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    s = ItemStore.create(tmp_path / "idx", dim=DIM, spec=SPEC)
    _put(s, np.arange(6000, dtype=np.int64), _unit(rng, 6000), "v1")
    return s


def _engine(store: ItemStore) -> SearchIndex:
    return SearchIndex(store.index_dir, encoder=FakeEncoder(dim=DIM))


def test_incremental_update_keeps_training_and_ids_aligned(store):
    rng = np.random.default_rng(1)
    first = build_ann(store, SPEC, index_type="ivfpq")["image"]
    assert first["type"] == "ivfpq" and first["mode"] == "rebuilt"

    new_ids = np.arange(6000, 6500, dtype=np.int64)
    new_vecs = _unit(rng, 500)
    _put(store, new_ids, new_vecs, "v1")
    changed = np.arange(100, 150, dtype=np.int64)
    changed_vecs = _unit(rng, 50)
    _put(store, changed, changed_vecs, "v2")  # same ids, new content
    deleted = np.arange(1000, 1100, dtype=np.int64)
    store.delete_ids(deleted.tolist())

    second = build_ann(store, SPEC, index_type="auto")["image"]
    assert second["mode"] == "incremental"
    assert second["trained_n"] == first["trained_n"]
    assert second["added_since_train"] == 550
    assert second["n"] == 6000 + 500 - 100

    engine = _engine(store)
    ann = engine.current.ann["image"]
    scores, ids = ann.search(np.concatenate([new_vecs, changed_vecs]), 1)
    assert (ids[:, 0] == np.concatenate([new_ids, changed])).mean() >= 0.95
    _, got = ann.search(_unit(rng, 200), 50, exact=True)
    assert not np.isin(got, deleted).any()
    _, got = ann.search(_unit(rng, 200), 50)
    assert not np.isin(got, deleted).any()
    assert engine.snapshot.table_version == store.version
    assert read_snapshot(store.index_dir).generation == 2


def test_retrain_flag_and_growth_ratio(store):
    rng = np.random.default_rng(2)
    first = build_ann(store, SPEC, index_type="ivfpq")["image"]
    forced = build_ann(store, SPEC, retrain=True)["image"]
    assert forced["mode"] == "rebuilt"
    _put(store, np.arange(6000, 6000 + 7000, dtype=np.int64), _unit(rng, 7000), "v1")  # > 1x growth
    grown = build_ann(store, SPEC)["image"]
    assert grown["n"] == 13000
    assert grown["trained_n"] > first["trained_n"]  # retrained by itself past the ratio
    assert grown["added_since_train"] == 0


def test_killed_before_snapshot_leaves_previous_state(store, monkeypatch):
    build_ann(store, SPEC, index_type="ivfpq")
    before = read_snapshot(store.index_dir)
    _put(store, np.arange(6000, 6100, dtype=np.int64), _unit(np.random.default_rng(3), 100), "v1")

    import mmsearch.indexer.ann_build as ab

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while publishing")

    monkeypatch.setattr(ab, "write_snapshot", crash)
    with pytest.raises(KeyboardInterrupt):
        build_ann(store, SPEC)
    assert read_snapshot(store.index_dir) == before
    engine = _engine(store)  # still opens the previous, complete generation
    assert engine.snapshot == before
    assert len(engine.current.ann["image"]) == 6000
    monkeypatch.undo()
    build_ann(store, SPEC)
    assert len(_engine(store).current.ann["image"]) == 6100


def test_cross_modal_profile_tuned_from_the_other_kind(store):
    """Text vectors sit away from image vectors: their own nprobe/refine are tuned and used."""
    rng = np.random.default_rng(4)
    offset = rng.standard_normal(DIM).astype(np.float32)
    texts = _unit(rng, 800) + 0.8 * offset / np.linalg.norm(offset)
    texts = (texts / np.linalg.norm(texts, axis=1, keepdims=True)).astype(np.float32)
    _put(store, np.arange(10_000, 10_800, dtype=np.int64), texts, "t", kind="text")
    info = build_ann(store, SPEC, index_type="ivfpq")["image"]
    cross = info["profiles"]["cross"]
    assert cross["queries"] == 500 and cross["recall_at_10"] >= 0.9
    ann = _engine(store).current.ann["image"]
    assert ann.info["profiles"] == info["profiles"]  # saved with the index
    _, exact = ann.search(texts[:200], 10, exact=True)
    _, approx = ann.search(texts[:200], 10, profile="cross")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact, strict=True)])
    assert recall >= 0.9


def test_unchanged_table_keeps_the_snapshot(store):
    build_ann(store, SPEC, index_type="ivfpq")
    before = read_snapshot(store.index_dir)
    again = build_ann(store, SPEC)["image"]
    assert again["mode"] == "unchanged"
    assert read_snapshot(store.index_dir) == before  # nothing rewritten
    _put(store, np.arange(6000, 6010, dtype=np.int64), _unit(np.random.default_rng(5), 10), "v1")
    assert build_ann(store, SPEC)["image"]["mode"] == "incremental"
    assert read_snapshot(store.index_dir).generation == before.generation + 1
