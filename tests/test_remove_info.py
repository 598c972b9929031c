"""``mmsearch remove PATH...`` and what ``mmsearch info`` tells about an index."""

from __future__ import annotations

import json

import pytest
from mmsearch.indexer.discover import path_to_uri
from mmsearch.indexer.pipeline import IndexOptions, run_index
from typer.testing import CliRunner

from mmsearch.cli import app
from mmsearch.engine import SearchIndex
from mmsearch.storage.table import ItemStore

runner = CliRunner()


@pytest.fixture
def indexed(tmp_path, small_catalog, fake_encoder):
    """Images (one bad file among them) and the captions of the small catalog."""
    (small_catalog.root / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    opts = IndexOptions(workers=1)
    run_index(
        [small_catalog.root, small_catalog.jsonl_path],
        tmp_path / "idx",
        fake_encoder.spec,
        options=opts,
        encoder=fake_encoder,
    )
    return tmp_path / "idx", small_catalog


def test_remove_file_folder_and_collection(indexed, fake_encoder):
    idx, cat = indexed
    category = cat.rows[0]["category"]
    folder = cat.root / "images" / category
    in_folder = sum(1 for r in cat.rows if r["category"] == category)
    other = next(cat.root / r["file"] for r in cat.rows if r["category"] != category)
    result = runner.invoke(
        app, ["remove", str(folder), str(other), str(cat.jsonl_path), "--index", str(idx)]
    )
    assert result.exit_code == 0, result.output
    assert f"removed {in_folder} item(s)" in result.output and "removed 1 item(s)" in result.output
    uris = set(ItemStore.open(idx).state_by_uri())
    assert len(uris) == cat.n - in_folder - 1
    assert path_to_uri(str(other)) not in uris
    assert not any(u.startswith(path_to_uri(str(folder)) + "/") or "#" in u for u in uris)
    engine = SearchIndex(idx, encoder=fake_encoder)  # the published snapshot no longer has them
    hits = engine.search(other, k=cat.n, kind="any")
    assert path_to_uri(str(other)) not in {h.uri for h in hits} and all(
        h.kind == "image" for h in hits
    )


def test_remove_unknown_path_removes_nothing(indexed):
    idx, cat = indexed
    before = ItemStore.open(idx).count()
    result = runner.invoke(
        app, ["remove", str(cat.root / "images"), str(cat.root / "nope"), "--index", str(idx)]
    )
    assert result.exit_code == 2
    assert "nope; nothing removed" in result.output
    assert ItemStore.open(idx).count() == before


def test_info_shows_sources_disk_and_last_run(indexed):
    idx, cat = indexed
    result = runner.invoke(app, ["info", "--index", str(idx), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert {(s["source"], s["kind"], s["rows"]) for s in info["sources"]} == {
        (path_to_uri(str(cat.root)), "image", cat.n),
        (path_to_uri(str(cat.jsonl_path)), "text", cat.n),
    }
    assert info["disk_bytes"]["table"] > 0 and info["disk_bytes"]["ann"] > 0
    run = info["last_run"]
    assert run["added"] == 2 * cat.n and run["failed"] == 1 and run["finished_at"].startswith("20")
    assert "broken.jpg" in open(run["failures_file"], encoding="utf-8").read()
    shown = runner.invoke(app, ["info", "--index", str(idx)], env={"COLUMNS": "200"}).output
    assert (
        "ann[image].type" in shown and "last run failures" in shown and f"({cat.n} text)" in shown
    )
