"""Approximate nearest-neighbour index of mmsearch (see ``VectorIndex``).

Exact flat search below ``FLAT_THRESHOLD`` vectors, IVF-PQ with exact re-scoring above
it; parameters from ``choose_index_params``, nprobe/refine tuned at build time.
"""

from mmsearch.ann.index import VectorIndex
from mmsearch.ann.params import (
    FLAT_THRESHOLD,
    RETRAIN_GROWTH_RATIO,
    IndexParams,
    choose_index_params,
    choose_m,
    choose_nlist,
    choose_train_size,
)

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
