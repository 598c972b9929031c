"""Hybrid fusions per class of query on the brand/SKU catalog drawn by the independent renderer.

Draws the catalog of ``benchmarks/brand_catalog.py`` (``--split validation`` to
choose, ``--split heldout`` to check), indexes its images with their sidecar
(mmsearch-tiny, LanceDB full-text index over titles, SKUs, categories), then runs its
classed query set through ``mmsearch.evaluation.evaluate_queries``: vector-only
(``ann``), the default fusion (``+hybrid``: relative), ``+rrf`` and ``+weighted``,
and prints each class's recall@10, MRR, hit@1 and only@5 with the acceptance lines:

* brand: only@5 (the top 5 hold only that brand) ≥ 0.90;
* sku: hit@1 ≥ 0.95;
* attribute: recall@10 no lower than vector-only's − 0.02;
* every class: the default within 0.02 of the better of rrf and weighted (recall@10
  and MRR).

``--sweep 0.25,0.5,1`` (validation only) runs relative fusion once per vector weight
(:data:`mmsearch.search.fuse.RELATIVE_VECTOR_WEIGHT`), the choice this benchmark made.

    python benchmarks/fusion_eval.py --split validation --workdir /tmp/fusion-val
    python benchmarks/fusion_eval.py --split validation --workdir /tmp/fusion-val --sweep 0.1,0.25,0.5,1,2
    python benchmarks/fusion_eval.py --split heldout --workdir /tmp/fusion-heldout
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.brand_catalog import SPLITS, write_brand_catalog  # noqa: E402

VARIANTS = ("ann", "+hybrid", "+rrf", "+weighted")
METRICS = ("recall@10", "mrr", "hit@1", "only@5")


def build(workdir: Path, split: str, n: int, per_class: int) -> Path:
    """The catalog and its index under ``workdir`` (reused when already there)."""
    from mmsearch.indexer.pipeline import IndexOptions, run_index

    from mmsearch.models.spec import ModelSpec

    index_dir = workdir / "idx"
    if (index_dir / "snapshot.json").exists():
        return index_dir
    seed, brands = SPLITS[split]
    write_brand_catalog(workdir, n, seed, brands, per_class)
    options = IndexOptions(image_metadata=workdir / "catalog.jsonl", workers=1)
    run_index([workdir / "images"], index_dir, ModelSpec("mmsearch-tiny", ""), options=options)
    return index_dir


def acceptance(classes: dict[str, Any]) -> list[str]:
    """The issue's acceptance lines, each with its figures and pass/fail."""
    lines = []

    def fig(group: str, variant: str, metric: str) -> float:
        return float(classes[group]["variants"][variant][metric])

    if "brand" in classes:
        v = fig("brand", "+hybrid", "only@5")
        lines.append(f"brand only@5 {v:.3f} >= 0.90: {'met' if v >= 0.9 else 'NOT met'}")
    if "sku" in classes:
        v = fig("sku", "+hybrid", "hit@1")
        lines.append(f"sku hit@1 {v:.3f} >= 0.95: {'met' if v >= 0.95 else 'NOT met'}")
    if "attribute" in classes:
        v, base = fig("attribute", "+hybrid", "recall@10"), fig("attribute", "ann", "recall@10")
        ok = v >= base - 0.02
        lines.append(
            f"attribute recall@10 {v:.3f} vs vector-only {base:.3f}: {'met' if ok else 'NOT met'}"
        )
    for group in classes:
        for metric in ("recall@10", "mrr"):
            v = fig(group, "+hybrid", metric)
            best = max(fig(group, "+rrf", metric), fig(group, "+weighted", metric))
            ok = v >= best - 0.02
            lines.append(
                f"{group} {metric}: relative {v:.3f} vs best of rrf/weighted {best:.3f}: "
                f"{'met' if ok else 'NOT met'}"
            )
    return lines


def run(index_dir: Path, queries: Path, variants: tuple[str, ...]) -> dict[str, Any]:
    from mmsearch.engine import SearchIndex
    from mmsearch.evaluation import evaluate_queries, read_queries

    index = SearchIndex(index_dir)
    report = evaluate_queries(index, read_queries(queries), variants=list(variants))
    return report.to_dict()["classes"]


def show(classes: dict[str, Any], variants: tuple[str, ...]) -> None:
    print("| class | queries | variant | " + " | ".join(METRICS) + " |")
    print("|---|--:|---|" + "--:|" * len(METRICS))
    for group, data in classes.items():
        for i, variant in enumerate(variants):
            values = data["variants"][variant]
            head = f"| {group} | {data['queries']} " if i == 0 else "| | "
            print(head + f"| {variant} | " + " | ".join(f"{values[m]:.3f}" for m in METRICS) + " |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=sorted(SPLITS), required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--sweep", default=None, help="relative fusion's vector weights to compare")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    index_dir = build(args.workdir, args.split, args.n, args.per_class)
    queries = args.workdir / "queries.jsonl"
    out: dict[str, Any] = {"split": args.split, "n": args.n}
    if args.sweep:
        if args.split == "heldout":
            ap.error("choose on the validation split; the held-out one is only for checking")
        from mmsearch.search import fuse

        for weight in (float(w) for w in args.sweep.split(",")):
            fuse.RELATIVE_VECTOR_WEIGHT = weight
            classes = run(index_dir, queries, ("ann", "+hybrid"))
            print(f"\n## relative fusion, vector weight {weight}\n")
            show(classes, ("ann", "+hybrid"))
            out[f"weight {weight}"] = classes
    else:
        classes = run(index_dir, queries, VARIANTS)
        show(classes, VARIANTS)
        print()
        for line in acceptance(classes):
            print("- " + line)
        out["classes"] = classes
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
