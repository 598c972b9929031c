"""The ITM training tool: labels of the per-word check, the ranking loss, a short seeded run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmsearch.rerank.itm import ItmScorer
from mmsearch.training.itm_data import Pair, Single, colour_swap, side_swap
from mmsearch.training.train_itm import (
    ItmTrainConfig,
    rank_loss,
    sincos_positions,
    slot_labels,
    train,
)

SCENE = Pair(("red", "circle"), ("blue", "square"))


def test_slot_labels_name_the_attribute_that_does_not_hold() -> None:
    assert slot_labels(SCENE, SCENE) == [(2, 1), (3, 1), (9, 1), (10, 1)]
    # colour swap: both colour words are wrong, both shapes hold
    assert slot_labels(SCENE, colour_swap(SCENE)) == [(2, 0), (3, 1), (9, 0), (10, 1)]  # type: ignore[arg-type]
    assert slot_labels(SCENE, side_swap(SCENE)) == [(2, 0), (3, 0), (9, 0), (10, 0)]
    single = Single("green", "star", "top")
    assert slot_labels(single, Single("green", "star", "left")) == [(2, 1), (3, 1), (6, 0)]
    assert slot_labels(single, SCENE) == []


def test_rank_loss_prefers_the_caption_over_its_negatives() -> None:
    owner = torch.tensor([0, 0, 0, 1, 1])
    labels = torch.tensor([1, 0, 0, 1, 0])
    good = torch.tensor([[0.0, 5.0], [0.0, -5.0], [0.0, -5.0], [0.0, 5.0], [0.0, -5.0]])
    assert rank_loss(good, owner, labels) < 1e-3
    assert rank_loss(-good, owner, labels) > 9.0
    same = torch.zeros(5, 2)  # no preference: log(group size) averaged over the images
    expected = (torch.log(torch.tensor(3.0)) + torch.log(torch.tensor(2.0))) / 2
    assert rank_loss(same, owner, labels) == pytest.approx(float(expected), abs=1e-6)


def test_sincos_positions_tell_columns_apart() -> None:
    table = sincos_positions(4, 16)[0]
    assert table.shape == (17, 16) and torch.all(table[0] == 0)
    assert len({tuple(row.tolist()) for row in table[1:]}) == 16
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(4, 18)


def test_short_seeded_run_writes_a_loadable_model(tmp_path: Path) -> None:
    cfg = ItmTrainConfig(
        steps=2, batch_size=3, negatives=2, in_batch=1, rank_weight=1.0, itc_weight=0.5,
        slot_weight=1.0, pos_scale=1.0, init_range=0.1, hidden=32, patch_size=16,
        vision_layers=1, text_layers=2, heads=2, warmup=1, augment_frac=0.5,
    )  # fmt: skip
    runs, threads = [], torch.get_num_threads()
    for name in ("a", "b"):
        try:
            result = train(cfg, tmp_path / name, eval_every=100, save_every=100, eval_n=4)
        finally:
            torch.set_num_threads(threads)  # the tool pins its own thread count
        assert 0.0 <= result["all"] <= 1.0
        runs.append(ItmScorer.load(str(tmp_path / name), device="cpu"))
    for (key, a), b in zip(
        runs[0].model.state_dict().items(), runs[1].model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key  # seeded: the same weights twice
    assert runs[0].model.vision_model.embeddings.position_embedding.shape == (1, 17, 32)
