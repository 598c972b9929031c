"""Rows waiting beside the ANN structure (record upserts): searched exactly, removed rows
never returned, kept across save/load without rewriting the FAISS file, merged later;
and the rows-file delta a reader applies to its base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mmsearch.ann import VectorIndex
from mmsearch.models.spec import ModelSpec
from mmsearch.search.rows import Rows
from mmsearch.storage.rowsfile import (
    read_rows_file,
    read_rows_parts,
    write_rows_delta,
    write_rows_file,
)


def unit(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("index_type", ["ivfpq", "flat"])
def test_pending_rows_are_searched_and_removed_rows_never_return(tmp_path, index_type):
    x = unit(3000)
    index = VectorIndex.build(x, np.arange(3000, dtype=np.int64), index_type=index_type, seed=0)
    index.save(tmp_path / "a", table_version=1, model_key="m")
    loaded = VectorIndex.load(tmp_path / "a", expect_table_version=1, expect_model_key="m")
    new = unit(20, seed=1)
    changed = unit(5, seed=2)
    loaded.remove_lazily(np.array([7, 8, 9, 10, 11, 3001], np.int64))  # 3001 unknown: ignored
    loaded.add_pending(np.concatenate([new, changed]),
                       np.concatenate([np.arange(5000, 5020), np.arange(7, 12)]).astype(np.int64))  # fmt: skip
    assert loaded.info["pending_rows"] == 25 and len(loaded) == 3020

    def check(ix: VectorIndex) -> None:
        scores, ids = ix.search(new, k=3)
        assert ids[:, 0].tolist() == list(range(5000, 5020))
        scores, ids = ix.search(changed, k=3)  # the row's new vector, once, not the old one
        assert ids[:, 0].tolist() == [7, 8, 9, 10, 11]
        assert all(len(set(row[row >= 0])) == len(row[row >= 0]) for row in ids)
        _, ids = ix.search(x[7:12], k=10)
        assert not np.isin(ids, [3001]).any()
        assert ids[:, 0].tolist() != [7, 8, 9, 10, 11]  # the old vectors are gone

    check(loaded)
    loaded.save(tmp_path / "b", table_version=2, model_key="m")
    if index_type == "ivfpq":  # the structure was not rewritten: the same file, linked
        faiss_files = [p.name for p in (tmp_path / "b").glob("index-*.faiss")]
        assert faiss_files == [p.name for p in (tmp_path / "a").glob("index-*.faiss")]
        assert (tmp_path / "b" / faiss_files[0]).stat().st_ino == (
            tmp_path / "a" / faiss_files[0]
        ).stat().st_ino
    again = VectorIndex.load(tmp_path / "b", expect_table_version=2, expect_model_key="m")
    ivf = index_type == "ivfpq"  # a flat index is filled from the store when it loads
    assert again.info["pending_rows"] == (25 if ivf else 0)
    check(again)
    assert again.merge_pending() == (25 + 5 if ivf else 0)
    assert again.info["waiting_rows"] == 0 and again.info["pending_rows"] == 0
    check(again)
    assert again.merge_pending() == 0


def test_a_changed_row_found_once_in_an_exact_and_a_pending_answer(tmp_path):
    x = unit(3000, seed=3)
    index = VectorIndex.build(x, np.arange(3000, dtype=np.int64), index_type="ivfpq", seed=0)
    index.remove_lazily(np.array([5], np.int64))
    index.add_pending(x[5:6] * 1.0, np.array([5], np.int64))  # same vector, "changed" row
    _, ids = index.search(x[5:6], k=5)
    assert ids[0, 0] == 5 and list(ids[0]).count(5) == 1


class _Store:
    """The two things write_rows_delta asks of a store: its schema and a scan."""

    def __init__(self, table: pa.Table) -> None:
        self.data = table
        self.dim = 4
        self.table = self

    @property
    def schema(self) -> pa.Schema:
        return self.data.schema

    def scan(self, columns, where=None):
        import pyarrow.compute as pc

        table = self.data.select(columns)
        if where is not None:
            ids = [int(i) for i in where[len("id IN (") : -1].split(",")]
            table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(ids, pa.int64())))
        return table


def rows(ids, text):
    return pa.table({"id": pa.array(ids, pa.int64()), "uri": [f"u{i}" for i in ids],
                     "kind": ["text"] * len(ids), "text": [f"{text}{i}" for i in ids],
                     "source": ["s"] * len(ids), "metadata": ["{}"] * len(ids)})  # fmt: skip


def test_rows_delta_applies_to_its_base_and_accumulates(tmp_path: Path):
    spec = ModelSpec("m", "")
    store = _Store(rows(range(10), "old"))
    write_rows_file(store, tmp_path / "rows-g1.arrow", spec)
    store.data = pa.concat_tables([rows([0, 1, 2, 4, 5, 6, 7, 8, 9], "old"), rows([3], "new"),
                                   rows([10, 11], "new")])  # fmt: skip
    base = write_rows_delta(store, tmp_path / "rows-g2.arrow", spec, previous=tmp_path / "rows-g1.arrow",
                            changed=[3, 10, 11], removed=[])  # fmt: skip
    assert base == "rows-g1.arrow"
    store.data = store.data.filter(pa.compute.not_equal(store.data.column("id"), 11))
    store.data = store.data.filter(pa.compute.not_equal(store.data.column("id"), 5))
    write_rows_delta(store, tmp_path / "rows-g3.arrow", spec, previous=tmp_path / "rows-g2.arrow",
                     changed=[], removed=[11, 5])  # fmt: skip
    table, got_spec, dim = read_rows_file(tmp_path / "rows-g3.arrow")
    got = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    assert got == {0: "old0", 1: "old1", 2: "old2", 3: "new3", 4: "old4", 6: "old6", 7: "old7",
                   8: "old8", 9: "old9", 10: "new10"}  # fmt: skip
    assert (got_spec, dim) == (spec, 4)
    # the delta holds only what changed since the base
    delta = pa.ipc.open_file(pa.memory_map(str(tmp_path / "rows-g3.arrow"))).read_all()
    assert sorted(delta.column("id").to_pylist()) == [3, 10]


def typed_rows(ids, text, rng):
    """Rows whose metadata keys vary: a price (float), a brand, a key only some rows have."""
    meta = [json.dumps({"price": float(rng.integers(100)), "brand": f"b{i % 7}",
                        **({"sku": f"SKU-{i:05d}"} if i % 3 == 0 else {})}) for i in ids]  # fmt: skip
    return rows(ids, text).set_column(5, "metadata", pa.array(meta))


@pytest.mark.parametrize("conflict", [False, True])
def test_rows_beside_a_delta_match_the_applied_file_without_copying_the_base(
    tmp_path: Path, conflict: bool
):
    rng = np.random.default_rng(7)
    spec = ModelSpec("m", "")
    ids = np.sort(rng.choice(5000, size=2000, replace=False))
    store = _Store(typed_rows(ids.tolist(), "old", rng))
    write_rows_file(store, tmp_path / "rows-g1.arrow", spec)
    previous = tmp_path / "rows-g1.arrow"
    live = set(ids.tolist())
    for gen in range(2, 6):  # updates, removals and new ids among the old ones, accumulated
        updated = rng.choice(sorted(live), size=30, replace=False).tolist()
        removed = rng.choice(sorted(live - set(updated)), size=20, replace=False).tolist()
        added = rng.choice(sorted(set(range(6000)) - live), size=25, replace=False).tolist()
        live = (live - set(removed)) | set(added)
        keep = store.data.filter(pa.compute.invert(pa.compute.is_in(
            store.data.column("id"), value_set=pa.array(updated + removed, pa.int64()))))  # fmt: skip
        new = typed_rows(updated + added, f"g{gen}-", rng)
        if conflict and gen == 5:  # a price given as text: the key's type changes
            new = new.set_column(5, "metadata", pa.array(['{"price": "cheap"}'] * new.num_rows))
        store.data = pa.concat_tables([keep, new])
        path = tmp_path / f"rows-g{gen}.arrow"
        write_rows_delta(
            store, path, spec, previous=previous, changed=updated + added, removed=removed
        )
        previous = path
    applied = Rows(read_rows_file(previous)[0])
    parts = read_rows_parts(previous)
    base = Rows(parts.base, origin=parts.base_identity())
    base.filterable()  # built once, as an earlier snapshot of the same base would have
    beside = Rows.with_changes(base, parts.changed, parts.dropped)
    assert beside.base is base and base.origin == ("rows-g1.arrow",) + base.origin[1:]
    assert beside.sorted_ids.tolist() == applied.sorted_ids.tolist() == sorted(live)
    asked = np.concatenate([rng.choice(6000, size=500), np.array([-1, 10**9])]).astype(np.int64)
    (got, found), (want, want_found) = beside.take(asked), applied.take(asked)
    assert found.tolist() == want_found.tolist() and got.to_pylist() == want.to_pylist()
    assert beside.kinds_of(asked).tolist() == applied.kinds_of(asked).tolist()
    assert beside.filterable().schema == applied.filterable().schema
    assert beside.filterable().to_pylist() == applied.filterable().to_pylist()
    assert (
        beside.identifier_ids("SKU-00003").tolist() == applied.identifier_ids("sku-00003").tolist()
    )
    # the base rows are the memory-mapped file's own buffers, not a copy
    base_text = parts.base.column("text").chunk(0).buffers()[2].address
    assert beside.table.column("text").chunk(0).buffers()[2].address == base_text
