"""Small FAISS searches run on one OpenMP thread of the calling thread; batches keep the team."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import pytest

from mmsearch.ann import VectorIndex
from mmsearch.ann.threads import SMALL_SEARCH, omp_threads, search_threads


@pytest.fixture
def two_threads() -> Iterator[None]:
    """A team of two, whatever the machine's default, restored after the test."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    yield
    faiss.omp_set_num_threads(before)


class ThreadSpy:
    """A real FAISS index that records the OpenMP thread count each search ran with."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seen = inner, []

    def search(self, *args: Any, **kwargs: Any) -> Any:
        self.seen.append(faiss.omp_get_max_threads())
        return self.inner.search(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_search_threads_by_batch_size_and_restored_after_an_error(two_threads: None) -> None:
    with search_threads(1):
        assert faiss.omp_get_max_threads() == 1
    with search_threads(SMALL_SEARCH):
        assert faiss.omp_get_max_threads() == 2
    with pytest.raises(RuntimeError), omp_threads(1):
        raise RuntimeError("boom")
    assert faiss.omp_get_max_threads() == 2


def test_the_setting_is_the_calling_threads_own(two_threads: None) -> None:
    seen: list[int] = []
    inside, release = threading.Event(), threading.Event()

    def query() -> None:
        with search_threads(1):
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=query)
    worker.start()
    assert inside.wait(10)
    seen.append(faiss.omp_get_max_threads())  # while the other thread holds one thread
    release.set()
    worker.join(10)
    assert seen == [2]


@pytest.mark.parametrize("index_type", ["flat", "ivfpq"])
def test_vector_index_search_uses_one_thread_for_a_query_and_the_team_for_a_batch(
    index_type: str, two_threads: None
) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    vi = VectorIndex.build(x, np.arange(3000, dtype=np.int64), index_type=index_type, seed=0)
    spy = ThreadSpy(vi._state.index)
    vi._state.index = spy
    one_s, one_i = vi.search(x[5], 10)
    batch_s, batch_i = vi.search(x[:SMALL_SEARCH], 10)
    assert spy.seen == [1, 2]
    assert faiss.omp_get_max_threads() == 2
    # The same answers either way.
    np.testing.assert_array_equal(one_i[0], batch_i[5])
    np.testing.assert_allclose(one_s[0], batch_s[5], rtol=1e-5)
    assert one_i[0, 0] == 5
