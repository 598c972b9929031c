"""Shared fixtures: a fast fake encoder, generated catalogs, and the real tiny model."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from mmsearch.models.spec import ModelSpec

# moto's S3 server on loopback: the s3_server and s3 fixtures of the object-store tests
pytest_plugins = ["tests.s3server"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Derived model artefacts (ONNX exports, calibration embeddings) go to a per-run cache.
os.environ.setdefault("MMSEARCH_CACHE", tempfile.mkdtemp(prefix="mmsearch-test-cache-"))


class FakeEncoder:
    """A deterministic stand-in for ClipEncoder: fast, no torch, same contract.

    Images map through a fixed random projection of their 8×8 thumbnails; texts map
    through a hash. Same input, same vector — enough for plumbing tests. Retrieval
    quality is tested with the real mmsearch-tiny model elsewhere.
    """

    def __init__(self, dim: int = 32, image_size: int = 32, name: str = "fake-test") -> None:
        self.spec = ModelSpec(name, "")
        self.dim = dim
        self.image_size = image_size
        self.device = "cpu"
        rng = np.random.default_rng(1234)
        self._proj = rng.standard_normal((8 * 8 * 3, dim)).astype(np.float32)
        self.calls = 0

    def _norm(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def encode_images(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        self.calls += 1
        arr = np.asarray(batch, dtype=np.float32) / 255.0
        n, h, w, _ = arr.shape
        small = arr.reshape(n, 8, h // 8, 8, w // 8, 3).mean(axis=(2, 4)).reshape(n, -1)
        return self._norm(small @ self._proj - 0.5 * self._proj.sum(0) / 64)

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        out = []
        for text in texts:
            seed = int.from_bytes(
                hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "little"
            )
            out.append(np.random.default_rng(seed).standard_normal(self.dim))
        return self._norm(np.asarray(out, dtype=np.float32))


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def small_catalog(tmp_path: Path):
    from mmsearch.datasets.synthetic import generate_catalog

    return generate_catalog(tmp_path / "catalog", n=60, seed=7)


@pytest.fixture(scope="session")
def tiny_encoder():
    from mmsearch.models import load_encoder

    return load_encoder(ModelSpec("mmsearch-tiny", ""), device="cpu")


@pytest.fixture(scope="session")
def readme_cli(tmp_path_factory):
    """The README's Command line block, run once in order (tests/readme_doc.py); later
    README sections run in the folder it leaves (./catalog, ./idx, ./photos, ...)."""
    from tests.readme_doc import run_command_line_block

    return run_command_line_block(tmp_path_factory.mktemp("readme"))
