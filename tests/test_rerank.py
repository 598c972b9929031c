"""Re-ranking with the shipped BLIP ITM model ``mmsearch-tiny-itm`` (real transformers model)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from mmsearch.datasets.synthetic import pair_caption, render_pair
from mmsearch.errors import BadQueryError, RerankModelError
from mmsearch.rerank import REGISTERED_RERANK_MODELS, ItmReranker
from mmsearch.rerank.itm import ItmScorer
from mmsearch.search.language import QueryTerm
from mmsearch.search.rerank import Reranked, rerank_stage
from mmsearch.search.types import Query, RerankSpec

RED_CIRCLE_BLUE_SQUARE = (("red", "circle"), ("blue", "square"))
# The target scene, its colour swap, its left/right swap and one attribute changed.
SCENES = [
    (("red", "circle"), ("blue", "square")),
    (("blue", "circle"), ("red", "square")),
    (("blue", "square"), ("red", "circle")),
    (("red", "circle"), ("green", "square")),
    (("yellow", "star"), ("black", "triangle")),
]


@pytest.fixture(scope="module")
def scorer() -> ItmScorer:
    return ItmScorer.load("mmsearch-tiny-itm", device="cpu")


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two renderings of each scene in SCENES, as PNG files (seed 5150)."""
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(5150)
    paths = []
    for copy in range(2):
        for i, (left, right) in enumerate(SCENES):
            path = root / f"scene-{i}-{copy}.png"
            render_pair(rng, left, right, 128).save(path)
            paths.append(path)
    return paths


def _image_candidates(paths: list[Path]) -> pa.Table:
    """Candidates as the first stage hands them over: id, uri, kind, stat as indexed, score.

    The first-stage scores put the right scene *last*, so only the ITM can lift it; rows
    come best first, as the pipeline hands them to its re-rank stage.
    """
    stats = [p.stat() for p in paths]
    table = pa.table(
        {
            "id": pa.array(range(len(paths)), pa.int64()),
            "uri": [str(p) for p in paths],
            "kind": ["image"] * len(paths),
            "text": [None] * len(paths),
            "mtime_ns": [s.st_mtime_ns for s in stats],
            "size": [s.st_size for s in stats],
            "score": pa.array(np.linspace(0.9, 0.5, len(paths))[::-1], pa.float32()),
        }
    )
    return table.take(pa.array(np.arange(len(paths))[::-1]))


def _text_query(text: str) -> Query:
    return Query(terms=(QueryTerm(1.0, "text", text),))


def _staged(
    scorer: ItmScorer, query: Query, table: pa.Table, *, k: int = 10, **spec: object
) -> Reranked:
    """The pipeline's re-rank stage with the ITM re-ranker in its slot."""
    q = query.with_(k=k, rerank=RerankSpec(**spec))  # type: ignore[arg-type]
    return rerank_stage(ItmReranker(scorer), q, table)


def _scene_of(uri: str) -> int:
    return int(Path(uri).stem.split("-")[1])


def _objects(scene: int) -> set[tuple[str, str]]:
    return set(SCENES[scene])


def test_text_query_reranks_images(scorer: ItmScorer, scene_files: list[Path]) -> None:
    table = _image_candidates(scene_files)
    # blend=1: the ITM probability alone (the shipped model recommends a mix with the
    # first stage, which here ranks the scenes the wrong way round on purpose)
    out = _staged(
        scorer, _text_query(pair_caption(*RED_CIRCLE_BLUE_SQUARE)), table, depth=50, blend=1.0
    )
    assert out.table.num_rows == len(scene_files) and not out.dropped
    match = out.table.column("match").to_numpy()
    assert np.all(np.diff(match) <= 1e-6)
    assert out.table.column("score").to_pylist() == pytest.approx(match.tolist())
    assert "retrieval_score" in out.table.column_names
    # The first stage ranked the scenes the other way round; the ITM lifts both renderings
    # of the scene itself above its colour swap, its left/right swap, a changed
    # attribute and an unrelated scene (all of which it scores close to 0).
    ranked = [_scene_of(u) for u in out.table.column("uri").to_pylist()]
    assert ranked[:2] == [0, 0], ranked
    assert match[1] > 0.5 and match[2] < 0.05, match  # the near misses score far below it


def test_image_query_reranks_texts(scorer: ItmScorer, scene_files: list[Path]) -> None:
    captions = [pair_caption(left, right) for left, right in SCENES]
    table = pa.table(
        {
            "id": pa.array(range(len(captions)), pa.int64()),
            "uri": [f"captions.csv#{i}" for i in range(len(captions))],
            "kind": ["text"] * len(captions),
            "text": captions,
            "score": pa.array(np.linspace(0.5, 0.9, len(captions)), pa.float32()),
        }
    )
    for path, scene in ((scene_files[0], 0), (scene_files[4], 4), (scene_files[8], 3)):
        with Image.open(path) as im:
            query = Query(terms=(QueryTerm(1.0, "image", im.convert("RGB")),))
        out = _staged(scorer, query, table, blend=1.0)
        texts = out.table.column("text").to_pylist()
        assert texts.index(captions[scene]) < texts.index(captions[4 if scene != 4 else 0])
        if scene == 4:
            assert texts[0] == captions[4]


def test_depth_batches_and_blend(scorer: ItmScorer, scene_files: list[Path]) -> None:
    table = _image_candidates(scene_files)
    query = _text_query(pair_caption(*RED_CIRCLE_BLUE_SQUARE))
    small_batches = ItmScorer(scorer.model, scorer.processor, scorer.name, "cpu", batch_size=3)
    a = _staged(scorer, query, table, k=4, depth=4)
    b = _staged(small_batches, query, table, k=4, depth=4)
    assert a.table.num_rows == 4  # only the first stage's best 4 are re-scored
    assert set(a.table.column("id").to_pylist()) == {9, 8, 7, 6}
    # Per id: the scorer built by hand has no recommended blend, so its rows come in
    # match order while the loaded one orders them by its blend.
    match_a, match_b = (
        dict(
            zip(t.table.column("id").to_pylist(), t.table.column("match").to_pylist(), strict=True)
        )
        for t in (a, b)
    )
    assert match_a.keys() == match_b.keys()
    assert [match_a[i] for i in match_a] == pytest.approx([match_b[i] for i in match_a], abs=1e-5)
    blended = _staged(scorer, query, table, k=4, depth=4, blend=0.5).table.to_pydict()
    first = np.asarray(blended["retrieval_score"])
    scaled = (first - first.min()) / (first.max() - first.min())  # min-max over the candidates
    assert first.max() > first.min()
    for score, match, base in zip(blended["score"], blended["match"], scaled, strict=True):
        assert score == pytest.approx(0.5 * match + 0.5 * base, abs=1e-5)


def test_score_pairs_matches_per_query_scoring(scorer: ItmScorer, scene_files: list[Path]) -> None:
    """The evaluation's many-queries-at-once scoring equals the stage's per-query scoring."""
    images = []
    for path in scene_files:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    embeds = scorer.encode_images(images)
    captions = [pair_caption(left, right) for left, right in SCENES]
    pairs = [(i, t) for t in captions for i in range(len(images))]
    small = ItmScorer(scorer.model, scorer.processor, scorer.name, "cpu", batch_size=7)
    together = small.score_pairs(embeds, [i for i, _ in pairs], [t for _, t in pairs])
    per_text = np.concatenate([scorer.score_images(t, images) for t in captions])
    np.testing.assert_allclose(together, per_text, atol=1e-5)
    per_image = scorer.score_texts(images[3], captions)
    np.testing.assert_allclose(together[3 :: len(images)], per_image, atol=1e-5)
    assert small.score_pairs(embeds, [], []).shape == (0,)
    with pytest.raises(ValueError, match="image indices"):
        scorer.score_pairs(embeds, [0, 1], captions[:1])


def test_min_match_gives_an_honest_empty_answer(scorer: ItmScorer, scene_files: list[Path]) -> None:
    table = _image_candidates(scene_files)
    query = _text_query("a white star to the left of a orange triangle")  # no such image
    out = _staged(scorer, query, table, min_match=0.5)
    assert out.table.num_rows == 0
    assert out.reason and out.reason.startswith("no good match")
    kept = _staged(scorer, _text_query(pair_caption(*RED_CIRCLE_BLUE_SQUARE)), table, min_match=0.3)
    assert kept.table.num_rows >= 1 and min(kept.table.column("match").to_pylist()) >= 0.3
    assert 0 in {_scene_of(u) for u in kept.table.column("uri").to_pylist()}
    assert not {3, 4} & {_scene_of(u) for u in kept.table.column("uri").to_pylist()}


def test_vanished_and_changed_files_are_dropped_and_reported(
    scorer: ItmScorer, scene_files: list[Path], tmp_path: Path
) -> None:
    copies = []
    for p in scene_files:
        shutil.copy2(p, tmp_path / p.name)
        copies.append(tmp_path / p.name)
    table = _image_candidates(copies)
    copies[0].unlink()  # vanished
    with open(copies[5], "ab") as fh:  # changed: the second rendering of the target scene
        fh.write(b"\0")
    (tmp_path / "garbage.png").write_bytes(b"not a png")
    os.replace(tmp_path / "garbage.png", copies[3])  # replaced by an undecodable file
    out = _staged(scorer, _text_query(pair_caption(*RED_CIRCLE_BLUE_SQUARE)), table)
    reasons = {d.id: d.reason for d in out.dropped}
    assert reasons[0] == "vanished since indexing"
    assert reasons[5].startswith("changed since indexing")
    assert reasons[3].startswith("changed since indexing") or reasons[3].startswith("unreadable")
    assert sorted(out.table.column("id").to_pylist()) == [1, 2, 4, 6, 7, 8, 9]


def test_loads_from_a_local_directory(
    scorer: ItmScorer, scene_files: list[Path], tmp_path: Path
) -> None:
    local = tmp_path / "my-itm"
    shutil.copytree(REGISTERED_RERANK_MODELS["mmsearch-tiny-itm"], local)
    other = ItmScorer.load(str(local), device="cpu")
    images = [Image.open(p).convert("RGB") for p in scene_files[:3]]
    text = pair_caption(*RED_CIRCLE_BLUE_SQUARE)
    assert other.score_images(text, images) == pytest.approx(
        scorer.score_images(text, images), abs=1e-6
    )
    config = json.loads((local / "config.json").read_text())
    assert config["architectures"] == ["BlipForImageTextRetrieval"]
    assert (local / "model.safetensors").is_file()


def test_unloadable_models_give_one_clear_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(REGISTERED_RERANK_MODELS["mmsearch-tiny-itm"], broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 100)
    cases = [str(tmp_path / "missing-dir"), str(broken), "no-such-org/no-such-itm-model"]
    for name in cases:
        with pytest.raises(RerankModelError) as err:
            ItmScorer.load(name, device="cpu")
        message = str(err.value)
        assert "\n" not in message and "--rerank-model mmsearch-tiny-itm" in message, message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RerankModelError, match="cannot load rerank model"):
        ItmScorer.load(str(empty), device="cpu")


def test_bad_options_are_refused(scorer: ItmScorer) -> None:
    with pytest.raises(BadQueryError):
        _text_query("x").with_(rerank=RerankSpec(depth=0)).validated()
    with pytest.raises(BadQueryError):
        _text_query("x").with_(rerank=RerankSpec(min_match=1.5)).validated()
    with pytest.raises(BadQueryError, match="score"):
        ItmReranker(scorer).rerank(_text_query("x"), pa.table({"id": [1], "kind": ["image"]}))


def test_a_model_folder_can_recommend_its_blend(scorer: ItmScorer, tmp_path: Path) -> None:
    """``mmsearch_rerank.json`` sets the default blend; a query's own blend wins; bad files fail."""
    from mmsearch.rerank.loader import RERANK_DEFAULTS_FILE

    local = tmp_path / "itm"
    shutil.copytree(REGISTERED_RERANK_MODELS["mmsearch-tiny-itm"], local)
    (local / RERANK_DEFAULTS_FILE).write_text(json.dumps({"blend": 0.25}))
    assert ItmScorer.load(str(local), device="cpu").default_blend == 0.25
    (local / RERANK_DEFAULTS_FILE).unlink()
    assert ItmScorer.load(str(local), device="cpu").default_blend is None

    class Fixed:  # a reranker whose own score is 1 for the first row, 0 for the second
        default_blend = 0.25

        def rerank(self, query: Query, candidates: pa.Table) -> pa.Table:
            return candidates.set_column(
                candidates.schema.get_field_index("score"), "score", pa.array([1.0, 0.0])
            )

    table = pa.table({"id": [1, 2], "score": [0.2, 0.6]})  # retrieval prefers row 2
    by_default = rerank_stage(Fixed(), Query(rerank=RerankSpec(depth=2)), table).table.to_pydict()
    assert by_default["id"] == [2, 1]  # 0.25 × match + 0.75 × scaled retrieval
    assert by_default["score"] == pytest.approx([0.75, 0.25])
    own = rerank_stage(
        Fixed(), Query(rerank=RerankSpec(depth=2, blend=1.0)), table
    ).table.to_pydict()
    assert own["id"] == [1, 2]

    for bad in ('{"blend": 2}', "not json", '{"blend": "high"}'):
        (local / RERANK_DEFAULTS_FILE).write_text(bad)
        with pytest.raises(RerankModelError, match="mmsearch_rerank.json"):
            ItmScorer.load(str(local), device="cpu")


def test_pipeline_stage_returns_match_probabilities(
    scorer: ItmScorer, scene_files: list[Path]
) -> None:
    """The pipeline mixes once: its ITM stage scores by match alone, whatever the model recommends."""
    assert scorer.default_blend is not None  # the shipped model recommends a blend
    stage = ItmReranker(scorer)
    query = Query(terms=(QueryTerm(1.0, "text", pair_caption(*RED_CIRCLE_BLUE_SQUARE)),))
    out = stage.rerank(query, _image_candidates(scene_files)).to_pydict()
    assert out["score"] == pytest.approx(out["match"])
    assert stage.default_blend == scorer.default_blend
