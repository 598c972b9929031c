"""How many OpenMP threads a FAISS call runs on.

FAISS runs a search on an OpenMP team. For a handful of query vectors the team's start
and its closing barrier cost more than they share out, and on a busy machine a member
of the team that is not scheduled stalls the whole query at the barrier. On the 2-core
test machine (``benchmarks/faiss_threads.py``: one 512-d query vector, a 20,000-row
flat index) a search took 1.6 ms on one thread against 2.3 ms on two when the machine
was otherwise idle, and 1.6 against 4.4 ms (20 ms with spinning OpenMP threads) while a
training job kept the other core busy; IVF-PQ searches were equal either way
(benchmarks/RESULTS.md, "FAISS threads for single queries"). A query searches one
vector and a server runs queries side by side, so small searches run on one thread;
batches (tuning probes, chance-level probes, evaluation) keep the whole team.

OpenMP keeps the thread count per calling thread (libgomp and LLVM's libomp both hold it
in the calling thread's own control variables), so one request's setting does not touch
another thread's search or an index build running beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss

#: Searches of fewer query vectors than this run on one OpenMP thread.
SMALL_SEARCH = 8


@contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Runs the block's FAISS calls on ``n`` OpenMP threads (this thread only), then restores."""
    before = faiss.omp_get_max_threads()
    if n == before:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@contextmanager
def search_threads(n_queries: int) -> Iterator[None]:
    """One OpenMP thread for a search of fewer than :data:`SMALL_SEARCH` query vectors;
    the calling thread's setting otherwise."""
    if n_queries >= SMALL_SEARCH:
        yield
        return
    with omp_threads(1):
        yield
