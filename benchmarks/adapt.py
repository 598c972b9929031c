"""Fine-tuning curve of a weakened mmsearch-tiny, and zero-shot label accuracy.

    python benchmarks/adapt.py finetune --n 1000 --epochs 8 --batch-size 64 --locks image,none
    python benchmarks/adapt.py labels --n 1000 --seed 4242
    python benchmarks/adapt.py queries --n 3000 --index-type ivfpq

``queries``: a generated catalog (seed 5) is indexed with mmsearch-tiny (IVF-PQ forced,
so exact and ANN differ), a query set is written next to it (every full caption, and
every colour+shape query; relevant = the images that match, graded 2 for an exact
caption match, 1 for a partial one) and evaluated exact vs ANN; the printed command
re-runs it with ``mmsearch eval``.

``finetune``: mmsearch-tiny with its text tower re-initialised (seed 0) is fine-tuned
on a generated catalog (seed 11; 20 % of the images held out) with each lock setting in
turn, same data and seed; held-out text→image and image→text R@1 are printed before
training and after each epoch (the figures ``mmsearch finetune`` shows).

``labels``: a generated catalog is indexed with the shipped mmsearch-tiny; shapes
(circle, square, triangle, star) and colours (the eight catalog colours) are labelled
zero-shot with the templates ``{}`` and ``a {}``, and compared with the generator's
ground truth.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mmsearch.datasets.synthetic import COLOURS, SHAPES, generate_catalog  # noqa: E402
from mmsearch.models.spec import ModelSpec  # noqa: E402


def finetune_curve(args: argparse.Namespace, work: Path) -> None:
    from mmsearch.training.data import read_pairs
    from mmsearch.training.finetune import FinetuneConfig, finetune, reinitialise_tower
    from mmsearch.training.loop import FitConfig

    torch.set_num_threads(args.threads)
    weak = reinitialise_tower(ModelSpec("mmsearch-tiny"), "text", work / "weak.safetensors", seed=0)
    catalog = generate_catalog(work / "catalog", n=args.n, seed=11)
    pairs = read_pairs(catalog.jsonl_path)
    for lock in args.locks.split(","):
        started = time.perf_counter()
        fit = FitConfig(
            epochs=args.epochs,
            lr=args.lr,
            warmup=args.warmup,
            lock=lock,
            weight_decay=0.05,
            patience=0,
        )
        cfg = FinetuneConfig(
            ModelSpec("mmsearch-tiny", str(weak)),
            str(work / f"ft-{lock}.safetensors"),
            fit,
            batch_size=args.batch_size,
            val_fraction=0.2,
            seed=0,
            device="cpu",
        )
        result = finetune(cfg, pairs)
        b = result.baseline
        print(
            f"lock={lock}: {result.train_pairs} train / {result.val_pairs} held-out pairs, {time.perf_counter() - started:.0f} s"
        )
        print(f"  before   T→I R@1 {b['t2i_recall@1']:.3f}  I→T R@1 {b['i2t_recall@1']:.3f}")
        for e in result.fit.history:
            m = e.metrics
            print(
                f"  epoch {e.epoch} (step {e.step:3d}) loss {e.loss:.3f}  T→I R@1 {m['t2i_recall@1']:.3f}  "
                f"I→T R@1 {m['i2t_recall@1']:.3f}  T→I R@5 {m['t2i_recall@5']:.3f}"
            )
        print(json.dumps(result.to_dict()["epochs"]))


def label_accuracy(args: argparse.Namespace, work: Path) -> None:
    from mmsearch.indexer.labels import label_index
    from mmsearch.indexer.pipeline import IndexOptions, run_index

    from mmsearch.labels import LabelSet
    from mmsearch.models import load_encoder
    from mmsearch.storage.table import ItemStore

    encoder = load_encoder(ModelSpec("mmsearch-tiny"), device="cpu")
    catalog = generate_catalog(work / "catalog", n=args.n, seed=args.seed)
    opts = IndexOptions(image_metadata=catalog.jsonl_path)
    run_index([catalog.image_dir], work / "idx", encoder.spec, options=opts, encoder=encoder)
    for column, labels, truth in (("shape_zs", SHAPES, "shape"), ("colour_zs", COLOURS, "colour")):
        label_index(work / "idx", LabelSet(column, labels, ("{}", "a {}")), encoder=encoder)
        metas = [
            json.loads(m)
            for m in ItemStore.open(work / "idx").scan(["metadata"]).column("metadata").to_pylist()
        ]
        acc = float(np.mean([m[column] == m[truth] for m in metas]))
        per = {
            lab: float(np.mean([m[column] == lab for m in metas if m[truth] == lab]))
            for lab in labels
        }
        print(
            f"{truth}: accuracy {acc:.3f} over {len(metas)} images (generate_catalog n={args.n} seed={args.seed}); per class "
            + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
        )


def query_set(args: argparse.Namespace, work: Path) -> None:
    from mmsearch.indexer.pipeline import IndexOptions, run_index

    from mmsearch.engine import SearchIndex
    from mmsearch.evaluation.inputs import read_queries
    from mmsearch.evaluation.runner import evaluate_queries
    from mmsearch.models import load_encoder

    root = Path(args.out) if args.out else work
    encoder = load_encoder(ModelSpec("mmsearch-tiny"), device="cpu")
    catalog = generate_catalog(root / "catalog", n=args.n, seed=5)
    opts = IndexOptions(image_metadata=catalog.jsonl_path, index_type=args.index_type)
    run_index([catalog.image_dir], root / "idx", encoder.spec, options=opts, encoder=encoder)
    lines = []
    for caption in sorted({str(r["caption"]) for r in catalog.rows}):
        lines.append(
            {
                "query": caption,
                "kind": "image",
                "relevant": {str(r["file"]): 2 for r in catalog.rows if r["caption"] == caption},
            }
        )
    for colour in COLOURS:
        for shape in SHAPES:
            rel = {
                str(r["file"]): 1
                for r in catalog.rows
                if (r["colour"], r["shape"]) == (colour, shape)
            }
            if rel:
                lines.append({"query": f"{colour} {shape}", "kind": "image", "relevant": rel})
    queries = root / "catalog" / "queries.jsonl"
    queries.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    report = evaluate_queries(SearchIndex(root / "idx", encoder=encoder), read_queries(queries))
    print(
        f"{report.n_queries} queries over {report.n_items} images ({args.index_type}), {report.seconds:.0f} s"
    )
    for name, figures in report.figures.items():
        print(f"  {name:6s} " + "  ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    print(f"re-run: mmsearch eval {queries} --index {root / 'idx'} --html report.html")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="what", required=True)
    ft = sub.add_parser("finetune")
    ft.add_argument("--n", type=int, default=1000)
    ft.add_argument("--epochs", type=int, default=8)
    ft.add_argument("--batch-size", type=int, default=64)
    ft.add_argument("--lr", type=float, default=2e-3)
    ft.add_argument("--warmup", type=int, default=10)
    ft.add_argument("--locks", default="image,none")
    ft.add_argument("--threads", type=int, default=1)
    lab = sub.add_parser("labels")
    lab.add_argument("--n", type=int, default=1000)
    lab.add_argument("--seed", type=int, default=4242)
    qs = sub.add_parser("queries")
    qs.add_argument("--n", type=int, default=3000)
    qs.add_argument("--index-type", default="ivfpq")
    qs.add_argument("--out", default=None, help="keep the catalog and index here")
    args = ap.parse_args()
    run = {"finetune": finetune_curve, "labels": label_accuracy, "queries": query_set}[args.what]
    with tempfile.TemporaryDirectory(prefix="mmsearch-adapt-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
