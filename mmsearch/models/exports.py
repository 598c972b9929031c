"""Where the ONNX exports of each model live, and finding a valid one (no torch, no ONNX).

``exports.json`` in ``$MMSEARCH_CACHE/onnx`` maps each (model spec, quantisation) to
its export directory, the weights file it was made from and that file's size and
mtime; :func:`find_export` trusts an entry only while all of that still holds.
:mod:`mmsearch.models.onnx_export` writes exports and entries; queries and indexing
read them here, without importing the exporter (torch) or the encoder.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmsearch.models.cache import read_json, user_cache_dir
from mmsearch.models.spec import TINY_MODEL_NAME, ModelSpec

#: Bump when the exported graphs change, so old exports are not reused. 2: the weights
#: are graph initializers (registered submodules), which int8 quantisation needs.
EXPORT_VERSION = 2


def onnx_root() -> Path:
    root = user_cache_dir() / "onnx"
    root.mkdir(parents=True, exist_ok=True)
    return root


def exports_registry() -> Path:
    """The JSON file mapping ``registry_key`` to export directories."""
    return onnx_root() / "exports.json"


def registry_key(spec: ModelSpec, quantize: str | None) -> str:
    return f"{spec.key}|{quantize or 'fp32'}"


def weights_file(spec: ModelSpec) -> str | None:
    """The weights file ``spec`` names, when that is known without open_clip (else None)."""
    if spec.name == TINY_MODEL_NAME and not spec.pretrained:
        return str(Path(__file__).resolve().parent / "weights" / f"{TINY_MODEL_NAME}.safetensors")
    if spec.pretrained and os.path.isfile(os.path.expanduser(spec.pretrained)):
        return os.path.expanduser(spec.pretrained)
    return None


def find_export(spec: ModelSpec, quantize: str | None) -> Path | None:
    """The cached export of ``spec`` when its weights file is unchanged, else None."""
    entry = read_json(exports_registry()).get(registry_key(spec, quantize))
    if not isinstance(entry, dict) or entry.get("version") != EXPORT_VERSION:
        return None  # none yet, or made by an older exporter: export anew
    current = weights_file(spec)
    if current is not None and os.path.realpath(current) != entry.get("weights"):
        return None  # another install's weights (same spec key, other file): export anew
    try:
        st = os.stat(entry["weights"])
    except (OSError, KeyError, TypeError):
        return None
    target = exports_registry().parent / str(entry.get("dir", ""))
    if (
        entry.get("stamp") != f"{st.st_size}:{st.st_mtime_ns}"
        or not (target / "meta.json").is_file()
    ):
        return None
    return target
