"""Tests of model loading and the batched encoder (mmsearch-tiny: small and offline)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mmsearch.datasets.synthetic import render_item
from mmsearch.errors import BadQueryError, ModelLoadError
from mmsearch.models import TINY_WEIGHTS, ClipEncoder, ModelSpec, fit_square, load_encoder

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny() -> ClipEncoder:
    return load_encoder(ModelSpec("mmsearch-tiny"), device="cpu")


@pytest.fixture(scope="module")
def images(tiny: ClipEncoder) -> np.ndarray:
    rng = np.random.default_rng(0)
    items = [
        ("red", "circle", "left"),
        ("blue", "star", "top"),
        ("green", "square", "center"),
        ("white", "triangle", "right"),
        ("black", "star", "bottom"),
        ("yellow", "circle", "top"),
    ]
    return np.stack([fit_square(render_item(rng, *it, 128), tiny.image_size) for it in items])


def test_tiny_attributes(tiny: ClipEncoder) -> None:
    assert tiny.spec == ModelSpec("mmsearch-tiny")
    assert tiny.device == "cpu"
    assert tiny.dim == 64 and tiny.image_size == 64
    assert len(tiny.mean) == 3 and len(tiny.std) == 3
    assert TINY_WEIGHTS.stat().st_size <= 10 * 1024 * 1024


def test_image_embeddings_are_unit_float32(tiny: ClipEncoder, images: np.ndarray) -> None:
    vecs = tiny.encode_images(images)
    assert vecs.shape == (len(images), tiny.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vecs).all()


def test_text_embeddings_are_unit_float32(tiny: ClipEncoder) -> None:
    vecs = tiny.encode_texts(["a red circle on the left", "blue", "some words it never saw 🙂"])
    assert vecs.shape == (3, tiny.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert tiny.encode_texts([]).shape == (0, tiny.dim)


def test_batch_and_single_agree(tiny: ClipEncoder, images: np.ndarray) -> None:
    together = tiny.encode_images(images)
    one_by_one = tiny.encode_images(images, batch_size=1)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    texts = ["a red circle on the left", "star", "a green square on the center"]
    np.testing.assert_allclose(
        tiny.encode_texts(texts), tiny.encode_texts(texts, batch_size=2), atol=1e-5
    )


def test_float_and_pil_inputs_match_uint8(tiny: ClipEncoder, images: np.ndarray) -> None:
    ref = tiny.encode_images(images)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    np.testing.assert_allclose(tiny.encode_images(as_float), ref, atol=1e-5)
    pils = [Image.fromarray(a) for a in images]
    np.testing.assert_allclose(tiny.encode_pil(pils), ref, atol=1e-5)


def test_bad_image_shape_raises(tiny: ClipEncoder) -> None:
    with pytest.raises(BadQueryError):
        tiny.encode_images(np.zeros((2, 64, 64), dtype=np.uint8))
    with pytest.raises(BadQueryError):
        tiny.encode_texts("not a list")  # type: ignore[arg-type]


def test_concurrent_callers_get_same_results(tiny: ClipEncoder, images: np.ndarray) -> None:
    ref = tiny.encode_images(images)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(tiny.encode_images(images))
        except BaseException as exc:  # noqa: BLE001 - surface to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    for r in results:
        np.testing.assert_allclose(r, ref, atol=1e-5)


def test_local_safetensors_and_pt_paths(tmp_path: Path, tiny: ClipEncoder) -> None:
    state = {k: v.float() for k, v in load_file(str(TINY_WEIGHTS)).items()}
    st_path = tmp_path / "copy.safetensors"
    save_file(state, str(st_path))
    pt_path = tmp_path / "copy.pt"
    torch.save(state, pt_path)
    ref = tiny.encode_texts(["a red circle on the left"])
    for path in (st_path, pt_path):
        enc = load_encoder(ModelSpec("mmsearch-tiny", str(path)), device="cpu")
        np.testing.assert_allclose(enc.encode_texts(["a red circle on the left"]), ref, atol=1e-5)


class _NotAWeight:
    """Pickled into a checkpoint: weights_only loading must refuse it."""


def test_pickle_checkpoint_with_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _NotAWeight()}, path)
    with pytest.raises(ModelLoadError):
        load_encoder(ModelSpec("mmsearch-tiny", str(path)), device="cpu")


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_encoder(ModelSpec("mmsearch-tiny", str(tmp_path / "nope.safetensors")), device="cpu")


def test_unknown_architecture_lists_available() -> None:
    with pytest.raises(ModelLoadError, match=r"available include .*mmsearch-tiny.*\d+ in total"):
        load_encoder(ModelSpec("ViT-Imaginary-99", "x"), device="cpu")


def test_unknown_tag_and_no_weights_raise() -> None:
    with pytest.raises(ModelLoadError, match="unknown pretrained tag"):
        load_encoder(ModelSpec("ViT-B-32", "no_such_tag"), device="cpu")
    # An architecture without weights would be random: refused, never returned.
    with pytest.raises(ModelLoadError, match="mmsearch-tiny"):
        load_encoder(ModelSpec("ViT-B-32", ""), device="cpu")


def test_unknown_dtype_raises() -> None:
    with pytest.raises(ModelLoadError, match="dtype"):
        load_encoder(ModelSpec("mmsearch-tiny"), device="cpu", dtype="int3")


def test_offline_tag_without_cache_fails_fast(tmp_path: Path) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE at import time, hence a fresh interpreter.
    code = (
        "from mmsearch.errors import ModelLoadError\n"
        "from mmsearch.models import load_encoder, ModelSpec\n"
        "try:\n"
        "    load_encoder(ModelSpec('ViT-B-32', 'laion2b_s34b_b79k'), device='cpu')\n"
        "except ModelLoadError as e:\n"
        "    print('ModelLoadError', e)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path),
        "HF_HOME": str(tmp_path),
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.startswith("ModelLoadError"), proc.stdout + proc.stderr
    assert "--pretrained" in proc.stdout and "mmsearch-tiny" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1


def test_bf16_autocast_stays_close_to_fp32(tiny: ClipEncoder, images: np.ndarray) -> None:
    # The CUDA default (bf16 autocast) exercised on CPU: float32 unit output, same directions.
    low = load_encoder(ModelSpec("mmsearch-tiny"), device="cpu", dtype="bf16")
    vecs = low.encode_images(images)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    cosine = (vecs * tiny.encode_images(images)).sum(axis=1)
    assert cosine.min() > 0.98
