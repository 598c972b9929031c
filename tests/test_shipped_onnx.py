"""mmsearch-tiny's ONNX export shipped in the package: made from the shipped weights by
scripts/export_tiny_onnx.py, equal to what that script makes now, in agreement with the
torch encoder, found without torch, and never written to by the runtimes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmsearch.models import ModelSpec
from mmsearch.models.backends import AGREEMENT_MIN_COSINE, load_encoder
from mmsearch.models.exports import (
    EXPORT_VERSION,
    SHIPPED_TINY_EXPORT,
    find_export,
    shipped_export,
    weights_file,
)
from mmsearch.models.onnx_encoder import OnnxEncoder

REPO = Path(__file__).resolve().parents[1]
TINY = ModelSpec("mmsearch-tiny")
SHIPPED_FILES = ["image.onnx", "meta.json", "text.onnx", "tokenizer.json"]
TEXTS = [
    "a red circle on the left",
    "blue square",
    "Hello, World!! it's 2024 — naïve café 😀",
    "don't STOP &amp; go",
    "word " * 80,
    "",
]


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_shipped_export_is_of_the_shipped_weights() -> None:
    weights = weights_file(TINY)
    assert weights is not None
    meta = json.loads((SHIPPED_TINY_EXPORT / "meta.json").read_text(encoding="utf-8"))
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    assert meta["weights_sha256"] == digest, "weights changed: run scripts/export_tiny_onnx.py"
    assert meta["weights_size"] == os.stat(weights).st_size
    assert meta["export_version"] == EXPORT_VERSION, (
        "exporter changed: run scripts/export_tiny_onnx.py"
    )
    assert meta["weights"] == "mmsearch-tiny.safetensors"  # no path of the machine that made it
    assert sorted(p.name for p in SHIPPED_TINY_EXPORT.iterdir()) == SHIPPED_FILES
    total = sum(p.stat().st_size for p in SHIPPED_TINY_EXPORT.iterdir())
    assert total < 16_000_000  # fp16-stored weights: a few MB in the package


def test_shipped_export_is_found_first_and_only_for_fp32_tiny() -> None:
    assert find_export(TINY, None) == SHIPPED_TINY_EXPORT
    assert shipped_export(TINY, "int8") is None  # int8 is made (and measured) on demand
    assert shipped_export(ModelSpec("ViT-B-32"), None) is None
    assert shipped_export(ModelSpec("mmsearch-tiny", "/elsewhere/tiny.safetensors"), None) is None


def test_shipped_export_agrees_with_torch(tiny_encoder) -> None:
    onnx = load_encoder(TINY, backend="onnx")
    assert isinstance(onnx, OnnxEncoder) and onnx.export_dir == SHIPPED_TINY_EXPORT
    cos_t = np.sum(onnx.encode_texts(TEXTS) * tiny_encoder.encode_texts(TEXTS), axis=1)
    images = _images(12, onnx.image_size)
    cos_i = np.sum(onnx.encode_images(images) * tiny_encoder.encode_images(images), axis=1)
    assert cos_t.min() >= AGREEMENT_MIN_COSINE and cos_i.min() >= AGREEMENT_MIN_COSINE
    # the runtimes keep their optimised graphs in the cache, never in the package
    assert sorted(p.name for p in SHIPPED_TINY_EXPORT.iterdir()) == SHIPPED_FILES


@pytest.mark.slow
def test_the_script_makes_the_shipped_export(tmp_path: Path) -> None:
    """What scripts/export_tiny_onnx.py makes today computes what the shipped export does."""
    out = tmp_path / "export"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "export_tiny_onnx.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MMSEARCH_CACHE": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == SHIPPED_FILES
    shipped_meta = json.loads((SHIPPED_TINY_EXPORT / "meta.json").read_text(encoding="utf-8"))
    assert json.loads((out / "meta.json").read_text(encoding="utf-8")) == shipped_meta
    assert (out / "tokenizer.json").read_bytes() == (
        SHIPPED_TINY_EXPORT / "tokenizer.json"
    ).read_bytes()
    fresh = OnnxEncoder(out, TINY, threads=1)
    shipped = OnnxEncoder(SHIPPED_TINY_EXPORT, TINY, threads=1)
    np.testing.assert_allclose(fresh.encode_texts(TEXTS), shipped.encode_texts(TEXTS), atol=1e-6)
    images = _images(6, shipped.image_size, seed=3)
    np.testing.assert_allclose(
        fresh.encode_images(images), shipped.encode_images(images), atol=1e-6
    )


def test_exact_fp16_storage_keeps_the_outputs(tmp_path: Path) -> None:
    """Weights fp16 holds exactly are stored as fp16 and cast back; others stay float32."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from mmsearch.models.onnx_export import store_exact_fp16

    rng = np.random.default_rng(0)
    exact = rng.standard_normal((64, 32)).astype(np.float16).astype(np.float32)
    inexact = rng.standard_normal((32, 16)).astype(np.float32)
    inexact[0, 0] = 1.0 + 2.0**-20  # not an fp16 value
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "exact"], ["h"]),
            helper.make_node("MatMul", ["h", "inexact"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [numpy_helper.from_array(exact, "exact"), numpy_helper.from_array(inexact, "inexact")],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((5, 64)).astype(np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert store_exact_fp16(path, min_elements=16) == 1
    stored = {i.name: i.data_type for i in onnx.load(str(path)).graph.initializer}
    assert stored == {"exact__fp16": TensorProto.FLOAT16, "inexact": TensorProto.FLOAT}
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(after[0], before[0])


_NO_TORCH = """
import sys
for name in ("torch", "torchvision", "open_clip"):
    sys.modules[name] = None  # as in the demo's installation: not installed
from mmsearch.errors import ModelLoadError
from mmsearch.models import ModelSpec
from mmsearch.models.backends import choose_backend, load_encoder
enc = load_encoder(ModelSpec("mmsearch-tiny"), "cuda", backend="auto")
print(type(enc).__name__, enc.encode_texts(["a red circle"]).shape, choose_backend("auto", "cuda"))
for spec, backend in ((ModelSpec("mmsearch-tiny"), "torch"), (ModelSpec("ViT-B-32", sys.argv[1]), "onnx")):
    try:
        load_encoder(spec, "cpu", backend=backend)
    except ModelLoadError as exc:
        print(str(exc))
"""


def test_without_torch_tiny_runs_on_onnx_and_the_rest_says_what_to_install(tmp_path: Path) -> None:
    checkpoint = tmp_path / "vit.safetensors"
    checkpoint.write_bytes(b"\0" * 16)  # local weights without an export: one is needed
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MMSEARCH_CACHE": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    first, torch_error, export_error = done.stdout.splitlines()
    assert first == "OnnxEncoder (1, 64) onnx"  # auto: ONNX Runtime, even on a GPU machine
    assert "torch backend needs torch" in torch_error and "pip install mmsearch" in torch_error
    assert "no ONNX export" in export_error and "pip install mmsearch" in export_error
