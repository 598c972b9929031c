"""The exact float32 vectors behind an index: refine store and brute-force path.

Rows live in two parts:

* the *base*: rows sorted by id, memory-mapped from ``vectors-<g>.f32`` /
  ``ids-<g>.i64`` after a save or load (plain arrays right after a build), with a
  lazily created ``dead`` mask for rows removed since;
* the *delta*: rows added since the base was written, in RAM, sorted by id.

``write`` merges both into new sorted files. Lookups by id are binary searches over
the sorted ids, so no id -> row table is kept in RAM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mmsearch.ann.files import atomic_write

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

EXACT_BLOCK_BYTES = 1 << 26
"""Score matrix size per block of the brute-force path (64 MiB)."""


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


class VectorStore:
    """Live (id, vector) rows, addressable by id; see the module docstring."""

    def __init__(self, vectors: F32, ids: I64) -> None:
        """Wrap base rows that are already sorted by unique id (arrays or memmaps)."""
        if vectors.ndim != 2 or ids.shape != (vectors.shape[0],):
            raise ValueError("vectors must be (n, d) and ids (n,)")
        self.d = int(vectors.shape[1])
        self._base_vectors = vectors
        self._base_ids = ids
        self._base_dead: npt.NDArray[np.bool_] | None = None
        self._n_base_dead = 0
        self._delta_vectors: F32 = np.empty((0, self.d), np.float32)
        self._delta_ids: I64 = np.empty(0, np.int64)
        self.dirty = False  # differs from the files it was opened from

    @classmethod
    def from_arrays(cls, vectors: F32, ids: I64) -> VectorStore:
        """In-RAM store from unsorted rows (ids must be unique; copies the vectors)."""
        order = np.argsort(ids, kind="stable")
        store = cls(np.ascontiguousarray(vectors[order], dtype=np.float32), ids[order].copy())
        store.dirty = True
        return store

    @classmethod
    def open(cls, vectors_path: Path, ids_path: Path, n: int, d: int) -> VectorStore:
        """Memory-map files written by ``write`` (read-only)."""
        if n == 0:
            return cls(np.empty((0, d), np.float32), np.empty(0, np.int64))
        vectors = np.memmap(vectors_path, dtype=np.float32, mode="r", shape=(n, d))
        ids = np.memmap(ids_path, dtype=np.int64, mode="r", shape=(n,))
        return cls(vectors, ids)

    # ---- size and membership -------------------------------------------------

    @property
    def n_live(self) -> int:
        """Number of rows that can be returned."""
        return len(self._base_ids) - self._n_base_dead + len(self._delta_ids)

    @property
    def is_memory_mapped(self) -> bool:
        """True when the base rows are backed by files rather than RAM."""
        return isinstance(self._base_vectors, np.memmap)

    def _base_positions(self, ids: I64) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Row of each id in the base and whether it is a live base row."""
        nb = len(self._base_ids)
        if nb == 0:
            return np.zeros(len(ids), np.intp), np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self._base_ids, ids), nb - 1)
        hit = np.asarray(self._base_ids[pos]) == ids
        if self._base_dead is not None:
            hit &= ~self._base_dead[pos]
        return pos, hit

    def _delta_positions(self, ids: I64) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        nd = len(self._delta_ids)
        if nd == 0:
            return np.zeros(len(ids), np.intp), np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self._delta_ids, ids), nd - 1)
        return pos, self._delta_ids[pos] == ids

    def contains(self, ids: I64) -> npt.NDArray[np.bool_]:
        """Which ids are live rows."""
        return self._base_positions(ids)[1] | self._delta_positions(ids)[1]

    def lookup(self, ids: I64) -> tuple[F32, npt.NDArray[np.bool_]]:
        """Vectors of ``ids`` (any shape, flattened) and a found mask; missing rows are 0."""
        flat = np.asarray(ids, np.int64).ravel()
        out = np.zeros((len(flat), self.d), np.float32)
        bpos, bhit = self._base_positions(flat)
        dpos, dhit = self._delta_positions(flat)
        if bhit.any():
            rows = bpos[bhit]
            order = np.argsort(rows)  # ascending rows read the memmap sequentially
            out[np.flatnonzero(bhit)[order]] = self._base_vectors[rows[order]]
        if dhit.any():
            out[dhit] = self._delta_vectors[dpos[dhit]]
        return out, bhit | dhit

    # ---- mutation (the caller holds the index's write lock) -----------------

    def add(self, vectors: F32, ids: I64) -> None:
        """Append rows whose ids are not live (the caller checks)."""
        all_ids = np.concatenate([self._delta_ids, ids])
        order = np.argsort(all_ids, kind="stable")
        self._delta_ids = all_ids[order]
        self._delta_vectors = np.concatenate([self._delta_vectors, vectors])[order]
        self.dirty = True

    def remove(self, ids: I64) -> int:
        """Remove live rows with these ids; returns how many were removed."""
        bpos, bhit = self._base_positions(ids)
        removed = 0
        if bhit.any():
            if self._base_dead is None:
                self._base_dead = np.zeros(len(self._base_ids), bool)
            rows = np.unique(bpos[bhit])
            self._base_dead[rows] = True
            self._n_base_dead += len(rows)
            removed += len(rows)
        dpos, dhit = self._delta_positions(ids)
        if dhit.any():
            keep = np.ones(len(self._delta_ids), bool)
            keep[dpos[dhit]] = False
            removed += int((~keep).sum())
            self._delta_ids = self._delta_ids[keep]
            self._delta_vectors = self._delta_vectors[keep]
        if removed:
            self.dirty = True
        return removed

    # ---- iteration, brute force, persistence ----------------------------------

    def live_ids(self) -> I64:
        """All live ids, ascending."""
        base = np.asarray(self._base_ids)
        if self._base_dead is not None:
            base = base[~self._base_dead]
        return np.sort(np.concatenate([base, self._delta_ids]), kind="stable")

    def iter_live(self, chunk: int = 65_536) -> Iterator[tuple[F32, I64]]:
        """Live rows in ascending id order, ``chunk`` rows at a time."""
        live_base = (
            np.arange(len(self._base_ids))
            if self._base_dead is None
            else np.flatnonzero(~self._base_dead)
        )
        nb = len(live_base)
        all_ids = np.concatenate([np.asarray(self._base_ids)[live_base], self._delta_ids])
        order = np.argsort(all_ids, kind="stable")
        for start in range(0, len(order), chunk):
            sel = order[start : start + chunk]
            in_base = sel < nb
            out = np.empty((len(sel), self.d), np.float32)
            if in_base.any():
                out[in_base] = self._base_vectors[live_base[sel[in_base]]]
            if (~in_base).any():
                out[~in_base] = self._delta_vectors[sel[~in_base] - nb]
            yield out, all_ids[sel]

    def exact_search(self, queries: F32, k: int) -> tuple[F32, I64]:
        """Brute-force top-``k`` inner products over all live rows (blocked matmul)."""
        q = len(queries)
        best_s = np.full((q, 0), -np.inf, np.float32)
        best_i = np.full((q, 0), -1, np.int64)
        block = max(1024, EXACT_BLOCK_BYTES // (4 * max(q, 1)))
        nb = len(self._base_ids)
        parts: list[tuple[F32, I64, npt.NDArray[np.bool_] | None]] = []
        for start in range(0, nb, block):
            stop = min(nb, start + block)
            dead = None if self._base_dead is None else self._base_dead[start:stop]
            parts.append(
                (self._base_vectors[start:stop], np.asarray(self._base_ids[start:stop]), dead)
            )
        if len(self._delta_ids):
            parts.append((self._delta_vectors, self._delta_ids, None))
        for vecs, ids, dead in parts:
            scores = queries @ np.asarray(vecs).T
            if dead is not None and dead.any():
                scores[:, dead] = -np.inf
            cand_s = np.concatenate([best_s, scores], axis=1)
            cand_i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
            best_s, best_i = top_k(cand_s, cand_i, min(k, cand_s.shape[1]))
        return top_k(best_s, best_i, k)

    def write(self, vectors_path: Path, ids_path: Path) -> tuple[str, str]:
        """Write the live rows sorted by id to two files atomically; returns their SHA-256.

        Streams in chunks, so a memory-mapped base is never loaded whole.
        """
        vec_hash, id_hash = hashlib.sha256(), hashlib.sha256()

        def write_vectors(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                for vecs, _ in self.iter_live():
                    data = np.ascontiguousarray(vecs, np.float32).tobytes()
                    vec_hash.update(data)
                    f.write(data)

        def write_ids(tmp: Path) -> None:
            data = np.ascontiguousarray(self.live_ids(), np.int64).tobytes()
            id_hash.update(data)
            tmp.write_bytes(data)

        atomic_write(vectors_path, write_vectors)
        atomic_write(ids_path, write_ids)
        return vec_hash.hexdigest(), id_hash.hexdigest()
