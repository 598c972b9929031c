"""Pure parameter-choice functions of mmsearch.ann (no FAISS, no disk)."""

from __future__ import annotations

import math

import pytest

from mmsearch.ann.params import (
    FLAT_THRESHOLD,
    MAX_POINTS_PER_CENTROID,
    MIN_POINTS_PER_CENTROID,
    IndexParams,
    choose_index_params,
    choose_m,
    choose_nlist,
    choose_train_size,
    estimate_ivfpq_bytes,
    is_power_of_two,
    retrain_due,
)
from mmsearch.errors import BadQueryError

SIZES = [40_000, 50_000, 100_000, 250_000, 1_000_000, 3_000_000, 10_000_000, 100_000_000]


@pytest.mark.parametrize("n", SIZES)
def test_nlist_is_power_of_two_in_sqrt_bounds_with_enough_training_points(n: int) -> None:
    nlist = choose_nlist(n)
    assert is_power_of_two(nlist)
    assert 4 * math.sqrt(n) <= nlist <= 16 * math.sqrt(n)
    assert nlist * MIN_POINTS_PER_CENTROID <= n
    assert nlist == 1 or nlist // 2 < 4 * math.sqrt(n)  # the smallest such power of two


@pytest.mark.parametrize("n", [1, 10, 38, 39, 100, 5_000, 30_000])
def test_nlist_for_small_forced_ivfpq_keeps_training_rule(n: int) -> None:
    nlist = choose_nlist(n)
    assert is_power_of_two(nlist)
    assert nlist == 1 or nlist * MIN_POINTS_PER_CENTROID <= n


def test_nlist_known_values() -> None:
    assert choose_nlist(1_000_000) == 4096
    assert choose_nlist(50_000) == 1024


@pytest.mark.parametrize("d", [1, 2, 3, 7, 64, 100, 128, 384, 512, 768, 1024, 1536])
def test_m_divides_d_and_respects_code_cap(d: int) -> None:
    m = choose_m(d)
    assert d % m == 0
    assert m <= 64
    assert d < 4 or d // m >= 4
    # it is the largest such divisor
    assert not any(d % c == 0 and c <= 64 and d // c >= 4 for c in range(m + 1, d + 1))


def test_m_known_values() -> None:
    assert (choose_m(512), choose_m(768), choose_m(128), choose_m(100), choose_m(7)) == (
        64,
        64,
        32,
        25,
        1,
    )
    assert choose_m(512, max_code_bytes=20) == 16


@pytest.mark.parametrize("n", SIZES)
def test_train_size_has_39_points_per_centroid_and_is_capped(n: int) -> None:
    nlist = choose_nlist(n)
    t = choose_train_size(n, nlist)
    assert MIN_POINTS_PER_CENTROID * nlist <= t <= min(n, MAX_POINTS_PER_CENTROID * nlist)


def test_flat_below_threshold_ivfpq_above() -> None:
    assert choose_index_params(FLAT_THRESHOLD - 1, 512).index_type == "flat"
    p = choose_index_params(FLAT_THRESHOLD, 512)
    assert p.index_type == "ivfpq"
    assert (p.nlist, p.m, p.nbits, p.opq) == (1024, 64, 8, False)
    assert choose_index_params(10, 512, index_type="ivfpq").index_type == "ivfpq"
    assert choose_index_params(10**6, 512, index_type="flat").index_type == "flat"


def test_memory_budget_lowers_m_and_is_met() -> None:
    n, d = 1_000_000, 512
    free = choose_index_params(n, d)
    assert estimate_ivfpq_bytes(n, d, free.nlist, free.m, opq=free.opq) / n < 100
    budget = 40_000_000
    p = choose_index_params(n, d, memory_budget_bytes=budget)
    assert p.m < free.m and d % p.m == 0
    assert estimate_ivfpq_bytes(n, d, p.nlist, p.m, opq=p.opq) <= budget
    # the next larger divisor would not fit
    bigger = min(c for c in range(p.m + 1, d + 1) if d % c == 0)
    assert estimate_ivfpq_bytes(n, d, p.nlist, bigger, opq=p.opq) > budget


def test_memory_budget_pushes_small_collection_to_ivfpq_or_fails() -> None:
    n, d = 45_000, 512  # flat needs ~92 MB
    assert choose_index_params(n, d).index_type == "flat"
    assert choose_index_params(n, d, memory_budget_bytes=20_000_000).index_type == "ivfpq"
    with pytest.raises(BadQueryError, match="too small"):
        choose_index_params(n, d, memory_budget_bytes=1000)


def test_opq_only_when_asked() -> None:
    assert choose_index_params(10**6, 512, opq=True).opq is True
    assert choose_index_params(10**6, 512).opq is False


@pytest.mark.parametrize(
    "bad", [dict(n=0, d=8), dict(n=10, d=0), dict(n=10, d=8, index_type="hnsw")]
)
def test_invalid_arguments_raise(bad: dict) -> None:
    with pytest.raises(BadQueryError):
        choose_index_params(**bad)


def test_params_round_trip_and_frozen() -> None:
    p = choose_index_params(10**6, 512)
    assert IndexParams.from_dict(p.to_dict()) == p
    with pytest.raises(AttributeError):
        p.nlist = 3  # type: ignore[misc]


def test_retrain_due_when_collection_more_than_doubles() -> None:
    assert not retrain_due(1000, 1000)
    assert retrain_due(1000, 1001)
    assert not retrain_due(1000, 0)
