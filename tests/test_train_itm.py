"""The ITM training tool: labels of the per-word check, the ranking loss, a short seeded run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmsearch.rerank.itm import ItmScorer
from mmsearch.training.itm_batches import object_targets, slot_labels, text_groups
from mmsearch.training.itm_config import ItmTrainConfig
from mmsearch.training.itm_data import (
    Pair,
    Single,
    colour_swap,
    near_misses,
    one_attribute_changed,
    side_swap,
)
from mmsearch.training.itm_losses import object_loss, rank_loss, text_rank_loss
from mmsearch.training.itm_model import sincos_positions
from mmsearch.training.train_itm import train

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


def test_text_rank_loss_compares_one_caption_across_images() -> None:
    # rows: caption A on image 0 (match), A on image 1 (no match), B on image 1 (match),
    # C on image 0 (no match: C is on no other image, so it forms no group with a match)
    group = text_groups(["A", "A", "B", "C"])
    assert group.tolist() == [0, 0, 1, 2]
    labels = torch.tensor([1, 0, 1, 0])
    good = torch.tensor([[0.0, 5.0], [0.0, -5.0], [0.0, 5.0], [0.0, 9.0]])
    assert text_rank_loss(good, group, labels) < 1e-3  # C's high score is not its business
    bad = torch.tensor([[0.0, -5.0], [0.0, 5.0], [0.0, 5.0], [0.0, 0.0]])
    assert text_rank_loss(bad, group, labels) > 9.0
    same = torch.zeros(4, 2)  # only caption A has a negative image: log 2
    assert text_rank_loss(same, group, labels) == pytest.approx(float(torch.log(torch.tensor(2.0))))
    alone = text_rank_loss(same, text_groups(["A", "B", "C", "D"]), labels)
    assert alone == 0.0 and alone.requires_grad is False  # no caption met another image


def test_near_misses_and_shape_changes() -> None:
    rng = np.random.default_rng(0)
    fam = near_misses(rng, SCENE, 3, shape_frac=1.0)
    assert fam[0] == side_swap(SCENE) and len(set(fam)) == 3 and SCENE not in fam
    for neg in fam[1:]:  # shape_frac 1: only shapes change, colours stay where they were
        assert (neg.left[0], neg.right[0]) == ("red", "blue")  # type: ignore[union-attr]
    changed = [one_attribute_changed(rng, SCENE, shape_frac=0.0) for _ in range(50)]
    assert all((c.left[1], c.right[1]) == ("circle", "square") for c in changed)  # type: ignore[union-attr]


def test_object_loss_names_each_half() -> None:
    single = Single("green", "star", "top")
    targets = object_targets([SCENE, single])
    assert targets[0].tolist() == [[0, 0], [2, 1], [-100, -100]]  # red circle | blue square
    assert targets[1].tolist() == [[-100, -100], [-100, -100], [1, 3]]  # green star, anywhere
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 12)
    embeds = torch.randn(2, 1 + 16, 4)  # CLS + a 4×4 patch grid
    loss = object_loss(head, embeds, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


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


def test_family_pool_run_trains_with_every_check(tmp_path: Path) -> None:
    """The pool of families, the per-caption ranking loss and the per-object check run together."""
    cfg = ItmTrainConfig(
        steps=2, batch_size=4, negatives=1, rank_weight=1.0, text_rank_weight=1.0,
        object_weight=1.0, slot_weight=1.0, family=2, pool=8, shape_frac=0.8, hidden=32,
        patch_size=16, vision_layers=1, text_layers=1, heads=2, warmup=1, augment_frac=0.5,
    )  # fmt: skip
    threads = torch.get_num_threads()
    try:
        first = train(cfg, tmp_path / "a", eval_every=100, save_every=100, eval_n=4)
    finally:
        torch.set_num_threads(threads)
    assert 0.0 <= first["all"] <= 1.0
    scorer = ItmScorer.load(str(tmp_path / "a"), device="cpu")
    assert not any(k.startswith(("slot_head", "object_head")) for k in scorer.model.state_dict())


def test_shape_swaps_join_negatives_and_families() -> None:
    from mmsearch.training.itm_data import caption, hard_negatives, shape_swap

    assert caption(shape_swap(SCENE)) == "a red square to the left of a blue circle"  # type: ignore[arg-type]
    assert shape_swap(Pair(("red", "star"), ("blue", "star"))) is None
    rng = np.random.default_rng(0)
    fam = near_misses(rng, SCENE, 3, shape_frac=0.5, shape_swaps=True)
    assert fam[:2] == [side_swap(SCENE), shape_swap(SCENE)]
    drawn = [n for _ in range(100) for n in hard_negatives(rng, SCENE, 3, 1.0, 0.0, 1.0, 0.5, True)]
    kinds = {colour_swap(SCENE), side_swap(SCENE), shape_swap(SCENE)}
    assert set(drawn) == kinds  # swap share 1: only the three swaps
    assert shape_swap(SCENE) not in hard_negatives(rng, SCENE, 2, 1.0, 0.0, 1.0)  # off by default


def test_shape_negatives_give_every_image_each_one_shape_change() -> None:
    from mmsearch.training.itm_batches import texts_for
    from mmsearch.training.itm_data import caption, shape_changes

    changes = shape_changes(SCENE)
    assert len(changes) == len(set(changes)) == 6 and SCENE not in changes
    for c in changes:  # colours stay, exactly one shape differs
        assert (c.left[0], c.right[0]) == ("red", "blue")
        assert (c.left[1] != "circle") + (c.right[1] != "square") == 1
    same_colour = Pair(("red", "circle"), ("red", "square"))  # never two identical objects
    assert all(c.left != c.right for c in shape_changes(same_colour))
    assert len(shape_changes(same_colour)) == 4  # circle|square: neither side may copy the other
    scenes: list[Pair | Single] = [SCENE, Single("green", "star", "top")]
    base = ItmTrainConfig(negatives=1, in_batch=0)
    on = texts_for(
        np.random.default_rng(0),
        scenes,
        ItmTrainConfig(negatives=1, in_batch=0, shape_negatives=1),
        0.0,
        0.7,
    )
    off = texts_for(np.random.default_rng(0), scenes, base, 0.0, 0.7)
    mine = [t for t, o in zip(on.texts, on.owner.tolist(), strict=True) if o == 0]
    assert mine[0] == caption(SCENE) and on.labels[0] == 1
    assert {caption(c) for c in changes} <= set(mine[1:])  # all six, as no-match rows
    assert len(mine) == len(set(mine))  # no caption twice for one image
    assert on.labels[1 : len(mine)].sum() == 0
    single_on = [t for t, o in zip(on.texts, on.owner.tolist(), strict=True) if o == 1]
    single_off = [t for t, o in zip(off.texts, off.owner.tolist(), strict=True) if o == 1]
    assert len(single_on) == len(single_off) == 2  # a single object gets no shape negatives
    assert len(off.texts) == 4  # off by default: one caption and one negative per image
