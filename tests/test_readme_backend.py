"""The README's "From a backend" section runs as written: the library block (records
upserted, searched, updated, deleted) and the product-feed command lines (images served
by a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import csv
import json
import re
import shutil

from mmsearch.datasets.synthetic import generate_catalog
from mmsearch.storage.table import ItemStore
from tests.image_server import ImageServer
from tests.readme_doc import SUBSTITUTIONS, block, cli_env, run_commands, run_lines, substitute

PYTHON = "From a backend#1"
FEED = "From a backend#2"


def test_backend_python_block(tmp_path, monkeypatch):
    info = generate_catalog(tmp_path / ".reader", n=200, seed=8)
    red = next(r for r in info.rows if r["caption"].startswith("a red circle"))
    star = next(r for r in info.rows if "star" in r["caption"] and r["file"].endswith(".jpg"))
    (tmp_path / "photos").mkdir()
    shutil.copy(info.root / red["file"], tmp_path / "photos" / "first.jpg")
    shutil.copy(info.root / star["file"], tmp_path / "ref.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block(PYTHON).text, f"README.md#{PYTHON}", "exec"), namespace)
    report = namespace["report"]
    assert (report.images.added, report.texts.added) == (2, 2)
    assert [(f[0], f[1]) for f in report.failed] == [("sku-2", "image 1 (<12 bytes>)")]
    json.dumps(report.to_dict())  # JSON as it stands
    hits = namespace["hits"]
    assert hits and all(h["metadata"]["price"] < 20 for h in hits)  # .to_list(): dicts
    assert len({h["metadata"]["id"] for h in hits}) == len(hits)
    assert hits[0]["metadata"]["id"] == "sku-1"
    rows = ItemStore.open(tmp_path / "shop").scan(["metadata"]).column("metadata").to_pylist()
    metadata = [json.loads(m) for m in rows]
    assert {m["id"] for m in metadata} == {"sku-1"}  # sku-2 deleted
    assert {m["price"] for m in metadata} == {15.0}  # the new price on every row of sku-1
    again = namespace["idx"].upsert([{"id": "sku-1", "title": "Red circle tee", "price": 15.0,
                                      "brand": "Lumeth", "image": "./photos/first.jpg"}])  # fmt: skip
    assert again.embedded == 0 and again.metadata_updated == 0


def test_backend_feed_block(tmp_path):
    info = generate_catalog(tmp_path / ".reader", n=12, seed=9)
    with ImageServer() as server:
        rows = []
        for i, row in enumerate(info.rows):
            url = server.add(row["file"], (info.root / row["file"]).read_bytes())
            rows.append({"id": f"P{i}", "title": row["caption"], "description": row["title"],
                         "image_link": url, "price": f"{row['price']:.2f} USD", "brand": "Lumeth",
                         "gtin": f"0{i:07d}", "availability": "in stock"})  # fmt: skip
        with open(tmp_path / "feed.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        argvs = [substitute(c, SUBSTITUTIONS[FEED]) for c in run_lines(FEED)]
        first, second = run_commands(argvs, tmp_path, cli_env())
    assert first.code == 0 and second.code == 0, (first.stderr, second.stderr)
    assert re.search(r"added\s+24\b", first.stdout), first.stdout  # 12 images + 12 texts
    assert re.search(r"unchanged\)\s+24\b", second.stdout), second.stdout
    assert re.search(r"embedded\s+0\b", second.stdout), second.stdout
    hits = ItemStore.open(tmp_path / "shop-feed").scan(["metadata"]).column("metadata").to_pylist()
    assert {json.loads(m)["gtin"] for m in hits} == {f"0{i:07d}" for i in range(12)}
