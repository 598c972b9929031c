"""One immutable run of refine rows: ids plus float32 or float16 vectors, and a dead mask.

A segment is written once (``write_segment``) and never changed; removals only set
bits of its in-RAM dead mask, which the owning store persists as a tombstone file.
Rows keep the order they were written in (a table scan need not be sorted by id);
lookups go through ``sorted_ids`` / ``order`` (the row of each sorted id), computed
on open, so no id -> row dictionary is kept.

File-backed segments are memory-mapped for random lookups, but sequential passes
(``read_rows``) use plain reads, so scanning a 10 GB segment does not leave 10 GB of
mapped pages in the process's resident set.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mmsearch.ann.files import atomic_write

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

REFINE_DTYPES = ("float32", "float16")
"""Storage types for refine vectors: float16 halves disk and page cache."""

SUFFIX = {"float32": ".f32", "float16": ".f16"}


def check_dtype(dtype: str) -> np.dtype[np.floating]:
    """numpy dtype of a refine storage type name (ValueError for other names)."""
    if dtype not in REFINE_DTYPES:
        raise ValueError(f"refine dtype must be one of {REFINE_DTYPES}, got {dtype!r}")
    return np.dtype(dtype)


GATHER_PREAD_MIN = 4096
"""``Segment.gather(bulk=True)`` reads this many rows or more with ``pread``, not the map."""


class Segment:
    """Rows (ids, vectors) of one segment; see the module docstring."""

    def __init__(
        self, vectors: npt.NDArray[np.floating], ids: I64, *, path: Path | None = None
    ) -> None:
        if vectors.ndim != 2 or ids.shape != (vectors.shape[0],):
            raise ValueError("vectors must be (n, d) and ids (n,)")
        self.vectors = vectors
        # Plain ndarray view for reads: np.memmap's __getitem__ wraps every result in a
        # memmap, ~40 us per query's refine gather.
        self._rows = vectors.view(np.ndarray) if isinstance(vectors, np.memmap) else vectors
        self.ids = ids
        self.path = path  # the vectors file when file-backed (sequential reads use it)
        ids_arr = np.asarray(ids)
        if len(ids_arr) > 1 and not bool(np.all(ids_arr[1:] > ids_arr[:-1])):
            self.order: npt.NDArray[np.intp] | None = np.argsort(ids_arr, kind="stable")
            self.sorted_ids = ids_arr[self.order]
        else:
            self.order = None
            self.sorted_ids = ids_arr
        if len(self.sorted_ids) > 1 and not bool(np.all(np.diff(self.sorted_ids) > 0)):
            raise ValueError("segment ids must be unique")
        self.dead: npt.NDArray[np.bool_] | None = None
        self.n_dead = 0
        self._fd: int | None = None

    @classmethod
    def open(cls, vectors_path: Path, ids_path: Path, n: int, d: int, dtype: str) -> Segment:
        """Memory-map files written by ``write_segment`` (read-only)."""
        np_dtype = check_dtype(dtype)
        if n == 0:
            return cls(np.empty((0, d), np_dtype), np.empty(0, np.int64))
        vectors = np.memmap(vectors_path, dtype=np_dtype, mode="r", shape=(n, d))
        ids = np.fromfile(ids_path, dtype=np.int64, count=n)
        segment = cls(vectors, ids, path=vectors_path)
        # Sequential reads go through a descriptor held open, so a reader keeps working
        # after a newer snapshot's garbage collection unlinks the file (as the map does).
        fd = os.open(vectors_path, os.O_RDONLY)
        segment._fd = fd
        weakref.finalize(segment, os.close, fd)
        return segment

    # ---- sizes -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_live(self) -> int:
        return len(self.ids) - self.n_dead

    @property
    def d(self) -> int:
        return int(self.vectors.shape[1])

    # ---- lookups ---------------------------------------------------------------

    def positions(self, ids: I64) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Row of each id and whether it is a live row of this segment."""
        n = len(self.sorted_ids)
        if n == 0:
            return np.zeros(len(ids), np.intp), np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.sorted_ids, ids), n - 1)
        hit = self.sorted_ids[pos] == ids
        rows = pos if self.order is None else self.order[pos]
        if self.dead is not None:
            hit &= ~self.dead[rows]
        return rows, hit

    def gather(self, rows: npt.NDArray[np.intp], *, bulk: bool = False) -> F32:
        """float32 vectors of ``rows`` (read in ascending row order).

        Rows come from the memory map (query candidates: the fastest path once the
        pages are cached). ``bulk=True`` (a one-off read of a large sample, e.g. for
        training) reads them with one ``pread`` each when there are at least
        ``GATHER_PREAD_MIN``: faulting them in through the map would also map the pages
        the kernel faults around each one (64 KiB), and a 6 % sample of a 10 GB segment
        would then hold the whole file in the process's resident set.
        """
        order = np.argsort(rows)
        out = np.empty((len(rows), self.d), np.float32)
        if not bulk or self._fd is None or len(rows) < GATHER_PREAD_MIN:
            out[order] = self._rows[rows[order]]
            return out
        row_bytes = self.d * self.vectors.dtype.itemsize
        fd = self._fd
        data = b"".join([os.pread(fd, row_bytes, int(r) * row_bytes) for r in rows[order]])
        if len(data) != len(rows) * row_bytes:
            raise OSError(f"short read of {self.path}")
        out[order] = np.frombuffer(data, dtype=self.vectors.dtype).reshape(len(rows), self.d)
        return out

    def read_rows(self, start: int, stop: int) -> F32:
        """float32 vectors of rows ``start:stop``, by a plain read when file-backed."""
        if self._fd is None:
            return np.asarray(self.vectors[start:stop], dtype=np.float32)
        row_bytes = self.d * self.vectors.dtype.itemsize
        want = (stop - start) * row_bytes
        data = os.pread(self._fd, want, start * row_bytes)
        if len(data) != want:
            raise OSError(f"short read of {self.path}: {len(data)} of {want} bytes")
        raw = np.frombuffer(data, dtype=self.vectors.dtype)
        return raw.reshape(stop - start, self.d).astype(np.float32)

    def live_mask(self, start: int, stop: int) -> npt.NDArray[np.bool_] | None:
        """Live rows among ``start:stop`` (None: all live)."""
        if self.dead is None or not self.n_dead:
            return None
        return ~self.dead[start:stop]

    # ---- mutation ----------------------------------------------------------------

    def kill(self, rows: npt.NDArray[np.intp]) -> int:
        """Mark rows dead; returns how many were live."""
        if self.dead is None:
            self.dead = np.zeros(len(self.ids), bool)
        rows = np.unique(rows)
        fresh = int((~self.dead[rows]).sum())
        self.dead[rows] = True
        self.n_dead += fresh
        return fresh


def write_segment(
    vectors_path: Path, ids_path: Path, chunks: Iterable[tuple[F32, I64]], dtype: str
) -> tuple[int, str, str]:
    """Stream (vectors, ids) chunks into a new segment's two files, atomically.

    Returns (rows written, SHA-256 of the vectors file, SHA-256 of the ids file). The
    ids file is written after the vectors, from ids kept in RAM (8 bytes per row).
    """
    np_dtype = check_dtype(dtype)
    vec_hash, id_hash = hashlib.sha256(), hashlib.sha256()
    id_parts: list[I64] = []

    def write_vectors(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for vecs, ids in chunks:
                data = np.ascontiguousarray(vecs, dtype=np_dtype).tobytes()
                vec_hash.update(data)
                f.write(data)
                id_parts.append(np.asarray(ids, np.int64).copy())

    def write_ids(tmp: Path) -> None:
        data = np.concatenate(id_parts).tobytes() if id_parts else b""
        id_hash.update(data)
        tmp.write_bytes(data)

    atomic_write(vectors_path, write_vectors)
    atomic_write(ids_path, write_ids)
    n = int(sum(len(p) for p in id_parts))
    return n, vec_hash.hexdigest(), id_hash.hexdigest()
