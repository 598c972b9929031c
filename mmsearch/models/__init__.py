"""CLIP models: specs, preprocessing, loading and batched encoding.

Every name but ``ModelSpec`` loads lazily, so that ``import mmsearch`` (and the
decode workers, which import ``mmsearch.models.preprocess``) never pay for numpy,
Pillow or torch before they need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmsearch.models.spec import ModelSpec

if TYPE_CHECKING:
    from mmsearch.models.backends import load_encoder
    from mmsearch.models.base import Encoder
    from mmsearch.models.encoder import ClipEncoder
    from mmsearch.models.loader import TINY_WEIGHTS, available_models, resolve_device
    from mmsearch.models.onnx_encoder import OnnxEncoder
    from mmsearch.models.preprocess import fit_square

_LAZY = {
    "ClipEncoder": "mmsearch.models.encoder",
    "Encoder": "mmsearch.models.base",
    "OnnxEncoder": "mmsearch.models.onnx_encoder",
    "TINY_WEIGHTS": "mmsearch.models.loader",
    "available_models": "mmsearch.models.loader",
    "fit_square": "mmsearch.models.preprocess",
    "load_encoder": "mmsearch.models.backends",
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
    "OnnxEncoder",
    "available_models",
    "fit_square",
    "load_encoder",
    "resolve_device",
]
