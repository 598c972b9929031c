"""Where the ONNX exports of each model live, and finding a valid one (no torch, no ONNX).

mmsearch-tiny's fp32 export ships inside the package (:data:`SHIPPED_TINY_EXPORT`,
written by ``scripts/export_tiny_onnx.py`` from the shipped safetensors and checked
against them by ``tests/test_shipped_onnx.py``), so the demo, the tests' tiny model
and any tiny index run on ONNX Runtime without torch or open_clip installed.

Every other export is made on first use: ``exports.json`` in ``$MMSEARCH_CACHE/onnx``
maps each (model spec, quantisation, exporter version) to its export directory, the weights file it
was made from and that file's size and mtime; :func:`find_export` trusts an entry
only while all of that still holds. :mod:`mmsearch.models.onnx_export` writes
exports and entries; queries and indexing read them here, without importing the
exporter (torch) or the encoder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from mmsearch.models.cache import read_json, user_cache_dir
from mmsearch.models.spec import TINY_MODEL_NAME, ModelSpec

#: Bump when the exported graphs change, so old exports are not reused. 2: the weights
#: are graph initializers (registered submodules), which int8 quantisation needs. 3: a
#: causal text tower's graph takes any sequence length (``text_any_length``).
EXPORT_VERSION = 3
#: mmsearch-tiny's fp32 export, shipped beside its weights (no torch needed to use it).
SHIPPED_TINY_EXPORT = Path(__file__).resolve().parent / "weights" / f"{TINY_MODEL_NAME}-onnx"


def onnx_root() -> Path:
    root = user_cache_dir() / "onnx"
    root.mkdir(parents=True, exist_ok=True)
    return root


def exports_registry() -> Path:
    """The JSON file mapping ``registry_key`` to export directories."""
    return onnx_root() / "exports.json"


def registry_key(spec: ModelSpec, quantize: str | None) -> str:
    """The registry entry of ``spec``'s export for this exporter version: installs of
    two versions sharing one cache each keep their own export, instead of replacing
    each other's entry (and exporting anew) on every command."""
    return f"{spec.key}|{quantize or 'fp32'}|v{EXPORT_VERSION}"


def weights_file(spec: ModelSpec) -> str | None:
    """The weights file ``spec`` names, when that is known without open_clip (else None)."""
    if spec.name == TINY_MODEL_NAME and not spec.pretrained:
        return str(Path(__file__).resolve().parent / "weights" / f"{TINY_MODEL_NAME}.safetensors")
    if spec.pretrained and os.path.isfile(os.path.expanduser(spec.pretrained)):
        return os.path.expanduser(spec.pretrained)
    return None


def shipped_export(spec: ModelSpec, quantize: str | None) -> Path | None:
    """The export shipped in the package for ``spec`` (mmsearch-tiny, fp32), else None.

    Trusted while its ``meta.json`` is of this exporter version and names a weights
    file of the shipped weights' size (one ``stat``; the test suite compares sha256).
    """
    if quantize or spec.name != TINY_MODEL_NAME or spec.pretrained:
        return None
    meta = read_json(SHIPPED_TINY_EXPORT / "meta.json")
    weights = weights_file(spec)
    try:
        size = os.stat(weights).st_size if weights else None
    except OSError:
        return None
    if meta.get("export_version") != EXPORT_VERSION or meta.get("weights_size") != size:
        return None
    return SHIPPED_TINY_EXPORT


def derived_dir(export_dir: str | os.PathLike[str]) -> Path:
    """Where the runtimes keep what they derive from ``export_dir``'s graphs (optimised
    graphs, compiled blobs): the export directory itself when it lives in the cache,
    else a cache directory of its own (a shipped export stays untouched: the package
    folder may be read-only, or a git checkout)."""
    export = Path(export_dir).resolve()
    root = onnx_root().resolve()
    if export.is_relative_to(root):
        return export
    tag = hashlib.sha256(str(export).encode()).hexdigest()[:16]
    target = root / "derived" / f"{export.name}-{tag}"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only cache: the runtimes then work in memory (only slower)
        pass
    return target


def find_export(spec: ModelSpec, quantize: str | None) -> Path | None:
    """The shipped export of ``spec``, or its cached export when its weights file is
    unchanged, else None."""
    shipped = shipped_export(spec, quantize)
    if shipped is not None:
        return shipped
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


def publish_derived(tmp: Path, saved: Path, stale: Sequence[str]) -> bool:
    """Renames the directory ``tmp`` (written in full) to ``saved``, atomically: a
    concurrent reader sees no directory or a whole one. Then removes the siblings of
    ``saved`` that match a ``stale`` pattern (what an older graph or runtime derived).
    False when another process published ``saved`` first (``tmp`` is removed)."""
    try:
        os.replace(tmp, saved)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    for pattern in stale:
        for old in saved.parent.glob(pattern):
            if old != saved and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return True
