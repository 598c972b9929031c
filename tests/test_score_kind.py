"""Scores that say what they are: ``score_kind`` and ``cosine`` on every path.

The library, ``mmsearch query --json`` (and its table) and the HTTP API give each hit
its ``score``, ``score_kind`` (cosine, bm25, relative, rrf, weighted, itm, blend) and,
when the query had a vector, its ``cosine``. Real parts: mmsearch-tiny, LanceDB's
full-text index, FAISS, the mmsearch-tiny-itm re-ranker, FastAPI.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import mmsearch
from mmsearch.cli import app
from mmsearch.datasets.synthetic import generate_catalog
from mmsearch.engine import SearchIndex
from mmsearch.models.spec import ModelSpec
from mmsearch.search.types import SCORE_KINDS
from mmsearch.serve.app import ServerConfig, create_app

runner = CliRunner()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """40 two-object product images with their sidecar (sku, title, caption) and the captions as texts."""
    root = tmp_path_factory.mktemp("scorekind")
    info = generate_catalog(root / "cat", n=40, seed=77, scenes="pairs")
    mmsearch.index(
        [info.root / "images", info.jsonl_path], root / "idx", model=ModelSpec("mmsearch-tiny", ""),
        metadata=info.jsonl_path, text_column="caption", id_column="id", device="cpu",
    )  # fmt: skip
    return {"idx": root / "idx", "rows": info.rows, "root": info.root}


def _kinds(hits: Any) -> set[str]:
    return {h.score_kind if hasattr(h, "score_kind") else h["score_kind"] for h in hits}


def test_library_says_what_each_score_is(shop: dict[str, Any]) -> None:
    idx = SearchIndex(shop["idx"])
    text = str(shop["rows"][3]["caption"])
    vector = idx.search(text, k=5, kind="image", mode="vector")
    assert (
        vector.mode == "vector" and vector.score_kind == "cosine" and _kinds(vector) == {"cosine"}
    )
    assert [h.score for h in vector] == pytest.approx([h.cosine for h in vector], abs=1e-6)
    assert vector[0].similarity == vector[0].cosine  # the former name still answers
    lexical = idx.search(text, k=5, kind="image", mode="lexical")
    assert lexical.score_kind == "bm25" and all(h.cosine is None for h in lexical)
    hybrid = idx.search(text, k=5, kind="image")
    assert (hybrid.mode, hybrid.score_kind) == ("hybrid", "relative")
    assert all(h.cosine is not None for h in hybrid)
    for fusion in ("rrf", "weighted", "relative"):
        assert idx.search(text, k=5, kind="image", fusion=fusion).score_kind == fusion
    # Two kinds are two vector legs: fused even in vector mode.
    assert idx.search(text, k=5, kind="any", mode="vector").score_kind == "relative"
    table = hybrid.to_arrow()
    assert table.column("score_kind").to_pylist() == ["relative"] * 5
    assert table.column("cosine").to_pylist() == pytest.approx([h.cosine for h in hybrid])
    assert set(hybrid.to_list()[0]) >= {"score", "score_kind", "cosine"}
    assert {vector.score_kind, lexical.score_kind, hybrid.score_kind} <= set(SCORE_KINDS)


def test_library_rerank_scores_are_itm_or_blend(shop: dict[str, Any]) -> None:
    idx = SearchIndex(shop["idx"], reranker="mmsearch-tiny-itm")
    text = str(shop["rows"][5]["caption"])
    blended = idx.query().text(text).kind("image").rerank(depth=20).limit(5).results()
    assert blended.score_kind == "blend"  # the model folder recommends a blend
    alone = idx.query().text(text).kind("image").rerank(depth=20, blend=1.0).limit(5).results()
    assert alone.score_kind == "itm" and all(0.0 <= h.score <= 1.0 for h in alone)
    assert all(h.cosine is not None for h in alone)


def test_cli_json_and_table_say_mode_and_score_kind(shop: dict[str, Any]) -> None:
    text = str(shop["rows"][3]["caption"])
    base = ["query", text, "--index", str(shop["idx"]), "--kind", "image", "--top", "3"]
    for extra, kind in (([], "relative"), (["--mode", "vector"], "cosine"),
                        (["--mode", "lexical"], "bm25"), (["--fusion", "rrf"], "rrf")):  # fmt: skip
        done = runner.invoke(app, [*base, *extra, "--json"])
        assert done.exit_code == 0, done.output
        hits = json.loads(done.stdout)
        assert len(hits) == 3 and _kinds(hits) == {kind}, (extra, hits)
        assert all(("cosine" in h) and "similarity" not in h for h in hits)
        assert all((h["cosine"] is None) == (kind == "bm25") for h in hits)
    wide = {"COLUMNS": "250"}  # room for the table's columns beside the long temporary paths
    shown = runner.invoke(app, base, env=wide)
    assert shown.exit_code == 0, shown.output
    assert "mode hybrid · score relative" in shown.stdout and "score (relative)" in shown.stdout
    shown = runner.invoke(app, [*base, "--mode", "vector"], env=wide)
    assert "mode vector · score cosine" in shown.stdout and "score (cosine)" in shown.stdout


def test_http_answers_say_mode_and_score_kind(shop: dict[str, Any]) -> None:
    config = ServerConfig(
        index_dir=shop["idx"], rerank_model="mmsearch-tiny-itm", allowed_hosts=["testserver"]
    )
    client = TestClient(create_app(config))
    text = str(shop["rows"][3]["caption"])
    cases = (({}, "hybrid", "relative"), ({"mode": "vector"}, "vector", "cosine"),
             ({"fusion": "weighted"}, "hybrid", "weighted"), ({"rerank": "true"}, "hybrid", "blend"),
             ({"rerank": "true", "rerank_blend": 1}, "hybrid", "itm"))  # fmt: skip
    for params, mode, kind in cases:
        res = client.get("/api/search", params={"q": text, "kind": "image", "k": 4, **params})
        assert res.status_code == 200, res.text
        body = res.json()
        assert (body["mode"], body["score_kind"]) == (mode, kind), params
        assert _kinds(body["results"]) == {kind} and all(
            h["cosine"] is not None for h in body["results"]
        )
    body = client.post(
        "/api/search", json={"terms": [{"text": text}], "kind": "image", "k": 3}
    ).json()
    assert body["score_kind"] == "relative" and _kinds(body["results"]) == {"relative"}
    data = (shop["root"] / str(shop["rows"][3]["file"])).read_bytes()
    res = client.post("/api/search/image", params={"kind": "image", "k": 3},
                      files={"file": ("q.png", data, "application/octet-stream")})  # fmt: skip
    assert res.status_code == 200, res.text
    body = res.json()
    assert (body["mode"], body["score_kind"]) == ("vector", "cosine")
    hits = body["results"]
    assert np.allclose([h["score"] for h in hits], [h["cosine"] for h in hits], atol=1e-5)
    empty = client.get("/api/search", params={"q": text, "kind": "image", "where": "price < 0"})
    assert empty.json()["results"] == [] and empty.json()["score_kind"] is None
