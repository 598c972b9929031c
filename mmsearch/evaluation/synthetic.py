"""Caption-match retrieval quality of an encoder on a generated synthetic catalog.

The quick model check used while training ``mmsearch-tiny`` and by its tests; R@k is
computed by :mod:`mmsearch.evaluation.metrics` like every other figure of
``mmsearch eval``.

Images go the production way: files on disk -> PIL -> ``fit_square`` -> encoder.

* Full captions: for every distinct caption in the catalog, rank all images by
  similarity; ``R@k`` = share of captions with at least one exact-caption image
  (same colour, shape and position) in the top ``k``.
* Partial queries (``red circle``, ``a star on the left``): precision@5 = share of
  the top 5 images that satisfy every attribute the query names.

    python -m mmsearch.evaluation --model mmsearch-tiny --n 1000 --seed 12345
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from mmsearch.datasets.synthetic import COLOURS, POSITIONS, SHAPES, generate_catalog
from mmsearch.evaluation.metrics import hit_curve, topk_hits
from mmsearch.models.encoder import ClipEncoder
from mmsearch.models.preprocess import fit_square

DEFAULT_PARTIAL_QUERIES: tuple[str, ...] = (
    "red circle",
    "a red circle",
    "blue square",
    "yellow star",
    "a star on the left",
    "circle on the left",
    "triangle on the top",
    "green",
    "purple",
    "black star",
    "white triangle",
    "orange on the right",
)


def partial_query_grid() -> dict[str, list[str]]:
    """Every partial query of five kinds, e.g. ``{"colour+shape": ["red circle", ...], ...}``."""
    return {
        "colour+shape": [f"{c} {s}" for c in COLOURS for s in SHAPES],
        "shape+position": [f"a {s} on the {p}" for s in SHAPES for p in POSITIONS],
        "colour+position": [f"{c} on the {p}" for c in COLOURS for p in POSITIONS],
        "colour": list(COLOURS),
        "shape": list(SHAPES),
    }


def _precision_at(
    encoder: ClipEncoder,
    image_vecs: npt.NDArray[np.float32],
    rows: Sequence[dict[str, Any]],
    queries: Sequence[str],
    k: int,
) -> dict[str, float]:
    sims = encoder.encode_texts(list(queries)) @ image_vecs.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    out: dict[str, float] = {}
    for query, idx in zip(queries, top, strict=True):
        want = query_constraints(query)
        out[query] = float(np.mean([all(rows[i][a] == v for a, v in want.items()) for i in idx]))
    return out


def query_constraints(query: str) -> dict[str, str]:
    """The colour/shape/position words of ``query``, e.g. ``{"colour": "red", "shape": "circle"}``."""
    words = query.lower().replace(",", " ").split()
    found: dict[str, str] = {}
    for word in words:
        if word in COLOURS:
            found["colour"] = word
        elif word in SHAPES:
            found["shape"] = word
        elif word in POSITIONS:
            found["position"] = word
    return found


def read_catalog(catalog_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of ``catalog.jsonl`` under ``catalog_dir``."""
    path = Path(catalog_dir) / "catalog.jsonl"
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def encode_catalog_images(
    encoder: ClipEncoder,
    catalog_dir: str | Path,
    rows: Sequence[dict[str, Any]],
    *,
    batch_size: int = 256,
) -> npt.NDArray[np.float32]:
    """Loads each row's file from disk, ``fit_square``s it and embeds it (in batches)."""
    root = Path(catalog_dir)
    out: list[npt.NDArray[np.float32]] = []
    for start in range(0, len(rows), batch_size):
        arrs = []
        for row in rows[start : start + batch_size]:
            with Image.open(root / row["file"]) as im:
                arrs.append(fit_square(im.convert("RGB"), encoder.image_size))
        out.append(encoder.encode_images(np.stack(arrs), batch_size=batch_size))
    return np.concatenate(out) if out else np.empty((0, encoder.dim), dtype=np.float32)


def caption_recall(
    encoder: ClipEncoder,
    catalog_dir: str | Path,
    *,
    partial_queries: Sequence[str] = DEFAULT_PARTIAL_QUERIES,
    ks: Sequence[int] = (1, 5),
) -> dict[str, Any]:
    """Full-caption R@k and partial-query precision@5 of ``encoder`` on a catalog.

    Returns ``{"n_images", "n_captions", "r1", "r5", ..., "r_precision", "partial": {query: p@5},
    "partial_mean_p5", "partial_grid_p5": {kind: mean p@5}, "seconds"}``.

    >>> caption_recall(load_encoder(ModelSpec("mmsearch-tiny")), "/tmp/cat")["r1"]  # doctest: +SKIP
    0.97
    """
    start = time.perf_counter()
    rows = read_catalog(catalog_dir)
    if not rows:
        raise ValueError(f"empty catalog: {catalog_dir}")
    image_vecs = encode_catalog_images(encoder, catalog_dir, rows)
    labels = np.array([row["caption"] for row in rows])
    captions = sorted(set(labels.tolist()))
    sims = encoder.encode_texts(captions) @ image_vecs.T
    positives = labels[None, :] == np.array(captions)[:, None]
    curve = hit_curve(topk_hits(sims, positives, max(ks)))
    result: dict[str, Any] = {"n_images": len(rows), "n_captions": len(captions)}
    for k in ks:
        result[f"r{k}"] = float(curve[k - 1])
    # R-precision: with m images of a caption, the share of its top m that have it
    # (stricter than R@k: every matching image must outrank every other image).
    order = np.argsort(-sims, axis=1, kind="stable")
    counts = {c: int((labels == c).sum()) for c in captions}
    result["r_precision"] = float(
        np.mean([(labels[order[i, : counts[c]]] == c).mean() for i, c in enumerate(captions)])
    )
    partial = (
        _precision_at(encoder, image_vecs, rows, partial_queries, 5) if partial_queries else {}
    )
    result["partial"] = partial
    result["partial_mean_p5"] = float(np.mean(list(partial.values()))) if partial else float("nan")
    # Mean precision@5 over every partial query of each kind (all have >= 5 matches in n >= 1000).
    result["partial_grid_p5"] = {
        kind: float(np.mean(list(_precision_at(encoder, image_vecs, rows, queries, 5).values())))
        for kind, queries in partial_query_grid().items()
    }
    result["seconds"] = time.perf_counter() - start
    return result


def evaluate_generated(
    encoder: ClipEncoder, n: int = 1000, seed: int = 12345, *, workdir: str | Path | None = None
) -> dict[str, Any]:
    """Generates a held-out catalog (``n`` images, ``seed``) and runs :func:`caption_recall`."""
    if workdir is not None:
        generate_catalog(workdir, n=n, seed=seed)
        return caption_recall(encoder, workdir)
    with tempfile.TemporaryDirectory(prefix="mmsearch-eval-") as tmp:
        generate_catalog(tmp, n=n, seed=seed)
        return caption_recall(encoder, tmp)


def main(argv: list[str] | None = None) -> None:
    """``python -m mmsearch.evaluation``: prints the figures for one model."""
    from mmsearch.models.loader import load_encoder
    from mmsearch.models.spec import ModelSpec

    ap = argparse.ArgumentParser(description="Caption-match recall on a generated catalog.")
    ap.add_argument("--model", default="mmsearch-tiny")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--catalog", default=None, help="existing/target catalog folder (default: temporary)"
    )
    args = ap.parse_args(argv)
    encoder = load_encoder(ModelSpec.parse(args.model, args.pretrained), device=args.device)
    res = evaluate_generated(encoder, n=args.n, seed=args.seed, workdir=args.catalog)
    print(
        f"model {encoder.spec.key}  images {res['n_images']}  captions {res['n_captions']}  seed {args.seed}"
    )
    print(
        f"full captions: R@1 {res['r1']:.3f}  R@5 {res['r5']:.3f}  R-precision {res['r_precision']:.3f}"
    )
    for query, p in res["partial"].items():
        print(f"partial {query!r}: precision@5 {p:.2f}")
    print(f"partial mean precision@5 {res['partial_mean_p5']:.3f}")
    for kind, p in res["partial_grid_p5"].items():
        print(f"all {kind} queries: mean precision@5 {p:.3f}")
    print(f"({res['seconds']:.1f}s)")


if __name__ == "__main__":
    main()
