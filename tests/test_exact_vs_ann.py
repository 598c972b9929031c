"""`--exact` and the default (IVF-PQ + exact refine) path agree on the top-1 (≥ 95%),
on a generated catalog of 20,000 images embedded by the real mmsearch-tiny."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index

from mmsearch.datasets.synthetic import COLOURS, POSITIONS, SHAPES, generate_catalog
from mmsearch.engine import SearchIndex
from mmsearch.models.spec import ModelSpec

N = int(os.environ.get("MMSEARCH_AGREEMENT_N", "20000"))


@pytest.mark.slow
def test_exact_and_ann_agree_on_top1(tmp_path, tiny_encoder):
    cat = generate_catalog(tmp_path / "cat", n=N, seed=99, image_size=64)
    idx_dir = tmp_path / "idx"
    run_index(
        [cat.root],
        idx_dir,
        ModelSpec("mmsearch-tiny", ""),
        options=IndexOptions(index_type="ivfpq", batch_size=256),
        encoder=tiny_encoder,
    )
    idx = SearchIndex(idx_dir, encoder=tiny_encoder)
    info = idx.info()["ann"]["image"]
    assert info["type"] == "ivfpq" and info["n"] == N
    assert info["profiles"]["cross"]["nprobe"] >= info["nprobe"]  # text→image needs more probes

    queries = [f"a {c} {s} on the {p}" for c in COLOURS for s in SHAPES for p in POSITIONS]
    queries += [f"{c} {s}" for c in COLOURS for s in SHAPES] + [
        f"a {s} on the {p}" for s in SHAPES for p in POSITIONS
    ]
    agree = 0
    for query in queries:
        exact = idx.search(query, 1, kind="image", exact=True)[0]
        approx = idx.search(query, 1, kind="image")[0]
        agree += exact.id == approx.id or abs(exact.score - approx.score) < 1e-6
    rate = agree / len(queries)
    assert rate >= 0.95, f"top-1 agreement {rate:.3f} over {len(queries)} queries"

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = {}
    for flag in ([], ["--exact"]):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmsearch.cli",
                "query",
                "a blue star on the top",
                "--index",
                str(idx_dir),
                "--json",
                "--top",
                "1",
                *flag,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        out[bool(flag)] = json.loads(done.stdout)[0]
    assert (
        out[True]["id"] == out[False]["id"] or abs(out[True]["score"] - out[False]["score"]) < 1e-6
    )
