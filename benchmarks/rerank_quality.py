"""Quality of mmsearch-tiny (first stage) and mmsearch-tiny-itm (re-rank), same vs other renderer.

Four held-out catalogs, none drawn during training:

* single objects, the catalog generator (``generate_catalog``, another seed);
* single objects, the independent renderer (``benchmarks/other_renderer.py``);
* two-object scenes, the catalog generator;
* two-object scenes, the independent renderer.

Single objects report the first stage's caption R@1 / R@5
(:func:`mmsearch.evaluation.caption_recall`); two-object scenes report text→image and
image→text caption R@1 / R@5 of the first stage alone, its R@depth (the ceiling of
any re-ranker) and R@1 / R@5 after ITM re-ranking at that depth
(:func:`mmsearch.rerank.evaluation.rerank_recall`).

    python benchmarks/rerank_quality.py                     # n = 500 each, depth 50
    python benchmarks/rerank_quality.py --n 200 --max-queries 100
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.other_renderer import write_other_catalog  # noqa: E402
from mmsearch.datasets.synthetic import generate_catalog  # noqa: E402
from mmsearch.evaluation import caption_recall  # noqa: E402
from mmsearch.models import ModelSpec, load_encoder  # noqa: E402
from mmsearch.rerank.evaluation import rerank_recall  # noqa: E402
from mmsearch.rerank.itm import ItmScorer  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, Any]:
    encoder = load_encoder(ModelSpec.parse(args.model, args.pretrained), device=args.device)
    scorer = ItmScorer.load(args.rerank_model, device=args.device)
    out: dict[str, Any] = {"n": args.n, "depth": args.depth, "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="mmsearch-rq-") as tmp:
        root = Path(tmp)
        generate_catalog(root / "same-single", n=args.n, seed=args.seed)
        write_other_catalog(root / "other-single", n=args.n, seed=args.seed, scenes="single")
        generate_catalog(root / "same-pairs", n=args.n, seed=args.seed, scenes="pairs")
        write_other_catalog(root / "other-pairs", n=args.n, seed=args.seed, scenes="pairs")
        for name in ("same-single", "other-single"):
            res = caption_recall(encoder, root / name, partial_queries=())
            out[name] = {k: res[k] for k in ("n_images", "n_captions", "r1", "r5")}
        for name in ("same-pairs", "other-pairs"):
            out[name] = rerank_recall(
                encoder,
                scorer,
                root / name,
                depth=args.depth,
                max_queries=args.max_queries,
                blend=args.blend,
            )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mmsearch-tiny")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--rerank-model", default="mmsearch-tiny-itm")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=31337)
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument(
        "--blend",
        type=float,
        default=None,
        help="weight of the ITM probability vs the first-stage score (default: the model's)",
    )
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    res = run(args)
    for name in ("same-single", "other-single"):
        r = res[name]
        print(
            f"{name:13s} first stage  caption R@1 {r['r1']:.3f}  R@5 {r['r5']:.3f}  ({r['n_images']} images)"
        )
    for name in ("same-pairs", "other-pairs"):
        r = res[name]
        for direction in ("t2i", "i2t"):
            d = r[direction]
            ceiling = d[f"first_r{r['depth']}"]
            print(
                f"{name:13s} {direction}  first R@1 {d['first_r1']:.3f} R@5 {d['first_r5']:.3f} "
                f"R@{r['depth']} {ceiling:.3f}  |  reranked R@1 {d['rerank_r1']:.3f} "
                f"R@5 {d['rerank_r5']:.3f}  ({r[f'{direction}_queries']} queries)"
            )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
