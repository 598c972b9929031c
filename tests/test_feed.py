"""Product feeds: ``mmsearch index feed.csv`` and ``mmsearch.index(feed)``, with images served
by a real HTTP server on 127.0.0.1, LanceDB, FAISS and the real mmsearch-tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mmsearch.indexer.feed import parse_price, read_feed
from typer.testing import CliRunner

import mmsearch
from mmsearch.cli import app
from mmsearch.engine import SearchIndex
from mmsearch.storage.table import ItemStore
from tests.image_server import ImageServer

COLUMNS = ["id", "title", "description", "image_link", "additional_image_link", "price", "brand",
           "gtin", "availability"]  # fmt: skip


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from mmsearch.datasets.synthetic import generate_catalog

    return generate_catalog(tmp_path_factory.mktemp("cat") / "c", n=40, seed=31, image_size=64)


@pytest.fixture(scope="module")
def server(catalog):
    with ImageServer(slow_s=2.0) as srv:
        for row in catalog.rows:
            srv.add(row["file"], (catalog.root / row["file"]).read_bytes())
        yield srv


def feed_rows(catalog: Any, server: ImageServer, n: int = 30) -> list[dict[str, str]]:
    rows = []
    for i, row in enumerate(catalog.rows[:n]):
        more = server.url(catalog.rows[30 + i % 10]["file"]) if i % 3 == 0 else ""
        rows.append({"id": f"P{i:03d}", "title": row["caption"], "description": row["title"],
                     "image_link": server.url(row["file"]), "additional_image_link": more,
                     "price": f"{row['price']:.2f} USD", "brand": f"brand{i}",
                     "gtin": f"000{i:05d}", "availability": "in stock"})  # fmt: skip
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def by_record(index: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in ItemStore.open(index).scan(["uri", "kind", "sha256", "metadata"]).to_pylist():
        out.setdefault(json.loads(row["metadata"])["id"], []).append(row)
    return out


def test_merchant_columns_are_recognised(tmp_path, catalog, server):
    rows = feed_rows(catalog, server, n=4)
    rows.append(dict(rows[0]))  # a repeated id
    rows.append({**rows[1], "id": ""})  # no id
    feed = read_feed(write_csv(tmp_path / "feed.csv", rows))
    assert [r.id for r in feed.records] == ["P000", "P001", "P002", "P003"]
    assert [(p.row_number, p.exc_class) for p in feed.problems] == [
        (5, "DuplicateIdError"),
        (6, "MissingIdError"),
    ]
    first = feed.records[0]
    assert first.text == f"{rows[0]['title']}\n{rows[0]['description']}"
    assert first.images == (rows[0]["image_link"], rows[0]["additional_image_link"])
    assert first.metadata == {"price": float(rows[0]["price"][:-4]), "currency": "USD",
                              "brand": "brand0", "gtin": "00000000", "availability": "in stock"}  # fmt: skip
    assert feed.records[1].images == (rows[1]["image_link"],)  # an empty additional link
    assert parse_price("1,50 EUR") == (1.5, "EUR") and parse_price("free") == (None, None)


def test_feed_runs_add_update_and_remove_by_id(tmp_path, catalog, server):
    rows = feed_rows(catalog, server)
    rows[5]["image_link"] = server.url("missing.jpg")  # reported by id; its text still indexed
    feed, index = write_csv(tmp_path / "feed.csv", rows), tmp_path / "index"
    runner = CliRunner()
    args = ["index", str(feed), "--index", str(index), "--model", "mmsearch-tiny", "--json"]
    strict = runner.invoke(app, ["index", str(feed), "--index", str(tmp_path / "strict"), "--model",
                                 "mmsearch-tiny", "--json"])  # fmt: skip
    assert strict.exit_code == 0, strict.output  # loopback refused by default: texts only
    failed = json.loads(strict.stdout)["records"]["failed"]
    assert len(failed) == 40 and all("non-public address" in f[2] for f in failed)
    done = runner.invoke(app, [*args, "--allow-private-urls"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    records = report["records"]
    assert records["records"] == 30 and records["texts"]["added"] == 30
    assert records["images"]["added"] == 30 - 1 + 10  # main images but P005's, ten more
    assert [f[:2] for f in records["failed"]] == [["P005", f"image 0 ({rows[5]['image_link']})"]]
    assert report["failures"][0]["path"] == "P005"
    stored = by_record(index)
    assert len(stored) == 30 and len(stored["P000"]) == 3 and len(stored["P005"]) == 1

    idx = SearchIndex(index)
    hits = idx.search("brand7", k=5, mode="lexical", group_by="id")
    assert [h.metadata["id"] for h in hits] == ["P007"]
    assert (
        hits[0].metadata["price"] == float(rows[7]["price"][:-4])
        and hits[0].metadata["gtin"] == "00000007"
    )
    cheap = idx.search(rows[7]["title"], k=50, where={"price__lt": 30}, group_by="id")
    assert all(h.metadata["price"] < 30 for h in cheap)

    # unchanged feed: nothing embedded
    again = mmsearch.index(feed, index, model=mmsearch.ModelSpec("mmsearch-tiny", ""),
                           allow_private_urls=True)  # fmt: skip
    assert again.embedded == 0 and again.records.embedded == 0
    assert again.records.failed[0][0] == "P005"  # tried again

    # next day: a new id, a changed title, a changed price, one id gone
    rows[5]["image_link"] = server.url(catalog.rows[5]["file"])
    rows[8]["title"] = "a renamed product"
    rows[9]["price"] = "1.00 USD"
    gone = rows.pop(12)
    extra = catalog.rows[39]  # also one of the additional images: a record's own row
    rows.append({**rows[1], "id": "P999", "title": extra["caption"], "brand": "brand999",
                 "image_link": server.url(extra["file"])})  # fmt: skip
    write_csv(feed, rows)
    later = mmsearch.index(feed, index, model=mmsearch.ModelSpec("mmsearch-tiny", ""),
                           allow_private_urls=True)  # fmt: skip
    rec = later.records
    assert (rec.texts.added, rec.texts.updated, rec.texts.removed) == (1, 1, 1)
    assert (rec.images.added, rec.images.removed) == (2, 2)  # P999's, P005's; P012's two
    assert rec.embedded == 2 + 1 + 1  # P999 text + image, P008 text, P005 image
    assert rec.metadata_updated == 3 + 1  # P009's text and two image rows; P008's image row
    stored = by_record(index)
    assert gone["id"] not in stored and "P999" in stored and len(stored["P005"]) == 2
    idx = SearchIndex(index)
    assert idx.search("brand9", k=1, mode="lexical")[0].metadata["price"] == 1.0


def test_feed_formats_and_a_bad_row_keeps_every_record(tmp_path, catalog, server):
    rows = feed_rows(catalog, server, n=6)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "feed.parquet")
    (tmp_path / "feed.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name in ("feed.parquet", "feed.jsonl"):
        report = mmsearch.index(tmp_path / name, tmp_path / f"i-{name}",
                                model=mmsearch.ModelSpec("mmsearch-tiny", ""), allow_private_urls=True)  # fmt: skip
        assert report.records.records == 6 and report.records.failed == [], name
    # a later JSONL with an unreadable line: nothing is swept (that line might be a record)
    lines = [json.dumps(r) for r in rows[:3]] + ['{"id": "broken", ']
    (tmp_path / "feed.jsonl").write_text("\n".join(lines) + "\n")
    report = mmsearch.index(tmp_path / "feed.jsonl", tmp_path / "i-feed.jsonl",
                            model=mmsearch.ModelSpec("mmsearch-tiny", ""), allow_private_urls=True)  # fmt: skip
    assert report.sweep_aborted and report.records.deleted_records == 0
    assert len(by_record(tmp_path / "i-feed.jsonl")) == 6
