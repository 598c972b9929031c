"""--rerank end to end: a real two-object index (mmsearch-tiny, LanceDB, FAISS), the CLI and
the server with the shipped mmsearch-tiny-itm re-ranker."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import mmsearch
from mmsearch.cli import app
from mmsearch.datasets.synthetic import generate_catalog
from mmsearch.models.spec import ModelSpec
from mmsearch.serve.app import ServerConfig, create_app

runner = CliRunner()
ABSENT = "a white star to the left of a orange triangle"


@pytest.fixture(scope="module")
def pair_index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """60 two-object images (seed 8080) indexed with their captions as texts."""
    root = tmp_path_factory.mktemp("pairs")
    info = generate_catalog(root / "cat", n=60, seed=8080, scenes="pairs")
    assert all(r["caption"] != ABSENT for r in info.rows)
    idx = root / "idx"
    mmsearch.index(
        [info.root / "images", info.jsonl_path],
        idx,
        model=ModelSpec("mmsearch-tiny", ""),
        metadata=info.jsonl_path,
        text_column="caption",
        id_column="id",
        device="cpu",
    )
    by_file = {os.path.realpath(info.root / str(r["file"])): r for r in info.rows}
    return {"root": info.root, "idx": idx, "rows": info.rows, "by_file": by_file}


def _caption_of(hit: dict[str, Any], pair_index: dict[str, Any]) -> str:
    return str(pair_index["by_file"][os.path.realpath(hit["uri"])]["caption"])


def test_cli_query_rerank(pair_index: dict[str, Any]) -> None:
    target = str(pair_index["rows"][7]["caption"])
    args = ["query", target, "--index", str(pair_index["idx"]), "--kind", "image", "--json"]
    done = runner.invoke(
        app, [*args, "--rerank", "--rerank-model", "mmsearch-tiny-itm", "--top", "3"]
    )
    assert done.exit_code == 0, done.output
    hits = json.loads(done.stdout)
    assert target in [_caption_of(h, pair_index) for h in hits]  # the exact scene, in order
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all(0.0 <= h["score"] <= 1.0 for h in hits)  # match probabilities
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_cli_min_match_empty_answer_and_bad_model(pair_index: dict[str, Any]) -> None:
    base = ["query", ABSENT, "--index", str(pair_index["idx"]), "--kind", "image", "--rerank"]
    done = runner.invoke(app, [*base, "--rerank-model", "mmsearch-tiny-itm", "--min-match", "0.9"])
    assert done.exit_code == 3, done.output  # nothing matched: the CLI's "no results" status
    assert "no results (no good match" in " ".join(done.output.split())
    bad = runner.invoke(app, [*base, "--rerank-model", str(pair_index["root"] / "no-model")])
    assert bad.exit_code != 0
    text = " ".join(bad.output.split())  # the terminal may wrap the one message
    assert text.count("error:") == 1 and "rerank model folder not found" in text, bad.output
    assert "--rerank-model mmsearch-tiny-itm" in text and "Traceback" not in bad.output


def test_server_rerank_both_directions(pair_index: dict[str, Any]) -> None:
    config = ServerConfig(
        index_dir=pair_index["idx"], rerank_model="mmsearch-tiny-itm", allowed_hosts=["testserver"]
    )
    client = TestClient(create_app(config))
    row = pair_index["rows"][11]
    res = client.get(
        "/api/search", params={"q": row["caption"], "kind": "image", "rerank": "true", "k": 3}
    )
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["dropped"] == []  # present only on re-ranked answers
    assert all(0.0 <= h["score"] <= 1.0 for h in body["results"])  # match probabilities
    # The same answer as the library's pipeline with the reranker in its slot.
    lib = mmsearch.open(pair_index["idx"], reranker="mmsearch-tiny-itm")
    library = lib.search(row["caption"], k=3, kind="image", rerank=True)
    assert [h["id"] for h in body["results"]] == [h.id for h in library]
    assert [h["score"] for h in body["results"]] == pytest.approx(
        [h.score for h in library], rel=1e-5
    )
    built = lib.query().text(row["caption"]).kind("image").rerank(depth=50).limit(3).results()
    assert [h.id for h in built] == [h.id for h in library]
    # rerank_blend 0 keeps the first stage's order; 1 is the match probability alone.
    plain = client.get("/api/search", params={"q": row["caption"], "kind": "image", "k": 3})
    first_only = client.get(
        "/api/search",
        params={"q": row["caption"], "kind": "image", "rerank": "true", "rerank_blend": 0, "k": 3},
    )
    assert [h["id"] for h in first_only.json()["results"]] == [
        h["id"] for h in plain.json()["results"]
    ]
    alone = lib.query().text(row["caption"]).kind("image").rerank(blend=1.0).limit(3).results()
    match_only = client.get(
        "/api/search",
        params={"q": row["caption"], "kind": "image", "rerank": "true", "rerank_blend": 1, "k": 3},
    )
    assert [h["id"] for h in match_only.json()["results"]] == [h.id for h in alone]
    data = (pair_index["root"] / str(row["file"])).read_bytes()
    res = client.post(
        "/api/search/image",
        params={"kind": "text", "rerank": "true", "k": 3},
        files={"file": ("q.png", data, "application/octet-stream")},
    )
    assert res.status_code == 200, res.text
    hits = res.json()["results"]
    assert res.json()["dropped"] == [] and [h["kind"] for h in hits] == ["text"] * 3
    assert row["caption"] in [h["text"] for h in hits]  # its own caption among the top 3
    empty = client.get(
        "/api/search", params={"q": ABSENT, "kind": "image", "rerank": "true", "min_match": 0.9}
    )
    assert empty.status_code == 200 and empty.json()["results"] == []
    assert empty.json()["reason"]  # the pipeline says why the answer is empty


def test_recorded_rerank_model_is_used_only_when_recorded(
    pair_index: dict[str, Any], tmp_path
) -> None:  # noqa: ANN001
    from mmsearch.errors import IndexCorruptError
    from mmsearch.rerank.config import RERANK_CONFIG_FILE, record_rerank_model, rerank_model_for

    assert rerank_model_for(tmp_path, None) == "Salesforce/blip-itm-base-coco"
    assert rerank_model_for(tmp_path, "x") == "x"
    (tmp_path / RERANK_CONFIG_FILE).write_text("{not json")
    with pytest.raises(IndexCorruptError):
        rerank_model_for(tmp_path, None)
    idx = pair_index["idx"]
    record_rerank_model(idx, "mmsearch-tiny-itm")
    try:
        target = str(pair_index["rows"][3]["caption"])
        args = ["query", target, "--index", str(idx), "--kind", "image", "--json", "--rerank"]
        recorded = runner.invoke(app, args)
        explicit = runner.invoke(app, [*args, "--rerank-model", "mmsearch-tiny-itm"])
        assert recorded.exit_code == 0 and explicit.exit_code == 0, recorded.output
        assert json.loads(recorded.stdout) == json.loads(explicit.stdout)
        plain = runner.invoke(app, args[:-1])  # without --rerank: cosine scores, not the same
        assert json.loads(plain.stdout) != json.loads(recorded.stdout)
    finally:
        (idx / RERANK_CONFIG_FILE).unlink()


def test_library_rerank_gives_the_cli_answer(pair_index: dict[str, Any]) -> None:
    """``search(rerank=True)`` loads the re-ranker exactly as ``query --rerank`` does: the
    model named, else the one recorded in the index; same hits, same scores."""
    from mmsearch.rerank.config import RERANK_CONFIG_FILE, record_rerank_model

    idx = pair_index["idx"]
    target = str(pair_index["rows"][21]["caption"])
    # --backend torch: the library's model runtime (the CLI's default, auto, may pick ONNX)
    args = ["query", target, "--index", str(idx), "--kind", "image", "--json", "--rerank"]
    args += ["--backend", "torch"]
    named = runner.invoke(app, [*args, "--rerank-model", "mmsearch-tiny-itm", "--top", "5"])
    assert named.exit_code == 0, named.output
    lib = mmsearch.open(idx, reranker="mmsearch-tiny-itm")
    assert json.loads(named.stdout) == lib.search(target, k=5, kind="image", rerank=True).to_list()
    record_rerank_model(idx, "mmsearch-tiny-itm")
    try:
        recorded = runner.invoke(app, [*args, "--top", "5"])
        assert recorded.exit_code == 0, recorded.output
        plain = mmsearch.open(idx)  # no re-ranker given: the recorded one, on first use
        assert plain.reranker is None
        answer = plain.search(target, k=5, kind="image", rerank=True).to_list()
        assert json.loads(recorded.stdout) == answer == json.loads(named.stdout)
        assert plain.reranker is not None
    finally:
        (idx / RERANK_CONFIG_FILE).unlink()
    # Nothing named or recorded: both try the default model (not in this machine's cache)
    # and fail with the same one-line error.
    failed = runner.invoke(app, [*args, "--top", "5"])
    assert failed.exit_code == 2 and "Salesforce/blip-itm-base-coco" in failed.output
    with pytest.raises(mmsearch.MMSearchError, match="Salesforce/blip-itm-base-coco"):
        mmsearch.open(idx).search(target, k=5, kind="image", rerank=True)
