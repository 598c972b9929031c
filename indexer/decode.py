"""Decode images in worker processes, with a per-image time limit.

Workers (an :class:`~mmsearch.indexer.prefetch.OrderedPool` of processes) read the file once, hash its bytes, decode it with the one safe loader
(:func:`mmsearch.imageio.load_image`) and return a small ``(S, S, 3)`` uint8 array
ready for the model. A bad file becomes a :class:`DecodeFailure`; a file that makes
a worker hang past the time limit is isolated (its chunk is retried one item at a
time in a fresh pool) and reported, and the run carries on.

This module must not import torch: it is imported by every worker process.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import numpy.typing as npt
from mmsearch.indexer.prefetch import OrderedPool

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


def read_file(path: str) -> tuple[bytes, str]:
    """The file's bytes and their sha256 (hex); a read error is an :class:`ImageDecodeError`."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}", cause=exc) from exc
    return data, hashlib.sha256(data).hexdigest()


def decode_bytes(
    data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> npt.NDArray[np.uint8]:
    """Decodes an image file's bytes into the model's square uint8 input (JPEGs near ``size``)."""
    return fit_square(load_image(data, max_pixels=max_pixels, draft_size=size), size)


def decode_file(
    path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[npt.NDArray[np.uint8], str]:
    """Reads, hashes and decodes one image file into the model's square uint8 input."""
    data, digest = read_file(path)
    return decode_bytes(data, size, max_pixels), digest


DecodeFn = Callable[[str, int, int], tuple[npt.NDArray[np.uint8], str]]


def decode_chunk(
    chunk: Sequence[tuple[int, str | bytes]],
    size: int,
    max_pixels: int,
    decode: DecodeFn = decode_file,
) -> list[DecodeResult]:
    """Worker entry point: decodes a chunk of file paths (through ``decode``) or encoded
    images (``bytes``, fetched already), turning every per-item error into a failure."""
    out: list[DecodeResult] = []
    for index, source in chunk:
        where = source if isinstance(source, str) else f"<{len(source)} bytes>"
        try:
            if isinstance(source, str):
                array, digest = decode(source, size, max_pixels)
            else:
                array = decode_bytes(source, size, max_pixels)
                digest = hashlib.sha256(source).hexdigest()
            out.append(DecodeOk(index, array, digest))
        except ImageDecodeError as exc:
            out.append(DecodeFailure(index, where, exc.reason, exc.cause_class))
        except Exception as exc:  # one bad file must never end the run
            out.append(
                DecodeFailure(index, where, f"unexpected decode error: {exc}", type(exc).__name__)
            )
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

    An :class:`~mmsearch.indexer.prefetch.OrderedPool` of processes running
    :func:`decode_chunk`; a hung or crashing file becomes a :class:`DecodeFailure`.

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
        kind: Literal["process", "thread"] = "process",
    ) -> None:
        """``decode`` must be a module-level (picklable) function; ``timeout_s`` bounds
        the time per image, enforced by killing and replacing the worker pool.
        ``kind="thread"`` decodes in threads of this process (no start-up cost: for a
        few images already in memory; a hung thread is abandoned, not killed)."""
        self.size = size
        self.decode_fn = decode
        self.max_pixels = max_pixels
        self._pool: OrderedPool[str | bytes, DecodeResult] = OrderedPool(
            partial(decode_chunk, size=size, max_pixels=max_pixels, decode=decode),
            lost=_lost_decode,
            kind=kind,
            workers=workers if workers is not None else default_decode_workers(),
            chunk_size=chunk_size,
            timeout_s=timeout_s,
            max_in_flight=max_in_flight,
        )
        self.workers = self._pool.workers

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Spawns the workers now, ahead of the first files (see :meth:`OrderedPool.start`)."""
        self._pool.start()

    def close(self, *, wait: bool = True) -> None:
        """Releases the workers (``wait=False``: idle workers exit on their own)."""
        self._pool.close(wait=wait)

    def decode(self, items: Iterable[tuple[int, str | bytes]]) -> Iterator[DecodeResult]:
        """Decodes ``(index, path or bytes)`` pairs; yields one result per pair, in order.

        When a chunk hangs past the time limit or its worker dies, the pool is killed
        and replaced; the chunk's files are then retried one at a time, alone in the
        pool, so that only the culprit is reported — never an innocent neighbour.
        """
        return self._pool.map(items)


def _lost_decode(index: int, source: str | bytes, reason: str, exc_class: str) -> DecodeFailure:
    where = source if isinstance(source, str) else f"<{len(source)} bytes>"
    return DecodeFailure(index, where, f"decode {reason}", exc_class)
