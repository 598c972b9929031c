"""CLIP models: specs, preprocessing, loading and batched encoding.

torch-backed names (``ClipEncoder``, ``load_encoder``, ...) load lazily, so that
decode worker processes, which import ``mmsearch.models.preprocess``, never pay for
importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmsearch.models.base import Encoder
from mmsearch.models.preprocess import fit_square
from mmsearch.models.spec import ModelSpec

if TYPE_CHECKING:
    from mmsearch.models.encoder import ClipEncoder
    from mmsearch.models.loader import TINY_WEIGHTS, available_models, load_encoder, resolve_device

_LAZY = {
    "ClipEncoder": "mmsearch.models.encoder",
    "TINY_WEIGHTS": "mmsearch.models.loader",
    "available_models": "mmsearch.models.loader",
    "load_encoder": "mmsearch.models.loader",
    "resolve_device": "mmsearch.models.loader",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mmsearch.models' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "TINY_WEIGHTS",
    "ClipEncoder",
    "Encoder",
    "ModelSpec",
    "available_models",
    "fit_square",
    "load_encoder",
    "resolve_device",
]
