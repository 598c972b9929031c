"""mmsearch finetune: a weakened mmsearch-tiny recovers on a generated catalog; checkpoints; --reembed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mmsearch.indexer.pipeline import IndexOptions, run_index
from mmsearch.indexer.reembed import reembed_index
from safetensors import safe_open
from typer.testing import CliRunner

from mmsearch.datasets.synthetic import generate_catalog
from mmsearch.engine import SearchIndex
from mmsearch.errors import ModelLoadError, ModelMismatchError
from mmsearch.models import ModelSpec, load_encoder
from mmsearch.training.data import pairs_from_index, read_pairs
from mmsearch.training.finetune import FinetuneConfig, finetune, reinitialise_tower
from mmsearch.training.loop import FitConfig


@pytest.fixture(scope="module")
def weak(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """mmsearch-tiny with its text tower re-initialised, and a generated catalog."""
    base = tmp_path_factory.mktemp("finetune")
    torch.set_num_threads(1)
    checkpoint = reinitialise_tower(
        ModelSpec("mmsearch-tiny"), "text", base / "weak.safetensors", seed=0
    )
    catalog = generate_catalog(base / "catalog", n=160, seed=11)
    return {"base": base, "checkpoint": checkpoint, "catalog": catalog}


@pytest.fixture(scope="module")
def tuned(weak: dict[str, Any]) -> dict[str, Any]:
    """The CLI run: LiT (image tower locked), 3 epochs of 4 steps (batch 32), bounded by steps."""
    from mmsearch.cli import app

    out = weak["base"] / "tuned.safetensors"
    args = [
        "finetune",
        str(weak["catalog"].jsonl_path),
        "--out",
        str(out),
        "--model",
        "mmsearch-tiny",
        "--pretrained",
        str(weak["checkpoint"]),
        "--lock",
        "image",
        "--lr",
        "2e-3",
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--warmup",
        "3",
        "--val-fraction",
        "0.2",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return {"out": out, "run": json.loads(result.stdout.strip().splitlines()[-1])}


def test_finetuning_raises_held_out_recall(tuned: dict[str, Any]) -> None:
    run = tuned["run"]
    before = run["baseline"]["t2i_recall@1"]
    curve = [e["metrics"]["t2i_recall@1"] for e in run["epochs"]]
    assert run["train_pairs"] == 128 and run["val_pairs"] == 32
    assert [e["step"] for e in run["epochs"]] == [4, 8, 12]
    assert before < 0.2, run["baseline"]  # the weakened model is near chance
    assert max(curve) >= before + 0.4, (before, curve)
    best = run["epochs"][run["best_epoch"] - 1]["metrics"]
    assert best["mean_recall@1"] == max(e["metrics"]["mean_recall@1"] for e in run["epochs"])


def test_checkpoint_records_the_model_and_loads_as_pretrained(tuned: dict[str, Any]) -> None:
    with safe_open(str(tuned["out"]), framework="pt") as fh:
        meta = fh.metadata()
    assert (
        meta["mmsearch.model"] == "mmsearch-tiny"
        and int(meta["epoch"]) == tuned["run"]["best_epoch"]
    )
    encoder = load_encoder(ModelSpec("mmsearch-tiny", str(tuned["out"])), device="cpu")
    assert encoder.dim == 64
    with pytest.raises(ModelLoadError, match="use --model mmsearch-tiny"):
        load_encoder(ModelSpec("RN50", str(tuned["out"])), device="cpu")


def test_reembed_replaces_vectors_and_keeps_rows(
    weak: dict[str, Any], tuned: dict[str, Any], tmp_path: Path
) -> None:
    catalog = generate_catalog(tmp_path / "small", n=24, seed=12)
    weak_spec = ModelSpec("mmsearch-tiny", str(weak["checkpoint"]))
    opts = IndexOptions(workers=1, batch_size=16, image_metadata=catalog.jsonl_path)
    run_index([catalog.image_dir, catalog.jsonl_path], tmp_path / "idx", weak_spec, options=opts)
    before = SearchIndex(tmp_path / "idx")
    ids_before, vec_before = before.store.vectors()
    meta_before = before.store.scan(["id", "uri", "metadata"]).sort_by("id").to_pylist()
    tuned_spec = ModelSpec("mmsearch-tiny", str(tuned["out"]))
    with pytest.raises(ModelMismatchError):  # without --reembed the model check stays strict
        run_index([catalog.image_dir], tmp_path / "idx", tuned_spec, options=opts)
    pairs = pairs_from_index(tmp_path / "idx")  # finetune --index: the captioned images of an index
    assert len(pairs) == 24 and set(pairs.texts) == {str(r["caption"]) for r in catalog.rows}
    report = reembed_index(tmp_path / "idx", tuned_spec, workers=1, batch_size=16)
    assert report.updated == 48 and report.failed == 0
    after = SearchIndex(tmp_path / "idx")
    assert after.spec == tuned_spec
    ids_after, vec_after = after.store.vectors()
    assert sorted(ids_after.tolist()) == sorted(ids_before.tolist())
    assert after.store.scan(["id", "uri", "metadata"]).sort_by("id").to_pylist() == meta_before
    assert not np.allclose(np.sort(vec_before, axis=0), np.sort(vec_after, axis=0))
    row = catalog.rows[0]
    hits = after.search(str(row["caption"]), k=5, kind="image")
    assert any(h.metadata.get("caption") == row["caption"] for h in hits)


def test_early_stopping_and_grad_accumulation(weak: dict[str, Any]) -> None:
    """lr 0: nothing changes (the locked tower's batch-norm statistics included), so patience 1 stops at epoch 2.

    The forward passes run under bf16 autocast (CPU here; CUDA picks bf16 by itself).
    """
    pairs = read_pairs(weak["catalog"].jsonl_path)
    cfg = FinetuneConfig(
        ModelSpec("mmsearch-tiny", str(weak["checkpoint"])),
        str(weak["base"] / "still.safetensors"),
        FitConfig(
            epochs=5, lr=0.0, warmup=0, grad_accum=2, patience=1, lock="image", precision="bf16"
        ),
        batch_size=32,
        val_fraction=0.2,
        device="cpu",
    )
    result = finetune(cfg, pairs)
    assert result.fit.stopped_early and len(result.fit.history) == 2 and result.fit.best_epoch == 1
    assert [e.step for e in result.fit.history] == [2, 4]  # 4 micro-batches per epoch, 2 per step
    assert result.fit.history[1].metrics == pytest.approx(result.baseline)


def test_train_tiny_runs_on_the_shared_loop(tmp_path: Path) -> None:
    from mmsearch.training import train_tiny

    out = tmp_path / "tiny.safetensors"
    result = train_tiny.train(
        train_tiny.TrainConfig(steps=2, batch_size=8, warmup=1), out, eval_every=2, save_every=2
    )
    assert result["step"] == 2 and 0.0 <= result["r1"] <= 1.0
    with safe_open(str(out), framework="pt") as fh:
        assert fh.metadata()["trained_steps"] == "2"


def test_train_tiny_batches_hold_near_miss_families() -> None:
    """With ``pair_family`` each two-object scene comes with its near misses, as hard negatives."""
    import numpy as np

    from mmsearch.training import train_tiny

    cfg = train_tiny.TrainConfig(pair_frac=1.0, pair_family=4, shape_frac=1.0, jpeg_frac=0.0)
    images, texts, img_labels, txt_labels = train_tiny.sample_batch(
        np.random.default_rng(0), 12, 64, cfg
    )
    assert images.shape == (12, 64, 64, 3) and len(texts) == 12
    for start in range(0, 12, 4):
        base, *misses = texts[start : start + 4]
        parts = base.removeprefix("a ").split(" to the left of a ")
        assert misses[0] == f"a {parts[1]} to the left of a {parts[0]}"  # left/right swap
        for miss in misses[1:]:  # shape_frac 1: one shape changed, the colours kept
            changed = [a != b for a, b in zip(base.split(), miss.split(), strict=True)]
            assert sum(changed) == 1 and miss.split()[changed.index(True)] in SHAPE_WORDS
    match = train_tiny.match_matrix(img_labels, txt_labels)
    assert torch.equal(match, torch.eye(12))  # a near miss is no positive of its family


SHAPE_WORDS = {"circle", "square", "triangle", "star"}
