"""Retrieval quality of the shipped mmsearch-tiny weights on a held-out catalog.

The catalog seed (4242) differs from training (which renders from seed 0 in
memory) and from the documented evaluation (seed 12345).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmsearch.datasets.synthetic import generate_catalog
from mmsearch.evaluation import caption_recall, encode_catalog_images, read_catalog
from mmsearch.models import ModelSpec, load_encoder


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heldout")
    generate_catalog(root, n=240, seed=4242)
    return root


@pytest.fixture(scope="module")
def tiny():  # noqa: ANN201
    return load_encoder(ModelSpec("mmsearch-tiny"), device="cpu")


def test_full_caption_recall(tiny, catalog: Path) -> None:  # noqa: ANN001
    res = caption_recall(tiny, catalog)
    assert res["n_images"] == 240 and res["n_captions"] > 100
    assert res["r1"] >= 0.8, res
    assert res["r5"] >= 0.95, res


def test_red_circle_on_the_left_is_top1(tiny, catalog: Path) -> None:  # noqa: ANN001
    rows = read_catalog(catalog)
    assert any(
        r["caption"] == "a red circle on the left" for r in rows
    )  # precondition of this seed
    vecs = encode_catalog_images(tiny, catalog, rows)
    scores = vecs @ tiny.encode_texts(["a red circle on the left"])[0]
    best = rows[int(np.argmax(scores))]
    assert (best["colour"], best["shape"], best["position"]) == ("red", "circle", "left")
