"""Approximate nearest-neighbour index of mmsearch (see ``VectorIndex``).

Exact flat search below ``FLAT_THRESHOLD`` vectors, IVF-PQ with exact re-scoring above
it; parameters from ``choose_index_params``, nprobe/refine tuned at build time.
"""

import os

# FAISS's bundled OpenMP spins while waiting by default; on a machine whose cores are
# shared (other processes, a training job) that made k-means and PQ training ~10x
# slower here. Passive waiting costs microseconds per parallel region. Only a default:
# an explicit OMP_WAIT_POLICY wins, and it only matters if FAISS is not loaded yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import TYPE_CHECKING, Any  # noqa: E402

from mmsearch.ann.params import (  # noqa: E402
    FLAT_THRESHOLD,
    RETRAIN_GROWTH_RATIO,
    IndexParams,
    choose_index_params,
    choose_m,
    choose_nlist,
    choose_train_size,
)

if TYPE_CHECKING:
    from mmsearch.ann.index import VectorIndex


def __getattr__(name: str) -> Any:
    # faiss loads with the first use of VectorIndex, not with this package: reading a
    # manifest (``mmsearch info``) must not pay for it.
    if name == "VectorIndex":
        from mmsearch.ann.index import VectorIndex

        return VectorIndex
    raise AttributeError(f"module 'mmsearch.ann' has no attribute {name!r}")


__all__ = [
    "FLAT_THRESHOLD",
    "RETRAIN_GROWTH_RATIO",
    "IndexParams",
    "VectorIndex",
    "choose_index_params",
    "choose_m",
    "choose_nlist",
    "choose_train_size",
]
