"""VectorIndex search quality, id bookkeeping, exact path, concurrency (seeded data)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mmsearch.ann import VectorIndex
from mmsearch.errors import BadQueryError


def structured_vectors(n: int, d: int, *, seed: int, stream: int = 0) -> np.ndarray:
    """Clustered low-intrinsic-dimension data (same recipe as benchmarks/datasets.py)."""
    model = np.random.default_rng(seed)
    centres = model.normal(size=(200, 12))
    proj = model.normal(size=(12, d)) / np.sqrt(12)
    freq = model.uniform(0.3, 2.0, size=d)
    rs = np.random.default_rng([seed, stream])
    z = centres[rs.integers(0, 200, size=n)] + 0.5 * rs.normal(size=(n, 12))
    x = np.sin((z @ proj) * freq) + 0.15 * rs.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(
    x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), ids[order]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


@pytest.fixture(scope="module")
def big() -> tuple[VectorIndex, np.ndarray, np.ndarray, np.ndarray]:
    x = structured_vectors(50_000, 128, seed=7)
    ids = (
        np.random.default_rng(1).choice(10**12, size=50_000, replace=False).astype(np.int64)
    )  # sparse
    index = VectorIndex.build(x, ids, seed=0)
    q = structured_vectors(300, 128, seed=7, stream=1)  # held out
    return index, x, ids, q


def test_auto_picks_ivfpq_at_50k_and_reports_info(big) -> None:
    index, _, _, _ = big
    info = index.info
    assert info["type"] == "ivfpq" and info["n"] == 50_000 and info["d"] == 128
    assert info["params"]["nlist"] == 1024 and 128 % info["params"]["m"] == 0
    assert info["nprobe"] >= 1 and info["refine"] >= 1
    assert info["recall_at_10"] >= 0.95
    assert info["bytes_per_vector"] < 128 * 4  # far below the float vectors
    assert info["build_seconds"] > 0


def test_recall_at_10_vs_exact_on_held_out_queries(big) -> None:
    index, x, ids, q = big
    _, truth = brute_force(x, ids, q, 10)
    scores, found = index.search(q, 10)
    assert recall(found, truth) >= 0.9
    # refined scores are exact inner products of the returned ids
    pos = {int(i): r for r, i in enumerate(ids)}
    rows = np.array([[pos[int(i)] for i in row] for row in found[:20]])
    np.testing.assert_allclose(
        scores[:20], np.einsum("qkd,qd->qk", x[rows], q[:20]), rtol=1e-5, atol=1e-5
    )
    assert np.all(np.diff(scores, axis=1) <= 1e-7)


def test_more_nprobe_and_refine_do_not_lower_recall(big) -> None:
    index, x, ids, q = big
    _, truth = brute_force(x, ids, q, 10)
    low = recall(index.search(q, 10, nprobe=1, refine=1)[1], truth)
    high = recall(index.search(q, 10, nprobe=64, refine=16)[1], truth)
    assert high >= low and high >= 0.97 and low < 0.9


def test_exact_equals_brute_force(big) -> None:
    index, x, ids, q = big
    s_ref, i_ref = brute_force(x, ids, q[:50], 7)
    s, i = index.search(q[:50], 7, exact=True)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(s, s_ref, rtol=1e-5, atol=1e-6)


def small_index(index_type: str = "ivfpq", n: int = 4000, d: int = 32, seed: int = 3):
    x = structured_vectors(n, d, seed=seed)
    ids = (np.arange(n, dtype=np.int64) * 7 + 100)[::-1].copy()  # unsorted, sparse ids
    return VectorIndex.build(x, ids, index_type=index_type, seed=0), x, ids


@pytest.mark.parametrize("index_type", ["flat", "ivfpq"])
def test_ids_aligned_after_incremental_adds_and_deletes(index_type: str) -> None:
    index, x, ids = small_index(index_type)
    rng = np.random.default_rng(5)
    deleted = rng.choice(ids, size=500, replace=False)
    index.remove(deleted)
    new_x = structured_vectors(1000, 32, seed=3, stream=2)
    new_ids = np.arange(10**6, 10**6 + 1000, dtype=np.int64)
    index.add(new_x, new_ids, retrain=False)
    # re-adding a deleted id with a new vector is allowed and returns the new vector
    index.add(new_x[:1], deleted[:1], retrain=False)
    live_x = np.concatenate([x[~np.isin(ids, deleted)], new_x, new_x[:1]])
    live_ids = np.concatenate([ids[~np.isin(ids, deleted)], new_ids, deleted[:1]])
    assert len(index) == len(live_ids) == 4501

    # every live vector finds itself (id alignment), deleted ids never come back
    probe = rng.choice(len(live_ids), size=300, replace=False)
    for kwargs in ({}, {"exact": True}, {"nprobe": 10**6, "refine": 50}):
        scores, found = index.search(live_x[probe], 10, **kwargs)
        assert not np.isin(found, deleted[1:]).any()
        self_hit = np.mean([live_ids[p] in row for p, row in zip(probe, found, strict=True)])
        assert self_hit >= (1.0 if kwargs.get("exact") or index_type == "flat" else 0.97)
    _, truth = brute_force(live_x, live_ids, live_x[probe], 10)
    assert recall(index.search(live_x[probe], 10)[1], truth) >= 0.85


def test_deleted_ids_never_returned_even_when_k_exceeds_live_rows() -> None:
    index, x, ids = small_index("ivfpq", n=3000)
    keep = ids[:5]
    index.remove(ids[5:])
    for kwargs in ({}, {"exact": True}, {"nprobe": 64, "refine": 100}):
        scores, found = index.search(x[:3], 10, **kwargs)
        assert set(found[found >= 0].tolist()) <= set(keep.tolist())
        assert (found[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


def test_add_rejects_present_and_duplicate_ids() -> None:
    index, x, ids = small_index("flat", n=200)
    with pytest.raises(BadQueryError, match="already"):
        index.add(x[:2], ids[:2])
    with pytest.raises(BadQueryError, match="duplicates"):
        index.add(x[:2], np.array([10**7, 10**7]))
    assert len(index) == 200


def test_needs_retrain_after_collection_doubles_and_auto_retrain() -> None:
    index, x, ids = small_index("ivfpq", n=2000)
    more = structured_vectors(2001, 32, seed=3, stream=4)
    more_ids = np.arange(10**6, 10**6 + 2001, dtype=np.int64)
    index.add(more[:2000], more_ids[:2000], retrain=False)
    assert not index.needs_retrain
    index.add(more[2000:], more_ids[2000:], retrain=False)
    assert index.needs_retrain and index.info["added_since_train"] == 2001
    index.add(np.empty((0, 32), np.float32), np.empty(0, np.int64))  # retrain=None: policy
    assert not index.needs_retrain
    assert index.info["trained_n"] == 4001 and index.info["added_since_train"] == 0
    _, found = index.search(more[:50], 1)
    assert (found[:, 0] == more_ids[:50]).mean() >= 0.95


def test_auto_flat_index_upgrades_when_grown_past_threshold(monkeypatch) -> None:
    import mmsearch.ann.index as index_mod
    import mmsearch.ann.params as params_mod

    monkeypatch.setattr(params_mod, "FLAT_THRESHOLD", 3000)
    monkeypatch.setattr(index_mod, "FLAT_THRESHOLD", 3000)
    index, x, ids = small_index("auto", n=2000)
    assert index.info["type"] == "flat"
    index.add(structured_vectors(1500, 32, seed=3, stream=5), np.arange(10**6, 10**6 + 1500))
    assert index.info["type"] == "ivfpq" and len(index) == 3500


def test_opq_path_builds_and_searches() -> None:
    x = structured_vectors(3000, 32, seed=11)
    ids = np.arange(3000, dtype=np.int64)
    index = VectorIndex.build(x, ids, index_type="ivfpq", opq=True, seed=0)
    assert index.info["params"]["opq"] is True
    _, found = index.search(x[:100], 10)
    assert (found[:, 0] == ids[:100]).mean() >= 0.95
    index.remove(ids[:10])
    assert not np.isin(index.search(x[:10], 10)[1], ids[:10]).any()


def test_build_is_deterministic_for_a_seed() -> None:
    a, x, _ = small_index("ivfpq", n=3000)
    b, _, _ = small_index("ivfpq", n=3000)
    q = structured_vectors(50, 32, seed=3, stream=9)
    np.testing.assert_array_equal(
        a.search(q, 10, nprobe=2, refine=1)[1], b.search(q, 10, nprobe=2, refine=1)[1]
    )
    assert (a.info["nprobe"], a.info["refine"]) == (b.info["nprobe"], b.info["refine"])


@pytest.mark.parametrize(
    "call",
    [
        lambda ix: ix.search(np.zeros((2, 31), np.float32), 5),
        lambda ix: ix.search(np.full((1, 32), np.nan, np.float32), 5),
        lambda ix: ix.search(np.zeros((1, 32), np.float32), 0),
        lambda ix: ix.search(np.zeros((1, 32), np.float32), 5, nprobe=0),
        lambda ix: ix.search(np.zeros((1, 32), np.float32), 5, refine=-1),
        lambda ix: ix.add(
            np.ones((2, 32), np.float32), np.array([10**8, 10**8 + 1])
        ),  # not normalised
        lambda ix: ix.add(np.eye(32, dtype=np.float32)[:2], np.array([-5, 3])),
        lambda ix: ix.remove(np.array([[1, 2]])),
    ],
)
def test_bad_input_raises_bad_query_error(call) -> None:
    index, _, _ = small_index("ivfpq", n=2000)
    with pytest.raises(BadQueryError):
        call(index)


def test_single_query_vector_and_concurrent_readers() -> None:
    index, x, ids = small_index("ivfpq", n=3000)
    s1, i1 = index.search(x[0], 5)
    assert i1.shape == (1, 5) and i1[0, 0] == ids[0]
    expected = index.search(x[:200], 10, nprobe=4)[1]
    errors: list[BaseException] = []

    def reader(nprobe: int) -> None:
        try:
            for _ in range(20):
                got = index.search(x[:200], 10, nprobe=nprobe)[1]
                if nprobe == 4:
                    np.testing.assert_array_equal(got, expected)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(p,)) for p in (4, 64, 4, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
