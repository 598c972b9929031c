"""The engine end to end with the fake encoder: missing image terms, fair kind=any, paging,
the shared k cap, incremental full-text upkeep, and the JSON search API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mmsearch.indexer.pipeline import IndexOptions, run_index

from mmsearch.engine import SearchIndex
from mmsearch.errors import BadQueryError
from mmsearch.search.types import MAX_K
from mmsearch.serve.app import ServerConfig, create_app
from mmsearch.storage.table import ItemStore


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    from mmsearch.datasets.synthetic import generate_catalog
    from tests.conftest import FakeEncoder

    root = tmp_path_factory.mktemp("mixed")
    cat = generate_catalog(root / "cat", n=40, seed=5, image_size=32)
    enc = FakeEncoder()
    opts = IndexOptions(workers=1, batch_size=32, image_metadata=cat.jsonl_path)
    run_index(
        [cat.root / "images", cat.jsonl_path], root / "idx", enc.spec, options=opts, encoder=enc
    )
    return SearchIndex(root / "idx", encoder=enc), cat, enc


def test_missing_image_term_names_the_file(mixed, tmp_path) -> None:
    idx, cat, _ = mixed
    missing = tmp_path / "nope" / "ref.jpg"
    with pytest.raises(BadQueryError, match=f"image not found: {missing}"):
        idx.search(f"red + {missing}")
    with pytest.raises(BadQueryError, match="image not found: holiday.png"):
        idx.search("holiday.png")
    assert idx.search('"holiday.png"', mode="vector")  # quoted: text
    with pytest.raises(BadQueryError, match="https://example.com/a.jpg"):
        idx.search("https://example.com/a.jpg")
    assert idx.search(cat.root / cat.rows[0]["file"], k=1, kind="image")[0].score == pytest.approx(
        1.0, abs=1e-4
    )


def test_kind_any_ranks_both_kinds(mixed) -> None:
    idx, cat, _ = mixed
    caption = cat.rows[0]["caption"]
    # A caption's text→text cosine is 1.0 for every row with that caption; without
    # per-kind fusion the top of a mixed answer is only texts.
    for mode in ("vector", "hybrid"):
        top = idx.search(caption, k=2, mode=mode)
        assert {h.kind for h in top} == {"image", "text"}, mode
    assert idx.search(caption, k=2, kind="text", mode="vector")[0].score == pytest.approx(
        1.0, abs=1e-4
    )


def test_offset_pages_and_shared_k_cap(mixed) -> None:
    idx, _, _ = mixed
    for mode in ("vector", "hybrid", "lexical"):
        whole = [h.id for h in idx.search("red circle", k=12, mode=mode)]
        page = idx.search("red circle", k=4, offset=4, mode=mode)
        assert [h.id for h in page] == whole[4:8] and [h.rank for h in page] == [5, 6, 7, 8], mode
    with pytest.raises(BadQueryError, match=str(MAX_K)):
        idx.search("red", k=MAX_K + 1)
    assert idx.search("red", k=MAX_K, mode="vector", kind="image")  # the cap itself is allowed


def test_api_post_and_get_share_the_query_object(mixed) -> None:
    idx, cat, enc = mixed
    client = TestClient(
        create_app(ServerConfig(index_dir=idx.index_dir, encoder=enc, allowed_hosts=["testserver"]))
    )
    body = {
        "terms": [{"text": "Levi's 501 - circle"}, {"text": "red", "weight": -1}],
        "where": {"price": ["<", 100], "shape": ["circle", "star"]},
        "mode": "hybrid",
        "group_by": "sku",
        "k": 5,
    }
    res = client.post("/api/search", json=body)
    assert res.status_code == 200, res.text
    out = res.json()
    assert out["mode"] == "hybrid" and set(out["timings"]) >= {
        "encode",
        "retrieve",
        "fuse",
        "shape",
    }
    skus = [h["metadata"]["sku"] for h in out["results"]]
    assert len(skus) == len(set(skus)) and all(h["metadata"]["price"] < 100 for h in out["results"])
    got = client.get(
        "/api/search", params={"q": "red circle", "mode": "lexical", "k": 3, "offset": 1}
    ).json()
    assert [h["rank"] for h in got["results"]] == [2, 3, 4]
    for bad in ({"terms": [{"text": "a", "image": "b.png"}]}, {"q": "x", "k": MAX_K + 1}, {"q": "x", "nope": 1},
                {"q": "x", "mode": "fuzzy"}):  # fmt: skip
        assert client.post("/api/search", json=bad).status_code == 422, bad
    assert client.get("/api/search", params={"q": "x", "k": MAX_K + 1}).status_code == 422
    # Nothing to search: the schema says a body needs q or a term, so it is a 422.
    assert client.post("/api/search", json={"terms": []}).status_code == 422
    # No re-ranking model recorded and none reachable: one clear error, not a crash.
    res = client.post("/api/search", json={"q": "red", "rerank": True})
    assert res.status_code == 503 and res.json()["type"] == "RerankModelError", res.text


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_incremental_reindex_keeps_the_full_text_index_current(tmp_path, fake_encoder) -> None:
    rows = [
        {"id": f"r{i}", "caption": f"plain item number {i}", "sku": f"SKU-{i:05d}"}
        for i in range(30)
    ]
    rows[3]["caption"] = "a zanzibar lamp"
    path = tmp_path / "items.jsonl"
    _write_jsonl(path, rows)
    idx_dir = tmp_path / "idx"
    run_index([path], idx_dir, fake_encoder.spec, encoder=fake_encoder)
    idx = SearchIndex(idx_dir, encoder=fake_encoder)
    assert idx.snapshot.lexical_index and ItemStore.open(idx_dir).lexical_index_current()
    assert [h.text for h in idx.search("zanzibar", mode="lexical")] == ["a zanzibar lamp"]
    rows[10]["caption"] = "a quokka chair"
    del rows[3]
    _write_jsonl(path, rows)
    report = run_index([path], idx_dir, fake_encoder.spec, encoder=fake_encoder)
    assert (report.deleted, report.updated) == (1, 1)
    assert idx.reload()
    store = ItemStore.open(idx_dir)
    assert store.lexical_index_current() and idx.snapshot.table_version == store.version
    gone = idx.search("zanzibar", mode="lexical")
    assert gone == [] and gone.reason.startswith("no good match")
    assert [h.metadata["sku"] for h in idx.search("quokka", mode="lexical")] == ["SKU-00010"]
    assert [h.metadata["sku"] for h in idx.search("sku-00007", k=1)] == ["SKU-00007"]
    version = store.version
    run_index([path], idx_dir, fake_encoder.spec, encoder=fake_encoder)  # nothing changed
    assert ItemStore.open(idx_dir).version == version
