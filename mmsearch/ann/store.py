"""The exact vectors behind an index: an append-only refine store and the brute-force path.

Rows live in *segments* (``mmsearch.ann.segment``):

* sealed segments, memory-mapped from ``vectors-<g>.f32|f16`` / ``ids-<g>.i64`` after a
  save or load (in RAM right after a build); a file, once written, never changes;
* the *delta*: rows added since the last save, in RAM, written as one new segment by
  the next save.

A removal only marks the row dead (a tombstone); the save persists the dead rows as
one small file of row positions. An incremental update therefore writes the new rows
and the tombstones, never a copy of the existing vectors; ``mmsearch.ann.persist``
compacts the segments into one when there are too many or too many dead rows.

Vectors may be stored as float16 (``dtype="float16"``), half the disk and page cache;
lookups always return float32.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from mmsearch.ann.segment import Segment, check_dtype

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

EXACT_BLOCK_BYTES = 1 << 26
"""Score matrix size per block of the brute-force path (64 MiB)."""
SCAN_ROWS = 65_536
"""Rows per sequential read of a segment."""


def top_k(scores: F32, ids: I64, k: int) -> tuple[F32, I64]:
    """Row-wise top-``k`` by descending score; pads with (-inf, -1) when fewer exist."""
    q, c = scores.shape
    if c < k:
        scores = np.concatenate([scores, np.full((q, k - c), -np.inf, np.float32)], axis=1)
        ids = np.concatenate([ids, np.full((q, k - c), -1, np.int64)], axis=1)
        c = k
    if c > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    out_s = np.take_along_axis(scores, order, axis=1).astype(np.float32, copy=False)
    out_i = np.take_along_axis(ids, order, axis=1).astype(np.int64, copy=False)
    out_i[~np.isfinite(out_s)] = -1
    return out_s, out_i


def pad_missing(scores: F32, ids: I64) -> tuple[F32, I64]:
    """FAISS answers with ``-inf`` scores where it had no row (id -1)."""
    scores = np.asarray(scores, np.float32).copy()
    scores[ids < 0] = -np.inf
    return scores, np.asarray(ids, np.int64)


class VectorStore:
    """Live (id, vector) rows, addressable by id; see the module docstring."""

    def __init__(self, segments: list[Segment], d: int, *, dtype: str = "float32") -> None:
        """Wrap sealed segments (ids unique across live rows)."""
        self.d = int(d)
        self.dtype = dtype
        self._np_dtype = check_dtype(dtype)
        self.segments = list(segments)
        self._delta = Segment(np.empty((0, self.d), self._np_dtype), np.empty(0, np.int64))
        self.dirty = False  # differs from the files it was opened from

    @classmethod
    def from_arrays(cls, vectors: F32, ids: I64, *, dtype: str = "float32") -> VectorStore:
        """In-RAM store from unsorted rows (ids must be unique; copies the vectors)."""
        store = cls([], vectors.shape[1], dtype=dtype)
        store.add(vectors, ids)
        return store

    # ---- size and membership -------------------------------------------------

    @property
    def all_segments(self) -> list[Segment]:
        """Sealed segments then the delta."""
        return [*self.segments, self._delta]

    @property
    def delta_rows(self) -> int:
        """Rows added since the last save."""
        return len(self._delta)

    @property
    def n_live(self) -> int:
        """Number of rows that can be returned."""
        return sum(s.n_live for s in self.all_segments)

    @property
    def n_dead(self) -> int:
        """Rows of sealed segments removed since they were written."""
        return sum(s.n_dead for s in self.segments)

    @property
    def is_memory_mapped(self) -> bool:
        """True when the sealed rows are backed by files rather than RAM."""
        return bool(self.segments) and all(s.path is not None for s in self.segments if len(s))

    def contains(self, ids: I64) -> npt.NDArray[np.bool_]:
        """Which ids are live rows."""
        hit = np.zeros(len(ids), bool)
        for seg in self.all_segments:
            hit |= seg.positions(ids)[1]
        return hit

    def lookup(self, ids: I64, *, bulk: bool = False) -> tuple[F32, npt.NDArray[np.bool_]]:
        """float32 vectors of ``ids`` (any shape, flattened) and a found mask; missing rows
        are 0. ``bulk=True`` for one-off large reads (see ``Segment.gather``)."""
        flat = np.asarray(ids, np.int64).ravel()
        out: F32 | None = None  # allocated only when the rows span segments or miss
        found = np.zeros(len(flat), bool)
        for seg in self.all_segments:
            if not len(seg):
                continue
            rows, hit = seg.positions(flat)
            if out is None and hit.all():  # the common case: one segment holds every row
                return seg.gather(rows, bulk=bulk), hit
            if hit.any():
                if out is None:
                    out = np.zeros((len(flat), self.d), np.float32)
                out[hit] = seg.gather(rows[hit], bulk=bulk)
                found |= hit
        if out is None:
            out = np.zeros((len(flat), self.d), np.float32)
        return out, found

    # ---- mutation (the caller holds the index's write lock) -----------------

    def add(self, vectors: F32, ids: I64) -> None:
        """Append rows whose ids are not live (the caller checks) to the delta."""
        delta = self._delta
        ids = np.asarray(ids, np.int64)
        if delta.n_live == 0:  # e.g. a build: one sorted copy of the rows, no concatenation
            order = np.argsort(ids, kind="stable")
            rows = np.take(np.asarray(vectors), order, axis=0).astype(self._np_dtype, copy=False)
            self._delta = Segment(np.ascontiguousarray(rows), ids[order])
            self.dirty = True
            return
        keep = np.ones(len(delta), bool) if delta.dead is None else ~delta.dead
        all_ids = np.concatenate([np.asarray(delta.ids)[keep], ids])
        all_vecs = np.concatenate(
            [np.asarray(delta.vectors)[keep], np.asarray(vectors).astype(self._np_dtype)]
        )
        order = np.argsort(all_ids, kind="stable")
        self._delta = Segment(np.ascontiguousarray(all_vecs[order]), all_ids[order])
        self.dirty = True

    def remove(self, ids: I64) -> int:
        """Mark live rows with these ids dead; returns how many were removed."""
        removed = 0
        for seg in self.all_segments:
            rows, hit = seg.positions(ids)
            if hit.any():
                removed += seg.kill(rows[hit])
        if removed:
            self.dirty = True
        return removed

    # ---- tombstones ----------------------------------------------------------------

    def tombstones(self) -> I64:
        """Dead rows of the sealed segments as positions in their concatenation."""
        parts, offset = [], 0
        for seg in self.segments:
            if seg.dead is not None and seg.n_dead:
                parts.append(np.flatnonzero(seg.dead).astype(np.int64) + offset)
            offset += len(seg)
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def apply_tombstones(self, positions: I64) -> None:
        """Mark rows dead from positions written by ``tombstones``."""
        offset = 0
        for seg in self.segments:
            mine = positions[(positions >= offset) & (positions < offset + len(seg))] - offset
            if len(mine):
                seg.kill(mine.astype(np.intp))
            offset += len(seg)

    # ---- iteration, brute force --------------------------------------------------

    def live_ids(self) -> I64:
        """All live ids, ascending."""
        parts = []
        for seg in self.all_segments:
            ids = np.asarray(seg.ids)
            parts.append(ids if seg.dead is None else ids[~seg.dead])
        return np.sort(np.concatenate(parts), kind="stable")

    def iter_live(self, chunk: int = SCAN_ROWS) -> Iterator[tuple[F32, I64]]:
        """Live rows as float32 (vectors, ids) chunks, segment by segment (not sorted)."""
        for seg in self.all_segments:
            yield from _iter_segment(seg, chunk)

    def iter_delta(self, chunk: int = SCAN_ROWS) -> Iterator[tuple[F32, I64]]:
        """Live rows of the delta (what the next save writes as a new segment)."""
        yield from _iter_segment(self._delta, chunk)

    def exact_search(self, queries: F32, k: int) -> tuple[F32, I64]:
        """Brute-force top-``k`` inner products over all live rows (blocked matmul)."""
        q = len(queries)
        best_s = np.full((q, 0), -np.inf, np.float32)
        best_i = np.full((q, 0), -1, np.int64)
        block = min(SCAN_ROWS, max(1024, EXACT_BLOCK_BYTES // (4 * max(q, 1))))
        for vecs, ids in self.iter_live(block):
            scores = queries @ vecs.T
            cand_s = np.concatenate([best_s, scores], axis=1)
            cand_i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
            best_s, best_i = top_k(cand_s, cand_i, min(k, cand_s.shape[1]))
        return top_k(best_s, best_i, k)

    def rescore(self, q: F32, cand: I64, k: int) -> tuple[F32, I64]:
        """Top-``k`` of the candidate ids by exact inner product; unknown or removed ids
        drop out (the exact refine of an IVF-PQ search)."""
        vecs, found = self.lookup(cand)
        vecs = vecs.reshape(cand.shape[0], cand.shape[1], -1)
        scores = np.einsum("qcd,qd->qc", vecs, q, optimize=False).astype(np.float32)
        found = found.reshape(cand.shape) & (cand >= 0)
        scores[~found] = -np.inf
        return top_k(scores, np.where(found, cand, -1), k)


def _iter_segment(seg: Segment, chunk: int) -> Iterator[tuple[F32, I64]]:
    for start in range(0, len(seg), chunk):
        stop = min(len(seg), start + chunk)
        vecs = seg.read_rows(start, stop)
        ids = np.asarray(seg.ids[start:stop])
        live = seg.live_mask(start, stop)
        if live is not None:
            vecs, ids = vecs[live], ids[live]
        if len(ids):
            yield vecs, ids
