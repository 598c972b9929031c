"""ONNX Runtime backend: torch agreement, tokenizer equality, export cache, backend records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest

from mmsearch.errors import ModelLoadError, ModelMismatchError
from mmsearch.models import Encoder, ModelSpec
from mmsearch.models.backends import (
    AGREEMENT_MIN_COSINE,
    check_backend,
    choose_backend,
    load_encoder,
)
from mmsearch.models.exports import find_export
from mmsearch.models.onnx_encoder import OnnxEncoder

TINY = ModelSpec("mmsearch-tiny")
TEXTS = [
    "a red circle on the left",
    "Hello, World!! it's 2024 — naïve café 😀",
    "  several   spaces\tand a tab",
    "don't STOP &amp; go",
    "日本語のテキスト",
    "word " * 80,  # longer than the context: truncated with the end token kept
    "",
]


@pytest.fixture(scope="module")
def onnx_tiny() -> OnnxEncoder:
    return load_encoder(TINY, backend="onnx")


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_tokenizer_equals_open_clip(onnx_tiny: OnnxEncoder) -> None:
    from mmsearch.models.loader import register_model_configs

    register_model_configs()  # open_clip knows mmsearch-tiny's context length (32)
    reference = open_clip.get_tokenizer("mmsearch-tiny")(TEXTS).numpy()
    np.testing.assert_array_equal(onnx_tiny.tokenize(TEXTS), reference)


def test_tiny_embeddings_agree_with_torch(onnx_tiny: OnnxEncoder, tiny_encoder) -> None:
    cos_t = np.sum(onnx_tiny.encode_texts(TEXTS) * tiny_encoder.encode_texts(TEXTS), axis=1)
    images = _images(9, onnx_tiny.image_size)
    out = onnx_tiny.encode_images(images, batch_size=4)  # several batches, odd tail
    cos_i = np.sum(out * tiny_encoder.encode_images(images), axis=1)
    assert cos_t.min() >= AGREEMENT_MIN_COSINE and cos_i.min() >= AGREEMENT_MIN_COSINE
    assert out.shape == (9, onnx_tiny.dim) and np.allclose(
        np.linalg.norm(out, axis=1), 1.0, atol=1e-5
    )


def test_export_is_cached_and_found_without_export(onnx_tiny: OnnxEncoder) -> None:
    assert isinstance(onnx_tiny, Encoder)  # the engine's model Protocol
    assert find_export(TINY, None) == onnx_tiny.export_dir
    meta = json.loads((onnx_tiny.export_dir / "meta.json").read_text())
    assert len(meta["weights_sha256"]) == 64 and meta["dim"] == onnx_tiny.dim
    assert load_encoder(TINY, backend="onnx").export_dir == onnx_tiny.export_dir


def test_backend_choice_and_bad_options() -> None:
    assert choose_backend("auto", "cpu") == "onnx"
    assert choose_backend("torch", "cpu") == "torch"
    assert choose_backend("auto", "cuda") == "torch"
    with pytest.raises(ModelLoadError, match="backend"):
        choose_backend("tensorrt", None)
    with pytest.raises(ModelLoadError, match="ONNX"):
        load_encoder(TINY, backend="torch", quantize="int8")


class _Shifted:
    """An encoder of the same spec whose vectors are off by a rotation (a bad backend)."""

    backend = "onnx"
    quantize = "int8"

    def __init__(self, inner) -> None:
        self.inner, self.spec, self.dim = inner, inner.spec, inner.dim

    def encode_texts(self, texts):
        x = self.inner.encode_texts(texts)
        x = x + 0.2 * np.roll(x, 1, axis=1)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_backend_record_allows_agreeing_backends_only(
    tmp_path: Path, onnx_tiny, tiny_encoder
) -> None:
    assert check_backend(tmp_path, tiny_encoder, record=True) == "torch"
    assert check_backend(tmp_path, onnx_tiny, record=True) == "onnx"  # agrees within tolerance
    with pytest.raises(ModelMismatchError, match="torch backend"):
        check_backend(tmp_path, _Shifted(tiny_encoder), record=True)
    record = json.loads((tmp_path / "backends.json").read_text())
    assert sorted(record["backends"]) == ["onnx", "torch"]


def test_an_export_of_another_weights_file_is_not_reused(tmp_path: Path, monkeypatch) -> None:
    """Two installs share the user cache: the export found must be of this install's weights."""
    import os

    from mmsearch.models.cache import read_json, write_json_atomic
    from mmsearch.models.exports import (
        EXPORT_VERSION,
        exports_registry,
        registry_key,
        weights_file,
    )

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache"))
    spec = ModelSpec("mmsearch-tiny", "")  # its int8 export: the fp32 one ships in the package
    export = exports_registry().parent / "export"
    export.mkdir()
    (export / "meta.json").write_text("{}", encoding="utf-8")

    def register(weights: str) -> None:
        st = os.stat(weights)
        entry = {
            "dir": "export",
            "weights": os.path.realpath(weights),
            "stamp": f"{st.st_size}:{st.st_mtime_ns}",
            "version": EXPORT_VERSION,
        }
        write_json_atomic(exports_registry(), {registry_key(spec, "int8"): entry})

    other = tmp_path / "other-install" / "mmsearch-tiny.safetensors"
    other.parent.mkdir()
    other.write_bytes(b"older weights")
    register(str(other))
    assert find_export(spec, "int8") is None
    register(str(weights_file(spec)))
    assert find_export(spec, "int8") == export
    # an install of an older exporter keeps its own entry beside this one's: neither
    # replaces the other's (which made each command export anew when both were used)
    registry = read_json(exports_registry())
    older = f"{spec.key}|int8|v{EXPORT_VERSION - 1}"
    assert older not in registry and registry_key(spec, "int8") != older
    registry[older] = {"dir": "older", "version": EXPORT_VERSION - 1}
    write_json_atomic(exports_registry(), registry)
    assert find_export(spec, "int8") == export


def test_optimised_graph_is_saved_once_and_reloaded(tmp_path: Path, onnx_tiny) -> None:
    """The first session saves the optimised graph (weights in an external file); later
    sessions load it with the optimisers off, with the same outputs; a damaged saved
    copy is made again."""
    import shutil

    import onnxruntime as ort

    from mmsearch.models.ort_session import create_session, optimised_dir, set_prepacking

    graph = tmp_path / "text.onnx"
    shutil.copy(onnx_tiny.export_dir / "text.onnx", graph)
    tokens = onnx_tiny.tokenize(TEXTS)
    plain = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    expected = plain.run(None, {"tokens": tokens})[0]
    first = create_session(graph, 1).run(None, {"tokens": tokens})[0]
    saved = optimised_dir(graph, ort.__version__)
    weights = saved / "text.weights"
    assert weights.stat().st_size > 0.9 * graph.stat().st_size  # the weights left the graph
    again = create_session(graph, 1).run(None, {"tokens": tokens})[0]
    np.testing.assert_allclose(first, expected, atol=1e-5)
    np.testing.assert_allclose(again, expected, atol=1e-5)
    set_prepacking(False)  # as a one-shot query does
    try:
        unpacked = create_session(graph, 1).run(None, {"tokens": tokens})[0]
    finally:
        set_prepacking(True)
    np.testing.assert_allclose(unpacked, expected, atol=1e-5)
    with open(weights, "r+b") as fh:
        fh.truncate(1000)
    repaired = create_session(graph, 1).run(None, {"tokens": tokens})[0]
    np.testing.assert_allclose(repaired, expected, atol=1e-5)
    assert weights.stat().st_size > 0.9 * graph.stat().st_size


def test_clean_text_ascii_shortcut_equals_ftfy() -> None:
    """Printable ASCII skips ftfy (an import a one-shot query saves); the result is the same."""
    import html
    import string

    import ftfy

    from mmsearch.models.onnx_encoder import clean_text

    rng = np.random.default_rng(7)
    alphabet = np.array(list(string.printable))
    samples = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 40)))) for _ in range(500)]
    samples += [" floral shirt ", "it's", "a <b>tag</b>", "x &amp; y", "caf\u00e9", "a\r\nb"]
    for text in samples:
        assert clean_text(text) == html.unescape(html.unescape(ftfy.fix_text(text))).strip(), text


def test_first_backend_is_recorded_without_encoding(tmp_path: Path, onnx_tiny, tiny_encoder):
    """An image-only first run never loads the text tower for the record; the probes of
    the reference backend are embedded when a second backend arrives."""

    class ImageOnly:
        backend = "onnx"
        quantize = None
        spec = onnx_tiny.spec

        def encode_texts(self, texts):
            raise AssertionError("the first backend of an index embedded the probe texts")

    assert check_backend(tmp_path, ImageOnly(), record=True) == "onnx"
    record = json.loads((tmp_path / "backends.json").read_text())
    assert record["backends"] == {"onnx": {}} and record["reference"] == "onnx"
    assert check_backend(tmp_path, ImageOnly(), record=False) == "onnx"  # known: no encoding
    assert check_backend(tmp_path, tiny_encoder, record=True) == "torch"  # agrees with onnx
    record = json.loads((tmp_path / "backends.json").read_text())
    assert record["reference"] == "onnx"
    assert all(len(entry["probe"]) == 6 for entry in record["backends"].values())
    with pytest.raises(ModelMismatchError, match="onnx backend"):
        check_backend(tmp_path, _Shifted(tiny_encoder), record=False)


def test_openvino_runtime_agrees_with_onnx_runtime(onnx_tiny, monkeypatch) -> None:
    """MMSEARCH_CPU_RUNTIME=openvino runs the same graphs: same vectors within 0.999."""
    pytest.importorskip("openvino")
    from mmsearch.models.onnx_encoder import OnnxEncoder
    from mmsearch.models.openvino_session import OpenVinoSession

    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "openvino")
    ov = OnnxEncoder(onnx_tiny.export_dir, onnx_tiny.spec, threads=2)
    texts = ["a red circle on the left", "blue square", "x " * 100, "café — 42%"]
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    got_t, got_i = ov.encode_texts(texts), ov.encode_images(images)
    assert all(isinstance(s, OpenVinoSession) for s in ov._sessions.values())
    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "onnxruntime")
    want_t, want_i = onnx_tiny.encode_texts(texts), onnx_tiny.encode_images(images)
    assert np.sum(got_t * want_t, axis=1).min() >= 0.999
    assert np.sum(got_i * want_i, axis=1).min() >= 0.999
    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "tensorflow")
    with pytest.raises(ModelLoadError, match="choose one of onnxruntime, openvino, openvino-bf16"):
        OnnxEncoder(onnx_tiny.export_dir, onnx_tiny.spec).encode_texts(["x"])


def test_openvino_bf16_agrees_and_is_recorded_as_its_own_backend(
    onnx_tiny, tmp_path: Path, monkeypatch
) -> None:
    """MMSEARCH_CPU_RUNTIME=openvino-bf16 computes in bfloat16 (CPUs with native bf16
    only): vectors within 0.999 of fp32, labelled onnx-bf16 in the index's record, and
    refused in one line where the CPU would only emulate bf16."""
    pytest.importorskip("openvino")
    from mmsearch.models import openvino_session
    from mmsearch.models.backends import backend_label, read_backend_record

    if not openvino_session.native_bf16():
        monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "openvino-bf16")
        with pytest.raises(ModelLoadError, match="no AVX512_BF16 or AMX"):
            OnnxEncoder(onnx_tiny.export_dir, onnx_tiny.spec)
        return
    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "openvino-bf16")
    bf16 = OnnxEncoder(onnx_tiny.export_dir, onnx_tiny.spec, threads=2)
    assert bf16.precision == "bf16" and backend_label(bf16) == "onnx-bf16"
    texts = ["a red circle on the left", "blue square", "x " * 100]
    images = np.random.default_rng(1).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    got_t, got_i = bf16.encode_texts(texts), bf16.encode_images(images)
    check_backend(tmp_path, bf16, record=True)  # the first backend of the index
    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "onnxruntime")
    want_t, want_i = onnx_tiny.encode_texts(texts), onnx_tiny.encode_images(images)
    assert np.sum(got_t * want_t, axis=1).min() >= AGREEMENT_MIN_COSINE
    assert np.sum(got_i * want_i, axis=1).min() >= AGREEMENT_MIN_COSINE
    assert not np.array_equal(got_i, want_i)  # computed in bf16 indeed, not fp32
    check_backend(tmp_path, onnx_tiny, record=True)  # fp32 queries agree with bf16 rows
    assert set(read_backend_record(tmp_path)["backends"]) == {"onnx-bf16", "onnx"}
    monkeypatch.setattr(openvino_session, "native_bf16", lambda: False)
    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "openvino-bf16")
    with pytest.raises(ModelLoadError, match="no AVX512_BF16 or AMX"):
        OnnxEncoder(onnx_tiny.export_dir, onnx_tiny.spec)
