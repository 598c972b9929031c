"""Helpers of ``benchmarks/ann.py`` for collections larger than RAM (``--streamed``).

The data set is generated into a ``.npy`` file chunk by chunk and read back with plain
file reads (not a memory map, so reading 20 GB does not count 20 GB of mapped pages
in the process's resident set); exact ground truth is a blocked scan of that file for
a sample of queries; our index is built with ``VectorIndex.build_streamed``.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import SyntheticSpec, generate

CHUNK = 1 << 16


def peak_rss_bytes() -> int:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak memory of this process over a ``with`` block (Linux).

    ``rss``: the kernel's high-water mark of the resident set (VmHWM, reset on entry by
    writing 5 to /proc/self/clear_refs), file-backed mapped pages included.
    ``anon`` / ``file``: the largest RssAnon (heap, the process's own memory) and
    RssFile (mapped file pages: page cache it can give back) seen by a sampler thread
    every ``interval`` seconds.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.rss = self.anon = self.file = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.anon = max(self.anon, _status_kib("RssAnon") * 1024)
            self.file = max(self.file, _status_kib("RssFile") * 1024)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.hwm_reset = True
        except OSError:  # older kernels / restricted /proc: VmHWM then covers the whole run
            self.hwm_reset = False
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.rss = _status_kib("VmHWM") * 1024

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_rss_bytes": self.rss,
            "peak_rss_anon_bytes": self.anon,
            "peak_rss_file_bytes": self.file,
            "hwm_reset": self.hwm_reset,
        }


def dir_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (hard links counted once)."""
    seen: set[int] = set()
    total = 0
    for f in path.rglob("*"):
        if f.is_file():
            st = f.stat()
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def ensure_data(spec: SyntheticSpec, n: int, work: Path) -> Path:
    """The base set as ``data-<n>x<d>-s<seed>.npy``, generated chunk-wise once (plain
    writes: a writable memory map would keep the written pages in this process's RSS)."""
    path = work / f"data-{n}x{spec.d}-s{spec.seed}.npy"
    if not path.exists():
        tmp = path.with_suffix(".tmp.npy")
        header = {"descr": "<f4", "fortran_order": False, "shape": (n, spec.d)}
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            step = 1 << 20
            for start in range(0, n, step):  # one generate() call per 1M rows: bounded memory
                m = min(step, n - start)
                f.write(np.ascontiguousarray(_stream_slice(spec, start, m), "<f4").tobytes())
        tmp.rename(path)
    return path


def _stream_slice(spec: SyntheticSpec, start: int, m: int) -> np.ndarray:
    # generate() seeds each CHUNK-row chunk by its index: rows start..start+m of the
    # full stream are the same whether generated at once or slice by slice
    from benchmarks import datasets

    assert start % datasets.CHUNK == 0
    first = start // datasets.CHUNK
    out = np.empty((m, spec.d), np.float32)
    model_chunks = range(first, first + (m + datasets.CHUNK - 1) // datasets.CHUNK)
    for j, chunk_index in enumerate(model_chunks):
        rows = min(datasets.CHUNK, m - j * datasets.CHUNK)
        out[j * datasets.CHUNK : j * datasets.CHUNK + rows] = datasets.generate_chunk(
            spec, rows, 0, chunk_index
        )
    return out


def iter_rows(path: Path, chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(vectors, ids) chunks of a 2-D float32 ``.npy`` by plain reads; ids = row numbers."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        (n, d), _, _ = read_header(f)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            x = np.fromfile(f, dtype=np.float32, count=m * d).reshape(m, d)
            yield x, np.arange(start, start + m, dtype=np.int64)


def exact_truth(path: Path, q: np.ndarray, k: int = 100) -> tuple[np.ndarray, float]:
    """Exact top-``k`` ids of ``q`` by a blocked scan of the file; returns (ids, seconds)."""
    import faiss

    t0 = time.perf_counter()
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.full((len(q), 0), -1, np.int64)
    for x, ids in iter_rows(path, 1 << 18):
        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(x)
        s, i = flat.search(q, min(k, len(x)))
        cand_s, cand_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, ids[i]], 1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i, time.perf_counter() - t0


def incremental_add(index: Any, spec: SyntheticSpec, n: int, work: Path) -> dict[str, float]:
    """Adds 1% new rows (another stream) to a loaded index and saves it into a new
    directory, as an indexing run's ANN update does; returns seconds and bytes written."""
    m = max(1, n // 100)
    new = generate(spec, m, stream=2)
    ids = np.arange(n, n + m, dtype=np.int64)
    target = work / "ours-incremental"
    t0 = time.perf_counter()
    index.add(new, ids, retrain=False)
    index.save(target, table_version=2, model_key="synthetic")
    seconds = time.perf_counter() - t0
    src_inodes = {f.stat().st_ino for f in (work / "ours").iterdir() if f.is_file()}
    written = sum(
        f.stat().st_size
        for f in target.iterdir()
        if f.is_file() and f.stat().st_ino not in src_inodes
    )
    return {"rows": m, "seconds": seconds, "bytes_written": written}
