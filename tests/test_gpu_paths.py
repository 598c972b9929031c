"""GPU-side code, exercised where it runs on a CPU: the memory-fitted batch size, the
batched JPEG decode path (on the CPU device), its CPU fallback without CUDA, and the
ANN build's faiss-gpu switch falling back to the CPU when FAISS sees no GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mmsearch.indexer.decode import decode_file
from mmsearch.indexer.gpudecode import (
    fit_square_tensor,
    gpu_decode_enabled,
    materialise_batch,
    read_jpeg_or_decode,
)
from mmsearch.indexer.pipeline import IndexOptions, run_index
from PIL import Image

from mmsearch.ann import VectorIndex
from mmsearch.ann.structure import gpu_available
from mmsearch.models.batching import (
    CPU_BATCH_SIZE,
    MAX_GPU_BATCH,
    batch_size_for,
    choose_batch_size,
    vision_bytes_per_image,
)
from mmsearch.models.preprocess import fit_square
from mmsearch.storage.table import ItemStore
from tests.test_pipeline_overlap import _photo


def test_batch_size_fits_free_memory() -> None:
    per = vision_bytes_per_image(224, width=768, patch_size=32, heads=12)  # ViT-B-32
    assert 2 << 20 < per < 4 << 20  # ~2.6 MB: pixels 1.35 MB + activations + scores
    assert choose_batch_size(139 << 30, per) == MAX_GPU_BATCH  # an H200: the cap
    small = choose_batch_size(4 << 30, per)
    assert small % 32 == 0 and small * per <= ((4 << 30) - (2 << 30)) * 0.5
    assert choose_batch_size(1 << 30, per) == 1  # less than the reserve: one at a time
    bigger = vision_bytes_per_image(336, width=1024, patch_size=14, heads=16)  # ViT-L-14-336
    assert bigger > 10 * per and choose_batch_size(24 << 30, bigger) < choose_batch_size(
        24 << 30, per
    )
    with pytest.raises(ValueError):
        choose_batch_size(1 << 30, 0)


def test_batch_size_default_on_cpu_and_when_given(fake_encoder) -> None:
    assert batch_size_for(fake_encoder) == CPU_BATCH_SIZE
    assert batch_size_for(fake_encoder, 7) == 7


def test_gpu_decode_is_off_without_cuda() -> None:
    assert not gpu_decode_enabled(True, "cpu")
    assert not gpu_decode_enabled(None, "cpu") and not gpu_decode_enabled(False, "cuda")


def test_fit_square_tensor_matches_pil_geometry() -> None:
    import torch

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    img = np.array(Image.fromarray(base).resize((400, 300), Image.Resampling.BILINEAR))
    ours = fit_square_tensor(torch.from_numpy(img).permute(2, 0, 1), 64).numpy()
    pil = fit_square(Image.fromarray(img), 64)
    assert ours.shape == pil.shape == (64, 64, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - pil.astype(int)).mean() < 3.0


def test_device_decode_path_embeds_like_the_cpu_path(tmp_path: Path, tiny_encoder) -> None:
    """Workers pass JPEG bytes; the embedding thread decodes them in one decode_jpeg call
    on the encoder's device (the CPU here), a broken JPEG is reported, PNGs decode as usual."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        _photo(folder / f"p{i}.jpg", (320, 240), seed=i)
    Image.open(folder / "p0.jpg").save(folder / "p0.png")
    good = (folder / "p1.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 3])  # header fine, data truncated
    size = tiny_encoder.image_size
    arrays = [read_jpeg_or_decode(str(p), size)[0] for p in sorted(folder.iterdir())]
    assert [a.ndim for a in arrays] == [1, 1, 3, 1, 1, 1, 1]  # cut, p0.jpg, p0.png, p1..p4
    pixels, failed = materialise_batch(arrays, size, "cpu")
    assert pixels.shape == (7, size, size, 3)
    assert [(pos, exc) for pos, _reason, exc in failed] == [
        (0, "OSError")
    ]  # both decoders refuse it

    opts = IndexOptions(build_index=False, workers=1, decode_fn=read_jpeg_or_decode)
    report = run_index(
        [folder], tmp_path / "index", tiny_encoder.spec, options=opts, encoder=tiny_encoder
    )
    assert report.added == 6 and [Path(f.path).name for f in report.failures] == ["cut.jpg"]
    table = ItemStore.open(tmp_path / "index").scan(["uri", "vector"])
    stored = dict(
        zip(table.column("uri").to_pylist(), table.column("vector").to_pylist(), strict=True)
    )
    for name in ("p0.jpg", "p0.png", "p3.jpg"):
        (vec,) = [v for u, v in stored.items() if u.endswith(name)]
        plain = tiny_encoder.encode_images(decode_file(str(folder / name), size)[0][None])[0]
        assert float(np.dot(vec, plain)) > 0.99


def test_cpu_fallback_when_gpu_decode_asked_without_cuda(tmp_path: Path, fake_encoder) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        _photo(folder / f"p{i}.jpg", (64, 48), seed=i)
    opts = IndexOptions(build_index=False, workers=1, gpu_decode=True)
    report = run_index(
        [folder], tmp_path / "index", fake_encoder.spec, options=opts, encoder=fake_encoder
    )
    assert report.added == 3 and report.failed == 0
    table = ItemStore.open(tmp_path / "index").scan(["uri", "vector"])
    for uri, vec in zip(
        table.column("uri").to_pylist(), table.column("vector").to_pylist(), strict=True
    ):
        path = folder / Path(uri).name
        plain = fake_encoder.encode_images(
            decode_file(str(path), fake_encoder.image_size)[0][None]
        )[0]
        np.testing.assert_allclose(vec, plain, atol=1e-6)


def test_ann_gpu_request_trains_on_cpu_without_a_gpu() -> None:
    assert not gpu_available()  # this FAISS build sees no GPU
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = VectorIndex.build(
        x, np.arange(3000), index_type="ivfpq", use_gpu=True, target_recall=0.8
    )
    assert index.info["type"] == "ivfpq" and index.info["gpu"] is False
