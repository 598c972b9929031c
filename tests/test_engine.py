"""Query engine: query language, filters, path safety, snapshots and concurrent readers."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index

from mmsearch.engine import SearchIndex
from mmsearch.errors import BadQueryError, IndexNotFoundError, UnsafePathError
from mmsearch.search.language import QueryTerm, parse_query


def _build(tmp_path: Path, catalog, enc, name: str = "idx") -> Path:
    idx = tmp_path / name
    run_index(
        [catalog.root, catalog.jsonl_path],
        idx,
        enc.spec,
        options=IndexOptions(workers=2, batch_size=16, image_metadata=catalog.jsonl_path),
        encoder=enc,
    )
    return idx


@pytest.fixture
def built(tmp_path, small_catalog, fake_encoder):
    return _build(tmp_path, small_catalog, fake_encoder), small_catalog, fake_encoder


def test_parse_query_language(tmp_path):
    img = tmp_path / "ref.png"
    img.write_bytes(b"x")
    terms = parse_query(f'"2:red dress" + {img} - "stripes"')
    assert terms == [
        QueryTerm(2.0, "text", "red dress"),
        QueryTerm(1.0, "image", str(img)),
        QueryTerm(-1.0, "text", "stripes"),
    ]
    assert parse_query("a red t-shirt") == [QueryTerm(1.0, "text", "a red t-shirt")]
    # An unquoted image-looking term is an image even when missing (the engine names the
    # missing file); quoted, it is text.
    assert parse_query("missing.jpg") == [QueryTerm(1.0, "image", "missing.jpg")]
    assert parse_query('"missing.jpg"') == [QueryTerm(1.0, "text", "missing.jpg")]
    for bad in ("", "   ", '"unbalanced', '- "only negative"', "x" * 5000):
        with pytest.raises(BadQueryError):
            parse_query(bad)


def test_weighted_mix_moves_towards_terms(built):
    idx_dir, cat, enc = built
    idx = SearchIndex(idx_dir, encoder=enc)
    a, b = cat.rows[0]["caption"], cat.rows[1]["caption"]
    va, vb = enc.encode_texts([a, b])
    mix = idx.encode_query(f'"3:{a}" + "{b}"')
    assert float(mix @ va) > float(mix @ vb) > 0
    assert np.isclose(np.linalg.norm(mix), 1.0, atol=1e-5)


def test_image_text_and_kind(built):
    idx_dir, cat, enc = built
    idx = SearchIndex(idx_dir, encoder=enc)
    probe = cat.root / cat.rows[3]["file"]
    hits = idx.search(probe, k=5, kind="image")
    assert hits[0].path == str(probe) and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert all(h.kind == "image" for h in hits)
    texts = idx.search(cat.rows[3]["caption"], k=3, kind="text")
    assert texts[0].text == cat.rows[3]["caption"] and all(h.kind == "text" for h in texts)
    mixed = idx.search(cat.rows[3]["caption"], k=200, kind="any")
    assert {h.kind for h in mixed} == {"image", "text"}
    for kind in ("image", "text"):  # the lexical leg keeps to the kind asked for, too
        words = idx.search(cat.rows[3]["caption"], k=5, kind=kind, mode="lexical")
        assert len(words) == 5 and {h.kind for h in words} == {kind}
    both = idx.search(cat.rows[3]["caption"], k=200, kind="any", mode="lexical")
    assert {h.kind for h in both} == {"image", "text"}
    assert [h.rank for h in mixed] == list(range(1, len(mixed) + 1))
    assert all(x.score >= y.score for x, y in zip(mixed, mixed[1:], strict=False))
    from PIL import Image

    arr = np.asarray(Image.open(probe).convert("RGB"))
    assert idx.search(arr, k=1, kind="image")[0].path == str(probe)
    assert idx.search(Image.open(probe), k=1, kind="image")[0].path == str(probe)
    for bad in ({"kind": "video"}, {"k": 0}, {"k": True}):
        with pytest.raises(BadQueryError):
            idx.search("red", **bad)


def test_metadata_filters_are_typed_and_never_widen(built):
    idx_dir, cat, enc = built
    idx = SearchIndex(idx_dir, encoder=enc)
    cheap = idx.search("anything", k=500, where=["price < 20"])
    assert cheap and all(h.metadata["price"] < 20 for h in cheap)
    assert len(cheap) == sum(1 for r in cat.rows if r["price"] < 20) * 2  # image + caption rows
    cat_hits = idx.search(
        "anything", k=500, kind="image", where={"category": "buttons", "price": ("<=", 50)}
    )
    assert cat_hits and all(
        h.metadata["category"] == "buttons" and h.metadata["price"] <= 50 for h in cat_hits
    )
    colours = idx.search("x", k=500, where=["colour in red,blue"])
    assert {h.metadata["colour"] for h in colours} <= {"red", "blue"}
    assert idx.search("x", k=500, where=["category = x' OR 1=1 --"]) == []
    assert idx.search("x", k=500, where={"category": "buttons' OR '1'='1"}) == []
    with pytest.raises(BadQueryError, match="number"):
        idx.search("x", where=["price < cheap"])
    with pytest.raises(BadQueryError, match="cannot filter on"):
        idx.search("x", where=["password = 1"])
    with pytest.raises(BadQueryError, match="cannot filter on"):
        idx.search("x", where=["vector = 1"])
    with pytest.raises(BadQueryError):
        idx.search("x", where=[f"price > {i}" for i in range(40)])
    with pytest.raises(BadQueryError):
        idx.search("x", where=["colour in " + ",".join(str(i) for i in range(500))])
    with pytest.raises(BadQueryError):
        idx.search("x", where=["price; DROP TABLE items"])


def test_image_paths_must_stay_under_allowed_roots(built, tmp_path):
    idx_dir, cat, enc = built
    root = cat.root
    idx = SearchIndex(idx_dir, encoder=enc, image_roots=[root])
    inside = root / cat.rows[0]["file"]
    assert idx.search(inside, k=1)
    outside = tmp_path / "outside.png"
    outside.write_bytes(inside.read_bytes())
    escape = root / "escape.png"
    os.symlink(outside, escape)
    for path in (outside, escape, root / ".." / "outside.png"):
        with pytest.raises(UnsafePathError):
            idx.search(path, k=1)
        with pytest.raises(UnsafePathError):
            idx.search(str(path), k=1)


def test_missing_index_and_no_snapshot(tmp_path, small_catalog, fake_encoder):
    with pytest.raises(IndexNotFoundError, match="mmsearch index"):
        SearchIndex(tmp_path / "nothing", encoder=fake_encoder)
    run_index(
        [small_catalog.root],
        tmp_path / "noann",
        fake_encoder.spec,
        options=IndexOptions(workers=2, build_index=False),
        encoder=fake_encoder,
    )
    with pytest.raises(IndexNotFoundError, match="build-index"):
        SearchIndex(tmp_path / "noann", encoder=fake_encoder)


def test_readers_see_a_consistent_snapshot_while_indexing(tmp_path, fake_encoder):
    """Queries during a re-index run: no errors, every hit resolves to a row."""
    from mmsearch.datasets.synthetic import generate_catalog

    cat = generate_catalog(tmp_path / "cat", n=80, seed=2)
    idx_dir = tmp_path / "idx"
    run_index(
        [cat.root],
        idx_dir,
        fake_encoder.spec,
        options=IndexOptions(workers=2, batch_size=8, commit_every=8),
        encoder=fake_encoder,
    )
    reader = SearchIndex(idx_dir, encoder=fake_encoder)
    first_version = reader.snapshot.table_version
    extra = generate_catalog(tmp_path / "cat" / "more", n=60, seed=3)
    errors: list[BaseException] = []
    seen_versions: set[int] = set()
    done = threading.Event()
    started = threading.Barrier(4)  # three readers + this thread

    def query_loop() -> None:
        started.wait(30)
        probe = cat.root / cat.rows[0]["file"]
        while not done.is_set():
            try:
                reader.reload()
                hits = reader.search(probe, k=10, kind="image")
                assert len(hits) == 10
                assert all(h.uri and h.kind == "image" for h in hits)
                assert hits[0].path == str(probe)
                seen_versions.add(reader.snapshot.table_version)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
                return

    threads = [threading.Thread(target=query_loop) for _ in range(3)]
    for t in threads:
        t.start()
    started.wait(30)
    report = run_index(
        [cat.root],
        idx_dir,
        fake_encoder.spec,
        options=IndexOptions(workers=2, batch_size=8, commit_every=8),
        encoder=fake_encoder,
    )
    done.set()
    for t in threads:
        t.join(60)
    assert errors == []
    assert report.added == extra.n
    reader.reload()
    assert reader.snapshot.table_version > first_version
    assert len(reader.search("x", k=1000, kind="image", mode="vector")) == 80 + 60
    assert first_version in seen_versions


def test_csv_sidecar_metadata_is_typed_for_filters(tmp_path, small_catalog, fake_encoder):
    import csv

    sidecar = small_catalog.root / "meta.csv"
    with open(sidecar, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "caption", "price", "sku", "in_stock"])
        writer.writeheader()
        for row in small_catalog.rows:
            writer.writerow(
                {
                    "file": row["file"],
                    "caption": row["caption"],
                    "price": row["price"],
                    "sku": "007",
                    "in_stock": "true",
                }
            )
    idx = tmp_path / "idx"
    run_index(
        [small_catalog.root],
        idx,
        fake_encoder.spec,
        options=IndexOptions(workers=2, image_metadata=sidecar),
        encoder=fake_encoder,
    )
    engine = SearchIndex(idx, encoder=fake_encoder)
    hits = engine.search("x", k=500, where=["price < 20", "in_stock = true"])
    assert hits and all(
        isinstance(h.metadata["price"], float) and h.metadata["price"] < 20 for h in hits
    )
    assert len(hits) == sum(1 for r in small_catalog.rows if r["price"] < 20)
    assert hits[0].metadata["sku"] == "007"  # leading zeros: stays text
