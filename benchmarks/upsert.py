"""Record upserts: records/s by batch size, visibility latency, and the cost of an upsert
into a large index against embedding the same records alone.

    python benchmarks/upsert.py throughput --model mmsearch-tiny --batches 1,10,100,1000
    python benchmarks/upsert.py throughput --model ViT-B-32 --pretrained laion2b_s34b_b79k
    python benchmarks/upsert.py visibility --model mmsearch-tiny --n 100
    python benchmarks/upsert.py visibility --model mmsearch-tiny --n 100 --index /tmp/big1m
    python benchmarks/upsert.py big --model mmsearch-tiny --rows 1000000 --records 100

``throughput``: for each batch size, fresh indexes receive the same records in batches
of that size, images read from local paths and from a local HTTP server (127.0.0.1,
``allow_private_urls``), alternating; records/s = records / wall time of the upserts.
``visibility``: after each one-record upsert returns, a reader in another process (its
own ``SearchIndex``, reloading ``snapshot.json`` before each query, as a server worker
does) polls a lexical query for the record's unique word; p50/p99 of the time from the
upsert's return until it answers. ``--index`` runs it on a kept (e.g. 1M-row) index.
``big``: an index filled with ``--rows`` rows of random unit vectors (written straight
into the table, ANN index and full-text index built once), then, side by side and
repeated: the embedding alone of ``--records`` records (read, decode, images and texts
through the model) and their upsert into the big index.

Images are the synthetic catalog's (``mmsearch.datasets.synthetic``, 128 px). Random
weights (``shared/tools/offline_weights.py``) have the real FLOPs and prove no quality.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from mmsearch.indexer.upsert import create_index  # noqa: E402

from mmsearch.datasets.synthetic import generate_catalog  # noqa: E402
from mmsearch.engine import SearchIndex  # noqa: E402
from mmsearch.models import load_encoder  # noqa: E402
from mmsearch.models.spec import ModelSpec  # noqa: E402
from tests.image_server import ImageServer  # noqa: E402


def load() -> str:
    return os.getloadavg().__repr__()


def records(catalog: Any, start: int, n: int, image_of: Any) -> list[dict[str, Any]]:
    rows = catalog.rows
    out = []
    for i in range(start, start + n):
        row = rows[i % len(rows)]
        out.append({"id": f"sku-{i}", "title": row["caption"], "description": row["title"],
                    "price": row["price"], "category": row["category"], "brand": f"w{i}x",
                    "image": image_of(row["file"])})  # fmt: skip
    return out


def throughput(args: argparse.Namespace, encoder: Any, catalog: Any, work: Path) -> None:
    with ImageServer() as server:
        for row in catalog.rows:
            server.add(row["file"], (catalog.root / row["file"]).read_bytes())
        sources = {"local": lambda f: str(catalog.root / f), "http": server.url}
        for batch in [int(b) for b in args.batches.split(",")]:
            total = max(batch, args.min_records)
            rates: dict[str, list[float]] = {name: [] for name in sources}
            for rnd in range(args.rounds):
                for name, image_of in sources.items():
                    index = work / f"t-{batch}-{name}-{rnd}"
                    create_index(index, encoder.spec, encoder=encoder)
                    idx = SearchIndex(index, encoder=encoder)
                    recs = records(catalog, 0, total, image_of)
                    t0 = time.perf_counter()
                    for s in range(0, total, batch):
                        report = idx.upsert(recs[s : s + batch], allow_private_urls=True)
                        assert not report.failed, report.failed[:3]
                    rates[name].append(total / (time.perf_counter() - t0))
                    shutil.rmtree(index)
            print(json.dumps({"bench": "throughput", "model": encoder.spec.key, "batch": batch,
                              "records": total, **{f"{k}_records_per_s": round(statistics.median(v), 2)
                                                   for k, v in rates.items()},
                              "load": load()}), flush=True)  # fmt: skip


def visibility(args: argparse.Namespace, encoder: Any, catalog: Any, work: Path) -> None:
    index = Path(args.index) if args.index else work / "vis"
    writer = SearchIndex(index, encoder=encoder) if (index / "snapshot.json").is_file() else None
    if writer is None:
        create_index(index, encoder.spec, encoder=encoder)
        writer = SearchIndex(index, encoder=encoder)
        writer.upsert(records(catalog, 10_000, 200, lambda f: str(catalog.root / f)))
    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    reader = ctx.Process(target=poll_reader, args=(str(index), args.model, args.pretrained, child))
    reader.start()
    assert conn.recv() == "ready"
    first = int(time.time()) * 10_000  # new ids on every run, also into a kept index
    latencies = []
    try:
        for i in range(args.n):
            rec = records(catalog, first + i, 1, lambda f: str(catalog.root / f))
            writer.upsert(rec)
            conn.send((rec[0]["brand"], time.time()))
            latencies.append(conn.recv())
    finally:
        conn.send(None)
        reader.join(timeout=60)
    lat = np.asarray(latencies) * 1000
    print(json.dumps({"bench": "visibility", "model": encoder.spec.key, "upserts": args.n,
                      "index_rows": len(writer),
                      "p50_ms": round(float(np.percentile(lat, 50)), 1),
                      "p99_ms": round(float(np.percentile(lat, 99)), 1),
                      "max_ms": round(float(lat.max()), 1), "load": load()}), flush=True)  # fmt: skip


def poll_reader(index: str, model: str, pretrained: str | None, conn: Any) -> None:
    """Another process, as a server worker: told a word once its upsert returned, it
    reloads the published snapshot and runs a lexical query for it until it answers;
    sends back the seconds from the upsert's return (same clock, same machine)."""
    encoder = load_encoder(ModelSpec.parse(model, pretrained), device="cpu")
    idx = SearchIndex(index, encoder=encoder)
    idx.search("warm", k=1, mode="lexical")
    idx.search("w1x", k=1, mode="lexical")  # a serving worker's: typed metadata built once
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        word, returned = msg
        while True:
            idx.reload()
            if idx.search(word, k=1, mode="lexical"):
                break
            if time.time() - returned > 30:
                raise RuntimeError(f"{word} never became visible")
        conn.send(time.time() - returned)


def fill(index: Path, encoder: Any, rows: int) -> None:
    """``rows`` rows of random unit vectors, straight into the table; ANN + FTS built once."""
    import pyarrow as pa
    from mmsearch.indexer.ann_build import build_ann

    from mmsearch.storage.schema import make_rows
    from mmsearch.storage.table import ItemStore

    store = ItemStore.create(index, dim=encoder.dim, spec=encoder.spec)
    rng = np.random.default_rng(0)
    chunk = 100_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        vecs = rng.standard_normal((n, encoder.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        for kind, part in (("image", slice(0, n // 2)), ("text", slice(n // 2, n))):
            ids = list(range(start + part.start, start + part.stop))
            table = make_rows(ids=ids, uris=[f"bench:{i}" for i in ids], kind=kind,
                              texts=[f"filler item {i}" for i in ids], source="bench",
                              mtime_ns=[0] * len(ids), sizes=[0] * len(ids), sha256=[str(i) for i in ids],
                              metadata=[{"id": f"f{i}", "price": float(i % 100)} for i in ids],
                              vectors=vecs[part], schema=store.table.schema)  # fmt: skip
            store.table.add(
                table.cast(store.table.schema) if isinstance(table, pa.Table) else table
            )
    t0 = time.perf_counter()
    build_ann(store, encoder.spec, encoder=encoder)
    print(json.dumps({"bench": "big-fill", "rows": rows, "ann_build_s": round(time.perf_counter() - t0, 1),
                      "load": load()}), flush=True)  # fmt: skip


def embed_alone(encoder: Any, recs: list[dict[str, Any]]) -> float:
    """Read, decode and embed the records' images and texts, as the upsert must."""
    from mmsearch.indexer.decode import decode_bytes
    from mmsearch.indexer.textindex import text_steps

    t0 = time.perf_counter()
    arrays = [decode_bytes(Path(r["image"]).read_bytes(), encoder.image_size) for r in recs]
    encoder.encode_images(np.stack(arrays))
    steps = text_steps(encoder)
    texts = [f"{r['title']}\n{r['description']}" for r in recs]
    steps.embed(list(steps.prepare(texts)))
    return time.perf_counter() - t0


def big(args: argparse.Namespace, encoder: Any, catalog: Any, work: Path) -> None:
    index = Path(args.index) if args.index else work / "big"
    if not (index / "snapshot.json").is_file():
        fill(index, encoder, args.rows)
    idx = SearchIndex(index, encoder=encoder)
    first = int(time.time()) * 10_000  # new ids on every run, also into a kept index
    idx.upsert(
        records(catalog, first - 1, 1, lambda f: str(catalog.root / f))
    )  # warm: imports, first text
    ratios, totals = [], [0.0, 0.0]
    for rnd in range(args.rounds):
        recs = records(catalog, first + 1000 * rnd, args.records, lambda f: str(catalog.root / f))
        alone = embed_alone(encoder, recs)
        t0 = time.perf_counter()
        report = idx.upsert(recs)
        upsert = time.perf_counter() - t0
        assert report.embedded == 2 * args.records, report.to_dict()
        ratios.append(upsert / alone)
        totals[0], totals[1] = totals[0] + alone, totals[1] + upsert
        print(json.dumps({"bench": "big", "model": encoder.spec.key, "rows": args.rows,
                          "records": args.records, "embed_alone_s": round(alone, 3),
                          "upsert_s": round(upsert, 3), "ratio": round(upsert / alone, 2),
                          "visible_here": bool(idx.search(recs[0]["brand"], k=1, mode="lexical")),
                          "load": load()}), flush=True)  # fmt: skip
    print(json.dumps({"bench": "big-summary", "median_ratio": round(statistics.median(ratios), 2),
                      "ratio_of_totals": round(totals[1] / totals[0], 2)}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("what", choices=["throughput", "visibility", "big"])
    ap.add_argument("--model", default="mmsearch-tiny")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--batches", default="1,10,100,1000")
    ap.add_argument("--min-records", type=int, default=100, help="records per measurement at least")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n", type=int, default=100, help="visibility: one-record upserts")
    ap.add_argument("--rows", type=int, default=1_000_000, help="big: rows in the index")
    ap.add_argument("--records", type=int, default=100, help="big: records per upsert")
    ap.add_argument("--index", default=None,
                    help="big, visibility: keep the (filled) index here and reuse it on later runs")  # fmt: skip
    args = ap.parse_args()
    encoder = load_encoder(ModelSpec.parse(args.model, args.pretrained), device="cpu")
    work = Path(tempfile.mkdtemp(prefix="mmsearch-upsert-"))
    try:
        catalog = generate_catalog(work / "catalog", n=2000, seed=3)
        {"throughput": throughput, "visibility": visibility, "big": big}[args.what](
            args, encoder, catalog, work
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
