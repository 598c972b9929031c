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


def _fp32(encoder: OnnxEncoder) -> OnnxEncoder:
    """The same export on ONNX Runtime in float32 (the reference of the runtime tests)."""
    return OnnxEncoder(encoder.export_dir, encoder.spec, threads=2, runtime="onnxruntime")


def test_openvino_runtime_agrees_with_onnx_runtime(onnx_tiny, monkeypatch) -> None:
    """MMSEARCH_CPU_RUNTIME=openvino runs the same graphs: same vectors within 0.999."""
    pytest.importorskip("openvino")
    from mmsearch.models.openvino_session import OpenVinoSession

    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "openvino")
    ov = OnnxEncoder(onnx_tiny.export_dir, onnx_tiny.spec, threads=2)
    texts = ["a red circle on the left", "blue square", "x " * 100, "café — 42%"]
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    got_t, got_i = ov.encode_texts(texts), ov.encode_images(images)
    assert ov.runtime == "openvino" and ov.precision == "fp32"
    assert all(isinstance(s, OpenVinoSession) for s in ov._sessions.values())
    fp32 = _fp32(onnx_tiny)
    want_t, want_i = fp32.encode_texts(texts), fp32.encode_images(images)
    assert np.sum(got_t * want_t, axis=1).min() >= 0.999
    assert np.sum(got_i * want_i, axis=1).min() >= 0.999
    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "tensorflow")
    with pytest.raises(
        ModelLoadError, match="choose one of auto, onnxruntime, openvino, openvino-bf16"
    ):
        OnnxEncoder(onnx_tiny.export_dir, onnx_tiny.spec).encode_texts(["x"])


def test_openvino_keeps_an_ir_per_precision_and_remakes_a_damaged_one(
    tmp_path: Path, onnx_tiny, monkeypatch
) -> None:
    """The ONNX graph is converted to OpenVINO IR once per precision (bf16: weights stored
    in float16, half the bytes of fp32's) and later sessions compile that IR (or its cached
    compiled form); a truncated weights file is made again; the compiled-blob caches of the
    ONNX graphs that the IRs replaced are swept. Converting starts no process: OpenVINO's
    conversion tool reports usage over the network from a forked process unless opted
    out; the Core's reader does not."""
    pytest.importorskip("openvino")
    import multiprocessing
    import shutil

    started: list[object] = []
    monkeypatch.setattr(multiprocessing.Process, "start", lambda self: started.append(self))

    from mmsearch.models.openvino_session import OpenVinoSession, ir_dir, native_bf16

    graph = tmp_path / "image.onnx"
    shutil.copy(onnx_tiny.export_dir / "image.onnx", graph)
    legacy = tmp_path / "image.openvino-2024.0.0"  # an older release's compiled-graph cache
    legacy.mkdir()
    images = np.random.default_rng(2).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    want = _fp32(onnx_tiny).encode_images(images)

    def embed(precision: str) -> np.ndarray:
        out = OpenVinoSession(graph, 1, tmp_path, precision=precision).run(None, {"pixels": images})
        return out[0] / np.linalg.norm(out[0], axis=1, keepdims=True)

    precisions = ["fp32", "bf16"] if native_bf16() else ["fp32"]
    for precision in precisions:
        first = embed(precision)
        saved = ir_dir(graph, tmp_path, precision)
        weights = saved / "image.bin"
        size = weights.stat().st_size
        np.testing.assert_array_equal(embed(precision), first)  # from the kept IR
        assert np.sum(first * want, axis=1).min() >= AGREEMENT_MIN_COSINE
        with open(weights, "r+b") as fh:
            fh.truncate(100)
        shutil.rmtree(saved / "compiled")  # (the compiled blob holds the weights too)
        np.testing.assert_array_equal(embed(precision), first)
        assert weights.stat().st_size == size
    assert not legacy.exists()
    assert started == []
    if native_bf16():
        fp32_bytes = (ir_dir(graph, tmp_path, "fp32") / "image.bin").stat().st_size
        bf16_bytes = (ir_dir(graph, tmp_path, "bf16") / "image.bin").stat().st_size
        assert bf16_bytes < 0.8 * fp32_bytes  # ViT-B-32: 176 of 351 MB (small tensors stay fp32)


def test_openvino_bf16_agrees_and_is_not_told_apart_from_fp32(
    onnx_tiny, tmp_path: Path, monkeypatch
) -> None:
    """MMSEARCH_CPU_RUNTIME=openvino-bf16 computes in bfloat16 (CPUs with native bf16
    only): vectors within 0.999 of fp32, recorded as the same backend (``onnx``: no probe
    on every query of an index embedded the other way), an index recorded as
    ``onnx-bf16`` by an earlier release still read; refused in one line where the CPU
    would only emulate bf16."""
    pytest.importorskip("openvino")
    from mmsearch.models import openvino_session
    from mmsearch.models.backends import backend_label, read_backend_record

    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "openvino-bf16")
    if not openvino_session.native_bf16():
        with pytest.raises(ModelLoadError, match="no AVX512_BF16 or AMX"):
            OnnxEncoder(onnx_tiny.export_dir, onnx_tiny.spec)
        return
    bf16 = OnnxEncoder(onnx_tiny.export_dir, onnx_tiny.spec, threads=2)
    assert bf16.precision == "bf16" and backend_label(bf16) == "onnx"
    texts = ["a red circle on the left", "blue square", "x " * 100]
    images = np.random.default_rng(1).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    got_t, got_i = bf16.encode_texts(texts), bf16.encode_images(images)
    fp32 = _fp32(onnx_tiny)
    want_t, want_i = fp32.encode_texts(texts), fp32.encode_images(images)
    assert np.sum(got_t * want_t, axis=1).min() >= AGREEMENT_MIN_COSINE
    assert np.sum(got_i * want_i, axis=1).min() >= AGREEMENT_MIN_COSINE
    assert not np.array_equal(got_i, want_i)  # computed in bf16 indeed, not fp32
    old = tmp_path / "old"
    old.mkdir()
    (old / "backends.json").write_text(
        json.dumps(
            {"model": bf16.spec.key, "reference": "onnx-bf16", "backends": {"onnx-bf16": {}}}
        )
    )
    check_backend(old, fp32, record=True)  # probes both (the old label's by OpenVINO bf16)
    assert set(read_backend_record(old)["backends"]) == {"onnx-bf16", "onnx"}
    monkeypatch.setattr(openvino_session, "native_bf16", lambda: False)
    with pytest.raises(ModelLoadError, match="no AVX512_BF16 or AMX"):
        OnnxEncoder(onnx_tiny.export_dir, onnx_tiny.spec)


def test_auto_runtime_is_bf16_where_native_except_for_one_shot_and_int8(monkeypatch) -> None:
    """``auto`` (the default): OpenVINO bf16 where OpenVINO is installed and the CPU has
    native bf16; ONNX Runtime for a process that asked for a fast start (a one-shot CLI
    query), for int8 graphs, on other CPUs and without OpenVINO."""
    from mmsearch.cli.faststart import prepare_one_shot_query
    from mmsearch.models import openvino_session
    from mmsearch.models.openvino_session import cpu_runtime
    from mmsearch.models.ort_session import set_prepacking

    monkeypatch.delenv("MMSEARCH_CPU_RUNTIME", raising=False)
    monkeypatch.setattr(openvino_session, "_fast_start", False)
    monkeypatch.setattr(openvino_session, "_has_openvino", lambda: True)
    monkeypatch.setattr(openvino_session, "native_bf16", lambda: True)
    assert cpu_runtime() == "openvino-bf16"
    assert cpu_runtime(quantized=True) == "onnxruntime"
    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "onnxruntime")
    assert cpu_runtime() == "onnxruntime"  # a named runtime wins
    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "auto")
    monkeypatch.setattr(openvino_session, "_has_openvino", lambda: False)
    assert cpu_runtime() == "onnxruntime"
    with pytest.raises(ModelLoadError, match="needs OpenVINO: pip install openvino"):
        cpu_runtime("openvino")
    monkeypatch.setattr(openvino_session, "_has_openvino", lambda: True)
    monkeypatch.setattr(openvino_session, "native_bf16", lambda: False)
    assert cpu_runtime() == "onnxruntime"
    monkeypatch.setattr(openvino_session, "native_bf16", lambda: True)
    # this test process goes on using pandas: only the runtime part of the one-shot setup
    monkeypatch.setattr("mmsearch.cli.faststart.arrow_without_pandas", lambda: None)
    prepare_one_shot_query()
    try:
        assert cpu_runtime() == "onnxruntime"
    finally:
        set_prepacking(True)


def test_a_plain_index_run_embeds_on_the_default_runtime_and_agrees_with_fp32(
    tmp_path: Path, monkeypatch
) -> None:
    """Without MMSEARCH_CPU_RUNTIME an index run embeds on what ``auto`` resolves to here
    (OpenVINO bf16 on a CPU with native bf16 and OpenVINO installed, else ONNX Runtime),
    says so in its report, and its rows score a query within 0.01 of an index embedded
    by ONNX Runtime in fp32."""
    from mmsearch.indexer.pipeline import IndexOptions, run_index

    import mmsearch
    from mmsearch.datasets.synthetic import generate_catalog
    from mmsearch.models.openvino_session import cpu_runtime

    catalog = generate_catalog(tmp_path / "catalog", n=16, seed=5)
    opts = IndexOptions(workers=1, backend="onnx")
    monkeypatch.delenv("MMSEARCH_CPU_RUNTIME", raising=False)
    default = run_index([catalog.image_dir], tmp_path / "default", TINY, options=opts)
    assert default.runtime == cpu_runtime("auto")
    monkeypatch.setenv("MMSEARCH_CPU_RUNTIME", "onnxruntime")
    fp32 = run_index([catalog.image_dir], tmp_path / "fp32", TINY, options=opts)
    assert fp32.runtime == "onnxruntime" and default.added == fp32.added > 0
    query = _fp32(load_encoder(TINY, backend="onnx")).encode_texts(["a red circle"])[0]
    scores = []
    for name in ("default", "fp32"):
        hits = mmsearch.open(tmp_path / name).search_vector(query, k=default.added, exact=True)
        scores.append({Path(hit.uri).name: hit.score for hit in hits})
    assert scores[0].keys() == scores[1].keys()
    assert max(abs(scores[0][uri] - scores[1][uri]) for uri in scores[0]) <= 0.01


def test_openvino_sessions_answer_threads_at_once(onnx_tiny) -> None:
    """A server embeds queries on several threads: an OpenVINO session answers each
    with its own vectors, as one thread would."""
    pytest.importorskip("openvino")
    from concurrent.futures import ThreadPoolExecutor

    ov = OnnxEncoder(onnx_tiny.export_dir, onnx_tiny.spec, threads=2, runtime="openvino")
    batches = [_images(3 + i % 4, 64, seed=i) for i in range(24)]
    texts = [[f"a {c} circle {i}"] * (1 + i % 3) for i, c in enumerate(["red", "blue"] * 12)]
    alone = [ov.encode_images(b) for b in batches], [ov.encode_texts(t) for t in texts]
    with ThreadPoolExecutor(8) as pool:
        images = list(pool.map(ov.encode_images, batches))
        words = list(pool.map(ov.encode_texts, texts))
    for got, want in zip([*images, *words], [*alone[0], *alone[1]], strict=True):
        np.testing.assert_array_equal(got, want)


def test_openvino_without_room_for_its_ir_compiles_the_onnx_graph(
    tmp_path: Path, onnx_tiny, monkeypatch
) -> None:
    """A cache that cannot take the IR (full disk) costs memory, not the session: the ONNX
    graph is compiled as it is, and no half-written IR is left behind."""
    ov = pytest.importorskip("openvino")
    import shutil

    from mmsearch.models.openvino_session import OpenVinoSession

    def full(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Cannot write: No space left on device")

    monkeypatch.setattr(ov, "save_model", full)
    graph = tmp_path / "image.onnx"
    shutil.copy(onnx_tiny.export_dir / "image.onnx", graph)
    images = _images(3, 64, seed=4)
    out = OpenVinoSession(graph, 1, tmp_path).run(None, {"pixels": images})[0]
    want = _fp32(onnx_tiny).encode_images(images)
    assert np.sum(out / np.linalg.norm(out, axis=1, keepdims=True) * want, axis=1).min() > 0.999
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.onnx"]


def test_onnx_runtime_without_room_for_its_optimised_graph_optimises_in_memory(
    tmp_path: Path, onnx_tiny, monkeypatch
) -> None:
    """Saving the optimised graph failing (full disk) costs the speed-up, not the session;
    nothing half-written is left behind."""
    import shutil

    import onnxruntime as ort

    from mmsearch.models.ort_session import create_session

    real = ort.InferenceSession

    def session(path: str, options: object = None, **kwargs: object) -> object:
        if getattr(options, "optimized_model_filepath", ""):
            raise RuntimeError("Failed to write: No space left on device")
        return real(path, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    graph = tmp_path / "text.onnx"
    shutil.copy(onnx_tiny.export_dir / "text.onnx", graph)
    tokens = onnx_tiny.tokenize(TEXTS)
    got = create_session(graph, 1).run(None, {"tokens": tokens})[0]
    want = real(str(graph), providers=["CPUExecutionProvider"]).run(None, {"tokens": tokens})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.onnx"]
