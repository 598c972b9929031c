"""Input checks of ``VectorIndex``: rows to build from or add, queries, positive ints.

Each raises :class:`~mmsearch.errors.BadQueryError` with a message naming what is
wrong, and returns the input as contiguous float32 / int64 arrays (or an int).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from mmsearch.errors import BadQueryError

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

NORM_TOLERANCE = 1e-2


def check_rows(
    vectors: Any, ids: Any, *, d: int | None, allow_empty: bool = False
) -> tuple[F32, I64]:
    x = np.asarray(vectors)
    i = np.asarray(ids)
    if x.ndim != 2 or (d is not None and x.shape[1] != d) or x.shape[1] < 1:
        want = f"(n, {d})" if d is not None else "(n, d)"
        raise BadQueryError(f"vectors must have shape {want}, got {x.shape}")
    if i.shape != (x.shape[0],) or (i.size and not np.issubdtype(i.dtype, np.integer)):
        raise BadQueryError(
            f"ids must be a 1-D integer array of length {x.shape[0]}, got {i.shape} {i.dtype}"
        )
    if not len(i) and not allow_empty:
        raise BadQueryError("cannot build an index from zero vectors")
    x = np.ascontiguousarray(x, np.float32)
    i = np.ascontiguousarray(i, np.int64)
    if len(i):
        if not np.isfinite(x).all():
            raise BadQueryError("vectors contain NaN or infinity")
        if int(i.min()) < 0:
            raise BadQueryError("ids must be non-negative (-1 marks padding)")
        norms = np.linalg.norm(x, axis=1)
        if np.abs(norms - 1.0).max() > NORM_TOLERANCE:
            raise BadQueryError("vectors must be L2-normalised (inner product = cosine)")
    return x, i


def check_queries(queries: Any, d: int) -> F32:
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != d:
        raise BadQueryError(f"queries must have shape (q, {d}), got {np.asarray(queries).shape}")
    if not np.issubdtype(q.dtype, np.number):
        raise BadQueryError(f"queries must be numeric, got {q.dtype}")
    q = np.ascontiguousarray(q, np.float32)
    if not np.isfinite(q).all():
        raise BadQueryError("queries contain NaN or infinity")
    return q


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BadQueryError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
