"""The overlapped indexing pipeline: same vectors as a plain loop, JPEG draft decoding,
and no stall on a crashed decode worker or a bad file."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from mmsearch.indexer.decode import decode_file, default_decode_workers
from mmsearch.indexer.pipeline import IndexOptions, run_index
from PIL import Image, ImageDraw

from mmsearch.imageio import load_image
from mmsearch.models.preprocess import fit_square
from mmsearch.storage.table import ItemStore
from tests.hang_decoder import decode_or_die


def _photo(path: Path, size: tuple[int, int], seed: int) -> None:
    """A smooth photo-like JPEG: gradient background plus a few filled shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    grad = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1.0, 3)
    img = Image.fromarray(np.broadcast_to(grad, (h, w, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        draw.ellipse(
            (x, y, x + w // 3, y + h // 3), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
        )
    img.save(path, quality=90)


def _stored(index_dir: Path) -> dict[str, np.ndarray]:
    store = ItemStore.open(index_dir)
    table = store.scan(["uri", "vector"])
    vectors = np.asarray(table.column("vector").to_pylist(), np.float32)
    return dict(zip(table.column("uri").to_pylist(), vectors, strict=True))


def test_pipeline_vectors_equal_a_plain_loop(tmp_path: Path, tiny_encoder) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        _photo(folder / f"p{i}.jpg", (640, 480) if i % 3 else (1280, 960), seed=i)
    opts = IndexOptions(batch_size=4, workers=2, build_index=False)
    run_index([folder], tmp_path / "index", tiny_encoder.spec, options=opts, encoder=tiny_encoder)
    stored = _stored(tmp_path / "index")
    assert len(stored) == 6
    for path in sorted(folder.iterdir()):
        plain = tiny_encoder.encode_images(
            decode_file(str(path), tiny_encoder.image_size)[0][None]
        )[0]
        (uri,) = [u for u in stored if u.endswith(path.name)]
        np.testing.assert_allclose(stored[uri], plain, atol=1e-5)


def test_jpeg_draft_decodes_small_and_embeds_alike(tmp_path: Path, tiny_encoder) -> None:
    path = tmp_path / "big.jpg"
    _photo(path, (4000, 3000), seed=42)
    size = tiny_encoder.image_size
    drafted = load_image(str(path), draft_size=size)
    full = load_image(str(path))
    assert full.size == (4000, 3000) and drafted.size == (500, 375)  # 1/8 scale, sides >= size
    a, b = (tiny_encoder.encode_images(fit_square(im, size)[None])[0] for im in (drafted, full))
    assert float(a @ b) > 0.98


def test_worker_sizing() -> None:
    assert default_decode_workers(2) == 1 and default_decode_workers(16) == 4
    assert (
        default_decode_workers(16, device="cuda") == 15
        and default_decode_workers(1, device="cuda") == 1
    )


def test_dead_worker_and_bad_file_do_not_stall(tmp_path: Path, fake_encoder) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(12):
        _photo(folder / f"p{i}.jpg", (64, 48), seed=i)
    _photo(folder / "die.jpg", (64, 48), seed=99)  # its worker process exits mid-decode
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    opts = IndexOptions(
        batch_size=4, workers=2, build_index=False, decode_fn=decode_or_die, decode_timeout_s=5
    )
    box: dict[str, object] = {}

    def work() -> None:
        box["report"] = run_index(
            [folder], tmp_path / "index", fake_encoder.spec, options=opts, encoder=fake_encoder
        )

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout=240)
    assert not thread.is_alive(), "the pipeline stalled"
    report = box["report"]
    assert report.added == 12 and report.failed == 2  # type: ignore[attr-defined]
    assert {Path(f.path).name for f in report.failures} == {"die.jpg", "broken.jpg"}  # type: ignore[attr-defined]


class _Recording:
    """The fake encoder, recording batch sizes and warm-ups (as the ONNX encoder's)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.spec, self.dim, self.image_size = inner.spec, inner.dim, inner.image_size
        self.device = "cpu"
        self.batches: list[int] = []
        self.warmed: list[str] = []

    def warm_up(self, tower: str) -> None:
        self.warmed.append(tower)

    def encode_images(self, batch):
        self.batches.append(len(batch))
        return self.inner.encode_images(batch)

    def encode_texts(self, texts):
        return self.inner.encode_texts(texts)


def test_a_new_index_starts_decoding_before_its_table_and_embeds_a_small_first_batch(
    tmp_path: Path, small_catalog, fake_encoder, monkeypatch
) -> None:
    """The run's fixed cost: for a new index the decode workers and the image session
    start before the table is created (the first ``import lancedb``), the first batch is
    one decode chunk, and the report says when each phase ended."""
    from mmsearch.indexer.decode import DecodePool
    from mmsearch.indexer.executor import FIRST_BATCH

    events: list[str] = []
    real_start, real_create = DecodePool.start, ItemStore.create
    monkeypatch.setattr(
        DecodePool, "start", lambda self: (events.append("workers"), real_start(self))[1]
    )
    monkeypatch.setattr(
        ItemStore,
        "create",
        classmethod(lambda cls, *a, **k: (events.append("table"), real_create(*a, **k))[1]),
    )
    encoder = _Recording(fake_encoder)
    opts = IndexOptions(batch_size=32)
    report = run_index(
        [small_catalog.image_dir], tmp_path / "index", encoder.spec, options=opts, encoder=encoder
    )
    assert events[:2] == ["workers", "table"] and encoder.warmed == ["image"]
    assert encoder.batches[0] == FIRST_BATCH and max(encoder.batches) == 32
    assert sum(encoder.batches) == report.added == small_catalog.n
    order = ["checked", "model", "table", "first_embed", "last_embed", "written", "ann", "done"]
    assert list(report.phases) == order
    assert [report.phases[p] for p in order] == sorted(report.phases.values())
    assert "started_at" not in report.to_dict() and report.to_dict()["phases"] == report.phases

    events.clear()  # an existing index: its table is read first (the diff), workers only for work
    encoder.warmed.clear()
    again = run_index(
        [small_catalog.image_dir], tmp_path / "index", encoder.spec, options=opts, encoder=encoder
    )
    assert again.unchanged == small_catalog.n and "workers" not in events and encoder.warmed == []


def test_an_exported_model_needs_no_weights_check(
    tmp_path: Path, small_catalog, monkeypatch
) -> None:
    """With its ONNX export at hand, an ONNX run looks no weights up (no hub client import)."""
    import mmsearch.models.backends as backends
    from mmsearch.errors import ModelLoadError
    from mmsearch.models.spec import ModelSpec

    def refuse(spec, **kwargs):
        raise ModelLoadError("weights looked up")

    monkeypatch.setattr(backends, "check_weights_reachable", refuse)
    tiny = ModelSpec("mmsearch-tiny", "")
    opts = IndexOptions(backend="onnx", build_index=False)
    report = run_index([small_catalog.image_dir], tmp_path / "index", tiny, options=opts)
    assert report.added == small_catalog.n
    with_torch = IndexOptions(backend="torch", build_index=False)
    with pytest.raises(ModelLoadError, match="weights looked up"):  # torch loads the weights
        run_index([small_catalog.image_dir], tmp_path / "index2", tiny, options=with_torch)


def test_retain_keeps_the_model_and_table_for_a_caller_that_exits_without_teardown(
    tmp_path: Path, small_catalog, fake_encoder
) -> None:
    """``IndexOptions.retain`` (the CLI's one-shot ``index``) receives the run's encoder and
    table instead of letting them be torn down before ``os._exit``."""
    kept: list[object] = []
    opts = IndexOptions(build_index=False, retain=kept)
    report = run_index(
        [small_catalog.image_dir], tmp_path / "index", fake_encoder.spec, options=opts,
        encoder=fake_encoder,
    )  # fmt: skip
    assert report.added == small_catalog.n
    assert kept[0] is fake_encoder and isinstance(kept[1], ItemStore)
    assert kept[1].count() == small_catalog.n
