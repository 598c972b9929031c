"""Added latency of ITM re-ranking per query, at depths 10 / 50 / 100.

Two models side by side in one run:

* ``mmsearch-tiny-itm`` (the shipped weights),
* a BLIP-base-sized ``BlipForImageTextRetrieval`` with random weights
  (transformers' default ``BlipConfig``: ViT-B/16 at 384 px, 12-layer BERT-base text
  tower; the same FLOPs as ``Salesforce/blip-itm-base-coco``, built from the config
  only, nothing downloaded).

Each query re-ranks ``depth`` candidate image files of a two-object catalog through
the re-rank stage with :class:`mmsearch.rerank.ItmReranker` (file check, safe decode, preprocessing, ITM),
i.e. exactly what ``--rerank`` adds to a query. Prints a Markdown table and JSON.

    python benchmarks/rerank.py                         # tiny: 5 queries, base: 1 query per depth
    python benchmarks/rerank.py --device cuda --base-queries 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from mmsearch.datasets.synthetic import generate_catalog  # noqa: E402
from mmsearch.rerank import ItmReranker  # noqa: E402
from mmsearch.rerank.itm import ItmScorer  # noqa: E402
from mmsearch.search.language import QueryTerm  # noqa: E402
from mmsearch.search.rerank import rerank_stage  # noqa: E402
from mmsearch.search.types import Query, RerankSpec  # noqa: E402

DEPTHS = (10, 50, 100)


def base_sized_scorer(device: str) -> ItmScorer:
    """Random-weight BLIP-base ITM model with the tiny model's tokenizer and a 384 px image processor."""
    from transformers import (
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
    )

    tiny = ItmScorer.load("mmsearch-tiny-itm", device="cpu")
    torch.manual_seed(0)
    model = BlipForImageTextRetrieval(BlipConfig()).eval().to(device)
    model.requires_grad_(False)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 384, "width": 384}),
        tokenizer=tiny.processor.tokenizer,
    )
    return ItmScorer(model, processor, "blip-base-random", device)


def candidates(rows: list[dict[str, Any]], root: Path, depth: int) -> pa.Table:
    paths = [root / str(r["file"]) for r in rows[:depth]]
    return pa.table(
        {
            "id": pa.array(range(len(paths)), pa.int64()),
            "uri": [str(p) for p in paths],
            "kind": ["image"] * len(paths),
            "mtime_ns": [p.stat().st_mtime_ns for p in paths],
            "size": [p.stat().st_size for p in paths],
            "score": pa.array(np.linspace(1.0, 0.0, len(paths)), pa.float32()),
        }
    )


def time_model(
    scorer: ItmScorer, rows: list[dict[str, Any]], root: Path, queries: int, depths: tuple[int, ...]
) -> dict[int, float]:
    """Median seconds per query at each depth (after one warm-up query over 2 candidates)."""
    out: dict[int, float] = {}
    reranker = ItmReranker(scorer)

    def query(text: str, depth: int) -> Query:
        return Query(terms=(QueryTerm(1.0, "text", text),), k=1, rerank=RerankSpec(depth=depth))

    rerank_stage(reranker, query(str(rows[0]["caption"]), 2), candidates(rows, root, 2))
    for depth in depths:
        table = candidates(rows, root, depth)
        times = []
        for q in range(queries):
            start = time.perf_counter()
            rerank_stage(reranker, query(str(rows[q + 1]["caption"]), depth), table)
            times.append(time.perf_counter() - start)
        out[depth] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--queries", type=int, default=5, help="timed queries per depth (tiny model)")
    ap.add_argument(
        "--base-queries", type=int, default=1, help="timed queries per depth (base-sized model)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--base-depths",
        default="10,50,100",
        help="depths timed for the base-sized model (it needs minutes per query on a small CPU)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mmsearch-rerank-bench-") as tmp:
        info = generate_catalog(tmp, n=max(DEPTHS) + 10, seed=2024, scenes="pairs")
        rows = info.rows
        results = {
            "mmsearch-tiny-itm": time_model(
                ItmScorer.load("mmsearch-tiny-itm", device=args.device),
                rows,
                info.root,
                args.queries,
                DEPTHS,
            ),
            "blip-base-random": time_model(
                base_sized_scorer(args.device),
                rows,
                info.root,
                args.base_queries,
                tuple(int(d) for d in args.base_depths.split(",")),
            ),
        }
    print(f"device {args.device}, torch threads {args.threads}")
    print("| model | " + " | ".join(f"depth {d}" for d in DEPTHS) + " |")
    print("|---|" + "---|" * len(DEPTHS))
    for name, by_depth in results.items():
        cells = " | ".join(
            f"{by_depth[d] * 1000:.0f} ms" if d in by_depth else "not run" for d in DEPTHS
        )
        print(f"| {name} | {cells} |")
    base = results["blip-base-random"]
    ratio = {d: base[d] / results["mmsearch-tiny-itm"][d] for d in DEPTHS if d in base}
    print("base / tiny: " + ", ".join(f"depth {d}: {r:.0f}x" for d, r in ratio.items()))
    print(json.dumps({"device": args.device, "seconds_per_query": results}, indent=None))


if __name__ == "__main__":
    main()
