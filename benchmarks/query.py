"""Query benchmark: vector, lexical and hybrid latency and recall on a large catalog index.

Indexes ``--n`` synthetic product rows (caption text + sku, title with a brand word,
colour, shape, price) as a text collection with mmsearch-tiny, then runs one mixed
query set in every mode, side by side in one process:

* p50/p99 latency per mode, with the text encoder included (wall time) and excluded
  (wall time of the same queries through an encoder that answers from a memo of their
  vectors, filled beforehand: the lexical leg, which runs beside encoding, then shows
  its whole cost instead of hiding behind the encoder);
* hybrid with each fusion (the default, relative; ``rrf``; ``weighted``);
* the same with a metadata filter and with ``group_by sku``;
* recall@10 of hybrid and vector-only against the catalog's ground truth: attribute
  queries (``a red circle on the left``: rows with that colour, shape and position),
  SKU codes (rows of that SKU) and brand words (rows whose title has the brand);
  under a filter, the relevant rows are those that also pass it (queries left with
  none are not counted).

    python benchmarks/query.py                 # 100,000 rows, 90 queries
    python benchmarks/query.py --n 20000 --queries 100 --index /tmp/q20k
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LANCE_LOG", "error")
os.environ.setdefault("RUST_LOG", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch.datasets.synthetic import BRANDS, COLOURS, POSITIONS, SHAPES, catalog_rows  # noqa: E402


def build(index_dir: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """Writes the catalog rows to an index (skipped when it already has ``n`` rows).

    A row's vector is its caption's mmsearch-tiny embedding; the catalog has 160
    distinct captions, so each is embedded once and shared (the same vectors the
    indexer would compute, without embedding 100k copies). Rows go in through the
    store's ``make_rows`` and ``build_ann`` (ANN + full-text index), like an indexing
    run.
    """
    from mmsearch.indexer.ann_build import build_ann

    from mmsearch.models import load_encoder
    from mmsearch.models.spec import ModelSpec
    from mmsearch.storage.schema import make_rows
    from mmsearch.storage.table import ItemStore

    rows = catalog_rows(n, seed)
    for row in rows:
        row.pop("file", None)
    if ItemStore.exists(index_dir):
        if ItemStore.open(index_dir).count() == n and (index_dir / "snapshot.json").exists():
            return rows
        shutil.rmtree(index_dir)  # a different size, or a build that did not finish
    t0 = time.perf_counter()
    spec = ModelSpec("mmsearch-tiny", "")
    encoder = load_encoder(spec, device="cpu")
    captions = sorted({str(r["caption"]) for r in rows})
    by_caption = dict(zip(captions, encoder.encode_texts(captions), strict=True))
    store = ItemStore.create(index_dir, dim=encoder.dim, spec=spec)
    chunk = 10_000
    for start in range(0, n, chunk):
        part = rows[start : start + chunk]
        store.table.add(  # a fresh table: plain appends (an indexing run merges on uri)
            make_rows(
                ids=list(range(start, start + len(part))),
                uris=[f"catalog.jsonl#{r['id']}" for r in part],
                kind="text",
                texts=[str(r["caption"]) for r in part],
                source="catalog.jsonl",
                mtime_ns=[None] * len(part),
                sizes=[None] * len(part),
                sha256=[None] * len(part),
                metadata=[{k: v for k, v in r.items() if k not in ("id", "caption")} for r in part],
                vectors=np.stack([by_caption[str(r["caption"])] for r in part]),
                schema=store.table.schema,
            )
        )
    build_ann(store, spec, encoder=encoder)
    print(f"indexed {n} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return rows


def query_set(
    rows: list[dict[str, Any]], n_queries: int, seed: int
) -> list[tuple[str, str, set[int]]]:
    """(kind of query, text, relevant row positions): a third each of attributes, SKU codes, brands."""
    rng = np.random.default_rng(seed)
    by_attr: dict[tuple[str, str, str], set[int]] = {}
    by_sku: dict[str, set[int]] = {}
    by_brand: dict[str, set[int]] = {}
    for i, r in enumerate(rows):
        by_attr.setdefault((r["colour"], r["shape"], r["position"]), set()).add(i)
        by_sku.setdefault(r["sku"], set()).add(i)
        by_brand.setdefault(str(r["title"]).split()[0], set()).add(i)
    out: list[tuple[str, str, set[int]]] = []
    skus = sorted(by_sku)
    for j in range(n_queries):
        if j % 3 == 0:
            c, s, p = (
                COLOURS[rng.integers(len(COLOURS))],
                SHAPES[rng.integers(len(SHAPES))],
                POSITIONS[rng.integers(len(POSITIONS))],
            )
            out.append(("attribute", f"a {c} {s} on the {p}", by_attr.get((c, s, p), set())))
        elif j % 3 == 1:
            sku = skus[int(rng.integers(len(skus)))]
            out.append(("sku", sku, by_sku[sku]))
        else:
            brand = BRANDS[int(rng.integers(len(BRANDS)))]
            out.append(("brand", brand, by_brand[brand]))
    return out


class MemoEncoder:
    """An :class:`~mmsearch.models.base.Encoder` answering texts from a memo filled by
    :meth:`warm`: a search through it costs everything but the text encoder."""

    def __init__(self, encoder: Any) -> None:
        self.inner, self.spec, self.dim = encoder, encoder.spec, encoder.dim
        self.image_size = encoder.image_size
        self.memo: dict[str, np.ndarray] = {}

    def warm(self, texts: list[str]) -> None:
        for text, vector in zip(texts, self.inner.encode_texts(texts), strict=True):
            self.memo[text] = vector

    def encode_texts(self, texts: Any) -> np.ndarray:
        return np.stack([self.memo[t] for t in texts])

    def encode_images(self, batch: Any) -> np.ndarray:
        return self.inner.encode_images(batch)


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def run(
    idx: Any,
    memo_idx: Any,
    queries: list[tuple[str, str, set[int]]],
    uri_pos: dict[str, int],
    allowed: set[int] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Latency and recall@10 of the query set; with a filter, relevant = relevant ∩ ``allowed``."""
    wall, no_enc, recalls = [], [], {"attribute": [], "sku": [], "brand": []}
    for kind, text, relevant in queries:
        t0 = time.perf_counter()
        hits = idx.search(text, k=10, **options)
        ms = (time.perf_counter() - t0) * 1000
        wall.append(ms)
        t0 = time.perf_counter()
        memo_idx.search(text, k=10, **options)
        no_enc.append((time.perf_counter() - t0) * 1000)
        found = {uri_pos[h.uri] for h in hits}
        if allowed is not None:
            relevant = relevant & allowed
        if relevant:
            recalls[kind].append(len(found & relevant) / min(10, len(relevant)))
    p50, p99 = percentiles(wall)
    q50, q99 = percentiles(no_enc)
    return {
        "p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "p50_no_encoder_ms": round(q50, 2),
        "p99_no_encoder_ms": round(q99, 2),
        "recall@10": {k: round(float(np.mean(v)), 3) for k, v in recalls.items() if v},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index", type=Path, default=Path("/tmp/mmsearch-bench-query"))
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    args = ap.parse_args()

    from mmsearch.engine import SearchIndex

    rows = build(args.index, args.n, args.seed)
    idx = SearchIndex(args.index)
    memo = MemoEncoder(idx.encoder)
    memo_idx = SearchIndex(args.index, encoder=memo)
    table = idx.store.scan(["uri"])
    uri_pos = {u: int(u.rsplit("#item-", 1)[1]) for u in table.column("uri").to_pylist()}
    queries = query_set(rows, args.queries, args.seed + 1)
    from mmsearch.search.calibrate import probe_texts

    # The chance-level probes of relative fusion too (measured once per snapshot).
    memo.warm(["warm up", "SKU-00001"] + [text for _, text, _ in queries] + probe_texts())
    for text in ("warm up", "SKU-00001"):
        for i in (idx, memo_idx):
            i.search(text, k=10)
            i.search(text, k=10, mode="vector")
    red = {i for i, r in enumerate(rows) if r["colour"] == "red"}
    cheap = {i for i, r in enumerate(rows) if float(r["price"]) < 20}
    cases: dict[str, tuple[dict[str, Any], set[int] | None]] = {
        "vector": ({"mode": "vector"}, None),
        "lexical": ({"mode": "lexical"}, None),
        "hybrid": ({"mode": "hybrid"}, None),
        "hybrid (rrf)": ({"mode": "hybrid", "fusion": "rrf"}, None),
        "hybrid (weighted)": ({"mode": "hybrid", "fusion": "weighted"}, None),
        "vector + filter colour=red": ({"mode": "vector", "where": ["colour = red"]}, red),
        "hybrid + filter colour=red": ({"mode": "hybrid", "where": ["colour = red"]}, red),
        "hybrid + filter price<20": ({"mode": "hybrid", "where": ["price < 20"]}, cheap),
        "vector + group_by sku": ({"mode": "vector", "group_by": "sku"}, None),
        "hybrid + group_by sku": ({"mode": "hybrid", "group_by": "sku"}, None),
    }
    if args.cases:
        cases = {name: cases[name] for name in args.cases.split(",")}
    results = {
        name: run(idx, memo_idx, queries, uri_pos, allowed, **opts)
        for name, (opts, allowed) in cases.items()
    }
    print(
        f"n={args.n} queries={len(queries)} (attribute/sku/brand thirds), k=10, model mmsearch-tiny\n"
    )
    print(
        "| case | p50 ms | p99 ms | p50 ms (no encoder) | p99 ms (no encoder) | recall@10 attr / sku / brand |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        rec = r["recall@10"]
        recall = " / ".join(
            f"{rec.get(k, float('nan')):.3f}" for k in ("attribute", "sku", "brand")
        )
        print(
            f"| {name} | {r['p50_ms']} | {r['p99_ms']} | {r['p50_no_encoder_ms']} | {r['p99_no_encoder_ms']} | {recall} |"
        )
    if "hybrid" in results and "vector" in results:
        extra = results["hybrid"]["p50_no_encoder_ms"] - results["vector"]["p50_no_encoder_ms"]
        print(f"\nhybrid - vector p50 (encoder excluded): {extra:+.2f} ms (goal: <= +5 ms)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
