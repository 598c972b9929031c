"""Pure functions that choose ANN index parameters from (n, d, memory budget).

Nothing here touches FAISS or the disk, so every rule is unit-tested directly.

Rules (see ``choose_index_params``):

* ``n < FLAT_THRESHOLD`` (50,000): exact flat inner-product search. At 50k x 512 a
  brute-force query is ~25 MFLOP (about 1-2 ms on one core), so an approximate
  index buys nothing below it, and IVF-PQ cannot be trained well anyway: it needs
  ``MIN_POINTS_PER_CENTROID`` x ``nlist`` training points with ``nlist >= 4*sqrt(n)``,
  which first becomes possible around n = 40k.
* Otherwise IVF-PQ: ``nlist`` is the smallest power of two in ``[4*sqrt(n), 16*sqrt(n)]``
  that still has 39 training points per centroid (cheapest to train; ``nprobe`` is
  tuned afterwards, so a smaller ``nlist`` costs little at query time), ``m``
  sub-quantizers of 8 bits each with ``m`` dividing ``d`` (at most 64 bytes of code
  per vector by default, fewer when a memory budget says so). No OPQ rotation by
  default: the exact refine recovers what OPQ would add to recall, and training OPQ
  at d=512 took over 2 minutes on 2 cores (vs ~10 s for the rest of a 50k build);
  ``choose_index_params(..., opq=True)`` keeps the option.
* The coarse quantizer (which of the ``nlist`` centroids a vector or query is nearest
  to) is a flat scan of the centroids up to ``nlist`` 4,096, and an HNSW graph over
  them from ``HNSW_QUANTIZER_MIN_NLIST`` (8,192) up: see that constant for the figures.

Example:
    >>> p = choose_index_params(1_000_000, 512)
    >>> (p.index_type, p.nlist, p.m, p.nbits)
    ('ivfpq', 4096, 64, 8)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from mmsearch.errors import BadQueryError

IndexType = Literal["flat", "ivfpq"]
QuantizerType = Literal["flat", "hnsw"]

FLAT_THRESHOLD = 50_000
"""Collections with fewer vectors than this use exact flat search (``index_type="auto"``)."""

MIN_POINTS_PER_CENTROID = 39
"""FAISS warns when k-means gets fewer training points than this per centroid."""

MAX_POINTS_PER_CENTROID = 256
"""More training points than this per centroid add build time but little quality."""

MIN_TRAIN_POINTS = 65_536
"""Train on at least this many points when the collection has them (PQ codebooks)."""

NBITS = 8
"""Bits per PQ sub-quantizer code (256 centroids each): the fast, well-supported case."""

DEFAULT_MAX_CODE_BYTES = 64
"""Default PQ code size cap (bytes per vector): with 8-byte ids it keeps IVF-PQ < 100 B/vector."""

ID_BYTES = 8
"""Inverted lists store one int64 id per vector next to its code."""

MIN_DIMS_PER_SUBQUANTIZER = 4
"""Each PQ sub-quantizer covers at least this many dimensions: narrower ones train
slowly in FAISS (k-means at 2 dims took 30 s for 50k x 128) and gain little once the
candidates are re-scored exactly."""

HNSW_QUANTIZER_MIN_NLIST = 8192
"""From this many lists the coarse quantizer is an HNSW graph over the centroids.

At nlist 16,384 x 512 (10M vectors) a flat coarse search reads all 32 MB of centroids
for every query: 2.3 ms of a single query's time, and assigning 65,536 rows to lists
(the bulk of building: 10M rows) takes 6.5 s on 2 cores. An HNSW graph (32 links) over
the same centroids answers the query's top-32 lists in 0.1 ms (efSearch 64, 99.6 % of
the exact top-32) and assigns the 65,536 rows in 1.8 s (efSearch 32, 99.96 % to the
same list); ``benchmarks/coarse_quantizer.py`` measures it. At nlist 4,096 (1M vectors)
the 8 MB of centroids stay in cache and a flat scan is fast and exact, so smaller
indexes keep it."""

HNSW_M = 32
"""Links per node of the HNSW coarse quantizer (4 bytes each, two per link at level 0)."""

RETRAIN_GROWTH_RATIO = 1.0
"""``needs_retrain`` turns true when rows added since training exceed this x trained rows."""


@dataclass(frozen=True)
class IndexParams:
    """Structural parameters of a ``VectorIndex`` (everything except the tuned nprobe/refine).

    ``nlist``, ``m``, ``nbits``, ``opq`` and ``train_size`` are 0/False for flat indexes.
    ``quantizer`` is how IVF-PQ finds the nearest lists (flat scan or HNSW graph); indexes
    saved before it existed read back as ``"flat"``.
    """

    index_type: IndexType
    d: int
    nlist: int = 0
    m: int = 0
    nbits: int = NBITS
    opq: bool = False
    train_size: int = 0
    quantizer: QuantizerType = "flat"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (used in the manifest and ``VectorIndex.info``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexParams:
        """Inverse of ``to_dict``; raises ``KeyError``/``TypeError`` on malformed input."""
        return cls(
            index_type=data["index_type"],
            d=int(data["d"]),
            nlist=int(data["nlist"]),
            m=int(data["m"]),
            nbits=int(data["nbits"]),
            opq=bool(data["opq"]),
            train_size=int(data["train_size"]),
            quantizer=_quantizer_of(data.get("quantizer", "flat")),
        )


def _quantizer_of(value: Any) -> QuantizerType:
    if value == "hnsw":
        return "hnsw"
    if value == "flat":
        return "flat"
    raise ValueError(f"unknown coarse quantizer {value!r}")


def is_power_of_two(x: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return x > 0 and (x & (x - 1)) == 0


def choose_nlist(n: int) -> int:
    """Number of IVF lists for ``n`` vectors.

    The smallest power of two in ``[4*sqrt(n), 16*sqrt(n)]`` with at least
    ``MIN_POINTS_PER_CENTROID`` points per list. When no power of two satisfies both
    (n below ~40k, only reachable with ``index_type="ivfpq"`` forced), the largest
    power of two with 39 points per list is used instead (at least 1).

    >>> choose_nlist(1_000_000), choose_nlist(50_000)
    (4096, 1024)
    """
    if n < 1:
        raise BadQueryError(f"cannot index {n} vectors")
    low, high = 4.0 * math.sqrt(n), 16.0 * math.sqrt(n)
    p = 1 << max(0, math.ceil(math.log2(low)))
    while p <= high:
        if p * MIN_POINTS_PER_CENTROID <= n:
            return p
        p <<= 1
    # Too few points for the sqrt(n) rule: keep the training rule instead.
    cap = max(1, n // MIN_POINTS_PER_CENTROID)
    return 1 << (cap.bit_length() - 1)


def divisors(d: int) -> list[int]:
    """Sorted divisors of ``d``."""
    return [m for m in range(1, d + 1) if d % m == 0]


def choose_m(d: int, *, max_code_bytes: int = DEFAULT_MAX_CODE_BYTES) -> int:
    """Number of PQ sub-quantizers: the largest divisor of ``d`` that is at most
    ``max_code_bytes`` (8-bit codes: one byte each) and leaves each sub-quantizer at
    least ``MIN_DIMS_PER_SUBQUANTIZER`` dimensions (1 when d < 4).

    >>> choose_m(512), choose_m(768), choose_m(128), choose_m(100)
    (64, 64, 32, 25)
    """
    if d < 1:
        raise BadQueryError(f"dimension must be positive, got {d}")
    if max_code_bytes < 1:
        raise BadQueryError(f"max_code_bytes must be positive, got {max_code_bytes}")
    fitting = [
        m for m in divisors(d) if m <= max_code_bytes and d // m >= MIN_DIMS_PER_SUBQUANTIZER
    ]
    return max(fitting) if fitting else 1


def choose_train_size(n: int, nlist: int) -> int:
    """Training sample size: ``max(39*nlist, 65536)``, at most ``256*nlist`` and ``n``."""
    want = max(MIN_POINTS_PER_CENTROID * nlist, MIN_TRAIN_POINTS)
    return int(min(n, MAX_POINTS_PER_CENTROID * nlist, want))


def choose_opq(d: int, m: int, *, wanted: bool = False) -> bool:
    """OPQ rotation only when asked for (see the module docstring for why not by default)."""
    return bool(wanted) and d >= 2 and m >= 1


def estimate_flat_bytes(n: int, d: int) -> int:
    """RAM of an ``IndexIDMap(IndexFlatIP)``: float32 vectors plus int64 ids."""
    return n * (4 * d + ID_BYTES)


def estimate_ivfpq_bytes(
    n: int,
    d: int,
    nlist: int,
    m: int,
    *,
    opq: bool,
    nbits: int = NBITS,
    quantizer: QuantizerType = "flat",
) -> int:
    """RAM of an IVF-PQ index: codes + ids per vector, coarse centroids (and their HNSW
    links), PQ codebooks, OPQ matrix. The exact-refine vectors are memory-mapped from
    disk and not counted."""
    code_bytes = (m * nbits + 7) // 8
    fixed = nlist * d * 4 + (1 << nbits) * d * 4 + (d * d * 4 if opq else 0)
    if quantizer == "hnsw":
        fixed += nlist * HNSW_M * 2 * 4 * 2  # level-0 links, plus upper levels and slack
    return n * (code_bytes + ID_BYTES) + fixed


def choose_quantizer(nlist: int, wanted: str = "auto") -> QuantizerType:
    """``"hnsw"`` from ``HNSW_QUANTIZER_MIN_NLIST`` lists up (``wanted="auto"``), else flat.

    >>> choose_quantizer(4096), choose_quantizer(16384), choose_quantizer(1024, "hnsw")
    ('flat', 'hnsw', 'hnsw')
    """
    if wanted not in ("auto", "flat", "hnsw"):
        raise BadQueryError(f"quantizer must be 'auto', 'flat' or 'hnsw', got {wanted!r}")
    if wanted == "auto":
        return "hnsw" if nlist >= HNSW_QUANTIZER_MIN_NLIST else "flat"
    return _quantizer_of(wanted)


def choose_index_params(
    n: int,
    d: int,
    *,
    memory_budget_bytes: int | None = None,
    index_type: Literal["auto", "flat", "ivfpq"] = "auto",
    opq: bool = False,
    quantizer: Literal["auto", "flat", "hnsw"] = "auto",
) -> IndexParams:
    """Choose the index structure for ``n`` vectors of dimension ``d``.

    ``memory_budget_bytes`` bounds the in-RAM ANN structures (see
    ``estimate_ivfpq_bytes``): it can push a small collection from flat to IVF-PQ and
    lowers ``m`` until the codes fit. ``quantizer`` picks IVF-PQ's coarse quantizer
    (``choose_quantizer``). Raises ``BadQueryError`` when nothing fits or the
    arguments are invalid.

    >>> choose_index_params(10_000, 512).index_type
    'flat'
    >>> choose_index_params(1_000_000, 512, memory_budget_bytes=50_000_000).m
    32
    >>> choose_index_params(1_000_000, 512, opq=True).opq
    True
    """
    if n < 1 or d < 1:
        raise BadQueryError(f"cannot index n={n} vectors of dimension d={d}")
    if index_type not in ("auto", "flat", "ivfpq"):
        raise BadQueryError(f"index_type must be 'auto', 'flat' or 'ivfpq', got {index_type!r}")
    if memory_budget_bytes is not None and memory_budget_bytes <= 0:
        raise BadQueryError(f"memory_budget_bytes must be positive, got {memory_budget_bytes}")

    flat = IndexParams(index_type="flat", d=d)
    flat_fits = memory_budget_bytes is None or estimate_flat_bytes(n, d) <= memory_budget_bytes
    if index_type == "flat" or (index_type == "auto" and n < FLAT_THRESHOLD and flat_fits):
        return flat

    nlist = choose_nlist(n)
    coarse = choose_quantizer(nlist, quantizer)
    m = _choose_m_in_budget(n, d, nlist, memory_budget_bytes, opq, coarse)
    if m is None:
        need = estimate_ivfpq_bytes(n, d, nlist, 1, opq=False)
        raise BadQueryError(
            f"memory budget of {memory_budget_bytes} bytes is too small for {n} vectors "
            f"of dimension {d}: even the smallest IVF-PQ index needs {need} bytes"
        )
    return IndexParams(
        index_type="ivfpq",
        d=d,
        nlist=nlist,
        m=m,
        nbits=NBITS,
        opq=choose_opq(d, m, wanted=opq),
        train_size=choose_train_size(n, nlist),
        quantizer=coarse,
    )


def _choose_m_in_budget(
    n: int, d: int, nlist: int, budget: int | None, opq: bool, quantizer: QuantizerType
) -> int | None:
    """Largest admissible ``m`` whose index fits ``budget`` (None: nothing fits)."""
    best = choose_m(d)
    candidates = [m for m in divisors(d) if m <= best]
    for m in sorted(candidates, reverse=True):
        if (
            budget is None
            or estimate_ivfpq_bytes(
                n, d, nlist, m, opq=choose_opq(d, m, wanted=opq), quantizer=quantizer
            )
            <= budget
        ):
            return m
    return None


def retrain_due(trained_n: int, added_since_train: int) -> bool:
    """True when rows added since training exceed ``RETRAIN_GROWTH_RATIO`` x trained rows
    (i.e. the collection more than doubled): the coarse centroids and PQ codebooks were
    fitted on a distribution that may no longer be representative."""
    return added_since_train > RETRAIN_GROWTH_RATIO * max(trained_n, 1)
