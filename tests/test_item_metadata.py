"""One metadata vocabulary for images and texts (``file``, ``id``), old indexes included."""

from __future__ import annotations

import json

import pyarrow as pa
from mmsearch.indexer.ann_build import build_ann
from mmsearch.indexer.pipeline import IndexOptions, run_index

from mmsearch.engine import SearchIndex
from mmsearch.storage.table import ItemStore


def _metadata_by_kind(index_dir) -> dict[str, list[dict]]:
    tbl = ItemStore.open(index_dir).scan(["kind", "metadata"])
    out: dict[str, list[dict]] = {"image": [], "text": []}
    for kind, meta in zip(
        tbl.column("kind").to_pylist(), tbl.column("metadata").to_pylist(), strict=True
    ):
        out[kind].append(json.loads(meta))
    return out


def test_images_and_texts_share_file_and_id(tmp_path, small_catalog, fake_encoder):
    opts = IndexOptions(workers=1, image_metadata=small_catalog.jsonl_path, build_index=False)
    run_index(
        [small_catalog.root, small_catalog.jsonl_path],
        tmp_path / "idx",
        fake_encoder.spec,
        options=opts,
        encoder=fake_encoder,
    )
    rows = {r["file"]: r for r in small_catalog.rows}
    by_kind = _metadata_by_kind(tmp_path / "idx")
    assert len(by_kind["image"]) == len(by_kind["text"]) == small_catalog.n
    for kind, metas in by_kind.items():
        for meta in metas:
            assert "filename" not in meta and "row_id" not in meta, (kind, meta)
            assert meta["id"] == rows[meta["file"]]["id"], (kind, meta)  # same words, same values


def test_plain_folder_images_get_their_relative_path(tmp_path, small_catalog, fake_encoder):
    run_index(
        [small_catalog.root / "images"],
        tmp_path / "idx",
        fake_encoder.spec,
        options=IndexOptions(workers=1, build_index=False),
        encoder=fake_encoder,
    )
    files = {m["file"] for m in _metadata_by_kind(tmp_path / "idx")["image"]}
    assert files == {r["file"].removeprefix("images/") for r in small_catalog.rows}


def test_old_indexes_read_in_the_new_vocabulary(tmp_path, small_catalog, fake_encoder):
    idx = tmp_path / "idx"
    opts = IndexOptions(workers=1, build_index=False)
    run_index(
        [small_catalog.root, small_catalog.jsonl_path],
        idx,
        fake_encoder.spec,
        options=opts,
        encoder=fake_encoder,
    )
    store = ItemStore.open(idx)
    table = store.scan(store.table.schema.names)
    legacy = []
    for kind, meta in zip(
        table.column("kind").to_pylist(), table.column("metadata").to_pylist(), strict=True
    ):
        meta = json.loads(meta)
        if kind == "image":  # as written before: the base name under "filename"
            meta = {"filename": meta.pop("file").rsplit("/", 1)[-1], **meta}
        else:
            meta = {"row_id": meta.pop("id"), **meta}
        legacy.append(json.dumps(meta))
    store.upsert(
        table.set_column(
            table.schema.get_field_index("metadata"), "metadata", pa.array(legacy, pa.string())
        )
    )
    build_ann(store, store.model_spec)
    assert (
        '"row_id"'
        in ItemStore.open(idx).scan(["metadata"], "kind = 'text'").column("metadata")[0].as_py()
    )

    engine = SearchIndex(idx, encoder=fake_encoder)
    row = small_catalog.rows[3]
    hits = engine.search(row["caption"], k=5, kind="text", where=[f"id = {row['id']}"])
    assert [h.metadata["id"] for h in hits] == [row["id"]]
    assert "row_id" not in hits[0].metadata
    image = engine.search(small_catalog.root / row["file"], k=1, kind="image")[0]
    assert (
        image.metadata["file"] == row["file"].rsplit("/", 1)[-1]
        and "filename" not in image.metadata
    )
