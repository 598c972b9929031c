"""End-to-end evaluation of a model on a captioned collection (orchestration).

:func:`evaluate_captioned` indexes the collection with the regular pipeline into a
work folder (:func:`index_captioned`), opens it with :class:`~mmsearch.engine.SearchIndex`
and reports text→image and image→text R@k per search variant
(:func:`mmsearch.evaluation.captioned.captioned_report`).

>>> report = evaluate_captioned(read_captioned("captions.json", "images"), spec)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmsearch.engine import SearchIndex
from mmsearch.evaluation.captioned import captioned_report
from mmsearch.evaluation.inputs import CaptionedSet
from mmsearch.evaluation.metrics import DEFAULT_KS
from mmsearch.evaluation.runner import EvalReport, ProgressFn, no_progress
from mmsearch.indexer.pipeline import IndexOptions, run_index
from mmsearch.models.base import Encoder
from mmsearch.models.spec import ModelSpec


def index_captioned(
    data: CaptionedSet,
    work_dir: Path,
    spec: ModelSpec,
    encoder: Encoder,
    progress: ProgressFn,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Indexes a captioned collection into ``work_dir`` with the regular pipeline.

    The images are linked into ``work_dir/images`` as ``NNNNNNN<ext>`` (their position),
    the captions written to ``work_dir/captions.jsonl`` with ids ``c<position>``.
    """
    image_dir = work_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(data.images):
        link = image_dir / f"{i:07d}{src.suffix.lower()}"
        if not link.exists():
            os.symlink(os.path.abspath(src), link)
    captions = work_dir / "captions.jsonl"
    with open(captions, "w", encoding="utf-8") as fh:
        for j, text in enumerate(data.captions):
            fh.write(json.dumps({"id": f"c{j}", "caption": text}, ensure_ascii=False) + "\n")
    report = run_index(
        [image_dir, captions],
        work_dir / "index",
        spec,
        options=IndexOptions(batch_size=batch_size),
        progress=progress,
        encoder=encoder,
    )
    return {"failed": report.failed, "failures": [f"{f.path}: {f.reason}" for f in report.failures]}


def evaluate_captioned(
    data: CaptionedSet,
    spec: ModelSpec,
    *,
    encoder: Encoder | None = None,
    device: str | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    variants: Sequence[str] | None = None,
    worst: int = 8,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Text→image and image→text R@k of ``spec`` on a captioned collection, per variant.

    The collection is indexed (images and captions) into ``work_dir`` (a temporary
    folder by default) with one model load; every caption then queries the images and
    every image (its stored vector) queries the captions. R@k is CLIP_benchmark's: the
    share of queries with a positive in the top k (a caption's one image; any of an
    image's captions).
    """
    started = time.perf_counter()
    progress = progress or no_progress
    if encoder is None:
        from mmsearch.models import load_encoder  # torch loads only when no encoder is given

        encoder = load_encoder(spec, device=device)
    with tempfile.TemporaryDirectory(prefix="mmsearch-eval-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        built = index_captioned(data, root, spec, encoder, progress, batch_size)
        index = SearchIndex(root / "index", encoder=encoder)
        report = captioned_report(index, data, ks, variants, worst, progress)
    report.skipped = built["failures"]
    report.seconds = time.perf_counter() - started
    return report
