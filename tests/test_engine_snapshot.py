"""IndexSnapshot and pipeline.run: a reload is a new snapshot object beside the old one;
hybrid's cut-off calibration is booked as shaping, not re-scoring."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
from mmsearch.indexer.pipeline import IndexOptions, run_index

from mmsearch.engine import SearchIndex
from mmsearch.engine.snapshot import IndexSnapshot, LazyEncoder
from mmsearch.search import pipeline
from mmsearch.search.calibrate import N_PROBES
from mmsearch.search.request import make_query


def _index(paths: list[Path], idx: Path, enc) -> None:  # noqa: ANN001
    run_index(paths, idx, enc.spec, options=IndexOptions(workers=2, batch_size=16), encoder=enc)


def test_reload_returns_a_new_snapshot_and_the_old_one_keeps_answering(tmp_path, fake_encoder):
    from mmsearch.datasets.synthetic import generate_catalog

    cat = generate_catalog(tmp_path / "cat", n=30, seed=11)
    idx = tmp_path / "idx"
    _index([cat.root], idx, fake_encoder)
    old = IndexSnapshot.open(idx, encoders=LazyEncoder(fake_encoder))
    assert old.reload() is old  # nothing newer published
    query = make_query("a red circle", k=100, kind="image", mode="vector")
    before = pipeline.run(old, query)
    generate_catalog(tmp_path / "cat" / "more", n=20, seed=12)
    _index([cat.root], idx, fake_encoder)
    new = old.reload()
    assert new is not old and new.published.table_version > old.published.table_version
    assert new.encoder is old.encoder  # the loaded model is shared, not loaded again
    assert len(pipeline.run(new, query)) == 50
    # A request still holding the old snapshot finishes on it, unchanged.
    again = pipeline.run(old, query)
    assert [h.id for h in again] == [h.id for h in before] and len(again) == 30


class SlowProbes:
    """The fake encoder, but embedding the calibration's batch of probe texts takes 0.5 s."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self.spec, self.dim, self.image_size = inner.spec, inner.dim, inner.image_size
        self.device = "cpu"

    def encode_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if len(texts) >= N_PROBES:
            time.sleep(0.5)
        return self.inner.encode_texts(texts)

    def encode_images(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return self.inner.encode_images(batch)


def test_cutoff_calibration_is_booked_as_shape_not_rescore(tmp_path, small_catalog, fake_encoder):
    idx = tmp_path / "idx"
    opts = IndexOptions(workers=2, batch_size=16, text_column="caption", id_column="id")
    run_index(
        [small_catalog.jsonl_path], idx, fake_encoder.spec, options=opts, encoder=fake_encoder
    )
    engine = SearchIndex(idx, encoder=SlowProbes(fake_encoder))
    assert engine.has_lexical
    first = engine.search("a red circle", k=5, mode="hybrid", cutoff=True)
    assert first.timings["shape"] >= 0.5 > first.timings["rescore"]
    second = engine.search("a red circle", k=5, mode="hybrid", cutoff=True)  # calibrated once
    assert second.timings["shape"] < 0.5


class CountingProbes(SlowProbes):
    """The fake encoder, counting the calibration's batches of probe texts."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        super().__init__(inner)
        self.probe_batches = 0

    def encode_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if len(texts) >= N_PROBES:
            self.probe_batches += 1
        return self.inner.encode_texts(texts)


def test_chance_levels_are_measured_once_per_snapshot_across_engines(
    tmp_path, small_catalog, fake_encoder
):
    idx = tmp_path / "idx"
    opts = IndexOptions(workers=2, batch_size=16, text_column="caption", id_column="id")
    paths = [small_catalog.root, small_catalog.jsonl_path]
    run_index(paths, idx, fake_encoder.spec, options=opts, encoder=fake_encoder)
    first = CountingProbes(fake_encoder)
    hits = SearchIndex(idx, encoder=first).search("a red circle", k=5)  # hybrid, two kinds
    assert hits.score_kind == "relative" and first.probe_batches == 1
    levels = SearchIndex(idx, encoder=first).current.kind_chance()
    # A later engine (a later one-shot command) reads the levels the first one measured.
    later = CountingProbes(fake_encoder)
    engine = SearchIndex(idx, encoder=later)
    assert engine.current.kind_chance() == levels and later.probe_batches == 0
    assert [h.id for h in engine.search("a red circle", k=5)] == [h.id for h in hits]
    # A new snapshot is measured again.
    from mmsearch.datasets.synthetic import generate_catalog

    generate_catalog(small_catalog.root / "more", n=10, seed=5)
    run_index(paths, idx, fake_encoder.spec, options=opts, encoder=fake_encoder)
    SearchIndex(idx, encoder=later).search("a red circle", k=5)
    assert later.probe_batches == 1


def test_a_query_whose_one_leg_keeps_its_scores_measures_no_chance(tmp_path, fake_encoder):
    from mmsearch.datasets.synthetic import generate_catalog

    cat = generate_catalog(tmp_path / "cat", n=20, seed=3)
    idx = tmp_path / "idx"
    _index([cat.root], idx, fake_encoder)  # images only: no words for a lexical leg
    enc = CountingProbes(fake_encoder)
    hits = SearchIndex(idx, encoder=enc).search("a red circle", k=5)
    assert hits and hits.score_kind == "cosine" and enc.probe_batches == 0
