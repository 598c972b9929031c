"""Decode pool: order, per-image time limit, dead workers; nothing lost or shifted."""

from __future__ import annotations

import shutil
import time

import pytest
from mmsearch.indexer.decode import DecodeFailure, DecodeOk, DecodePool, decode_file

from tests.hang_decoder import decode_or_die, decode_or_hang


@pytest.fixture
def files(tmp_path, small_catalog):
    paths = sorted(small_catalog.root / r["file"] for r in small_catalog.rows)[:12]
    out = []
    for i, src in enumerate(paths):
        name = {4: "hang-4.png", 9: "die-9.png"}.get(i, f"ok-{i}{src.suffix}")
        dst = tmp_path / name
        shutil.copyfile(src, dst)
        out.append(str(dst))
    return out


def _check_aligned(results, files, bad: dict[int, str]):
    assert [r.index for r in results] == list(range(len(files)))
    for r in results:
        if r.index in bad:
            assert isinstance(r, DecodeFailure) and bad[r.index] in r.reason
        else:
            assert isinstance(r, DecodeOk)
            expected, digest = decode_file(files[r.index], 32)
            assert (r.array == expected).all() and r.sha256 == digest


def test_results_in_order_and_aligned(files):
    with DecodePool(32, workers=2, chunk_size=3) as pool:
        results = list(pool.decode(enumerate(f for f in files)))
    # "hang"/"die" names are only special for the test decoders
    _check_aligned(results, files, {})


def test_hanging_image_times_out_and_run_continues(files):
    t0 = time.perf_counter()
    with DecodePool(32, workers=2, chunk_size=3, timeout_s=1.0, decode=decode_or_hang) as pool:
        results = list(pool.decode(enumerate(files)))
    assert time.perf_counter() - t0 < 60
    _check_aligned(results, files, {4: "timed out"})
    assert results[4].exc_class == "TimeoutError"


def test_dead_worker_is_isolated(files):
    with DecodePool(32, workers=2, chunk_size=4, timeout_s=5.0, decode=decode_or_die) as pool:
        results = list(pool.decode(enumerate(files)))
    _check_aligned(results, files, {9: "worker died"})
