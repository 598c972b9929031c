"""Decode images in worker processes, with a per-image time limit.

Workers read the file once, hash its bytes, decode it with the one safe loader
(:func:`mmsearch.imageio.load_image`) and return a small ``(S, S, 3)`` uint8 array
ready for the model. A bad file becomes a :class:`DecodeFailure`; a file that makes
a worker hang past the time limit is isolated (its chunk is retried one item at a
time in a fresh pool) and reported, and the run carries on.

This module must not import torch: it is imported by every worker process.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.workers import MainlessSpawnContext
from mmsearch.errors import ImageDecodeError
from mmsearch.imageio import DEFAULT_MAX_PIXELS, load_image
from mmsearch.models.preprocess import fit_square


@dataclass(frozen=True)
class DecodeOk:
    index: int
    array: npt.NDArray[np.uint8]
    sha256: str


@dataclass(frozen=True)
class DecodeFailure:
    index: int
    path: str
    reason: str
    exc_class: str


DecodeResult = DecodeOk | DecodeFailure


def decode_file(path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[npt.NDArray[np.uint8], str]:
    """Reads, hashes and decodes one image file into the model's square uint8 input."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}", cause=exc) from exc
    digest = hashlib.sha256(data).hexdigest()
    img = load_image(data, max_pixels=max_pixels, draft_size=size)  # JPEGs decode near `size`
    return fit_square(img, size), digest


DecodeFn = Callable[[str, int, int], tuple[npt.NDArray[np.uint8], str]]


def decode_chunk(
    chunk: Sequence[tuple[int, str]], size: int, max_pixels: int, decode: DecodeFn = decode_file
) -> list[DecodeResult]:
    """Worker entry point: decodes a chunk, turning every per-file error into a failure."""
    out: list[DecodeResult] = []
    for index, path in chunk:
        try:
            array, digest = decode(path, size, max_pixels)
            out.append(DecodeOk(index, array, digest))
        except ImageDecodeError as exc:
            out.append(DecodeFailure(index, path, exc.reason, exc.cause_class))
        except Exception as exc:  # one bad file must never end the run
            out.append(DecodeFailure(index, path, f"unexpected decode error: {exc}", type(exc).__name__))
    return out


def default_decode_workers(cores: int | None = None, *, device: str = "cpu") -> int:
    """Decode processes that keep the model fed without taking its cores.

    On a CPU the model's threads use every core and one image's decode (with JPEG
    draft scaling) costs a few percent of its embedding, so one worker per four
    cores suffices; more would only contend with the model. A GPU leaves the CPU
    to decoding: every core but one (for the feeding thread), at most 16.
    """
    n = cores if cores is not None else _usable_cores()
    if device.startswith("cuda"):
        return max(1, min(n - 1, 16))
    return max(1, min(n // 4, 8))


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class DecodePool:
    """A pool of decode workers that yields results in input order.

    >>> with DecodePool(size=64, workers=2) as pool:  # doctest: +SKIP
    ...     for result in pool.decode(enumerate(paths)):
    ...         ...
    """

    def __init__(
        self,
        size: int,
        *,
        workers: int | None = None,
        chunk_size: int = 16,
        timeout_s: float = 30.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_in_flight: int | None = None,
        decode: DecodeFn = decode_file,
    ) -> None:
        """``decode`` must be a module-level (picklable) function; ``timeout_s`` bounds
        the time per image, enforced by killing and replacing the worker pool."""
        self.size = size
        self.decode_fn = decode
        self.workers = max(1, workers if workers is not None else default_decode_workers())
        self.chunk_size = max(1, chunk_size)
        self.timeout_s = timeout_s
        self.max_pixels = max_pixels
        self.max_in_flight = max_in_flight or self.workers * 4
        # The parent holds torch threads: never fork it. Spawned workers start clean and
        # never import the caller's __main__ (unguarded scripts, ``python -``, notebooks).
        self._ctx = MainlessSpawnContext()
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=self._ctx)
        return self._executor

    def _kill(self) -> None:
        """Kills every worker (one is hung) so that a fresh pool can take over."""
        if self._executor is None:
            return
        for proc in list(getattr(self._executor, "_processes", {}).values()):
            proc.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _submit(self, chunk: list[tuple[int, str]]):
        return self._pool().submit(decode_chunk, chunk, self.size, self.max_pixels, self.decode_fn)

    def decode(self, items: Iterable[tuple[int, str]]) -> Iterator[DecodeResult]:
        """Decodes ``(index, path)`` pairs; yields one result per pair, in order.

        When a chunk hangs past the time limit or its worker dies, the pool is killed
        and replaced; the chunk's files are then retried one at a time, alone in the
        pool, so that only the culprit is reported — never an innocent neighbour.
        """
        source = iter(items)
        pending: deque[tuple[list[tuple[int, str]], Any]] = deque()
        retry: deque[list[tuple[int, str]]] = deque()  # innocent chunks to resubmit, in order

        def fill() -> None:
            while len(pending) < self.max_in_flight:
                if retry:
                    chunk = retry.popleft()
                else:
                    chunk = [pair for _, pair in zip(range(self.chunk_size), source, strict=False)]
                    if not chunk:
                        return
                pending.append((chunk, self._submit(chunk)))

        fill()
        while pending:
            chunk, future = pending.popleft()
            try:
                results = future.result(timeout=self.timeout_s + 5.0)  # a healthy chunk takes far less
            except Exception:  # timed out, or a worker died (BrokenProcessPool)
                self._kill()
                retry.extendleft(reversed([c for c, _ in pending]))
                pending.clear()
                yield from self._isolate(chunk)
                fill()
                continue
            yield from results
            fill()

    def _isolate(self, chunk: list[tuple[int, str]]) -> Iterator[DecodeResult]:
        """Decodes each file alone in the pool; a hang or a dead worker blames that file."""
        for index, path in chunk:
            future = self._submit([(index, path)])
            try:
                yield from future.result(timeout=self.timeout_s + 5.0)
            except FutureTimeout:
                self._kill()
                yield DecodeFailure(index, path, f"decode timed out after {self.timeout_s:g}s", "TimeoutError")
            except Exception as exc:
                self._kill()
                yield DecodeFailure(index, path, f"decode worker died: {exc}", type(exc).__name__)
