"""Retrieval evaluation: ``mmsearch eval`` and the model checks used in training.

* :mod:`~mmsearch.evaluation.metrics`: recall@k, MRR, nDCG@10 and CLIP_benchmark's R@k.
* :mod:`~mmsearch.evaluation.inputs`: query sets (JSONL) and captioned collections.
* :mod:`~mmsearch.evaluation.runner`: runs them through the search API, exact vs ANN.
* :mod:`~mmsearch.evaluation.captioned`: text→image and image→text R@k over an index of
  a captioned collection (indexing it first: :mod:`mmsearch.maintenance.evaluate`).
* :mod:`~mmsearch.evaluation.report_html`: the HTML report (recall@K plot, worst queries).
* :mod:`~mmsearch.evaluation.synthetic`: caption-match figures on a generated catalog.

Names load lazily, so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "EvalQuery": "mmsearch.evaluation.inputs",
    "CaptionedSet": "mmsearch.evaluation.inputs",
    "read_queries": "mmsearch.evaluation.inputs",
    "read_captioned": "mmsearch.evaluation.inputs",
    "EvalReport": "mmsearch.evaluation.runner",
    "evaluate_queries": "mmsearch.evaluation.runner",
    "captioned_report": "mmsearch.evaluation.captioned",
    "write_html_report": "mmsearch.evaluation.report_html",
    "caption_recall": "mmsearch.evaluation.synthetic",
    "encode_catalog_images": "mmsearch.evaluation.synthetic",
    "evaluate_generated": "mmsearch.evaluation.synthetic",
    "read_catalog": "mmsearch.evaluation.synthetic",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mmsearch.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY)
