"""Ordered, bounded prefetch with per-item failure isolation: the overlap of the indexer.

:class:`OrderedPool` runs a chunk function over ``(index, item)`` pairs in worker
processes or threads, a few chunks ahead of the consumer, and yields one result per
pair in input order. The consumer (the thread that runs the model) takes results as
they come, so preparing the next items (decoding images, tokenising texts) overlaps
the model's work on the current batch.

The chunk function turns every per-item error into a failure result itself; the pool
handles what it cannot: a chunk that hangs past the time limit or whose worker dies.
Then the pool is replaced, the chunks behind it are resubmitted, and the stuck chunk's
items are retried one at a time, so only the culprit is reported (through ``lost``),
never an innocent neighbour.

Processes can be killed; a thread cannot: a hung thread is abandoned (it keeps its
core until it returns) while a fresh pool carries on. Use threads only for work that
releases the GIL and cannot hang for long (tokenisation), processes otherwise.

This module must not import torch: decode workers import it.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, Literal, TypeVar

from mmsearch.indexer.workers import MainlessSpawnContext, exit_with_parent

T = TypeVar("T")
R = TypeVar("R")

#: ``(index, item, reason, exception class name)`` -> the failure result of a lost item.
LostFn = Callable[[int, T, str, str], R]

#: Default extra seconds a chunk may take beyond ``timeout_s`` before it counts as hung
#: (a healthy chunk takes far less than one item's limit; a spawned process needs a
#: moment to start).
CHUNK_GRACE_S = 5.0


def _ready() -> None:
    """A task that does nothing: submitted to start a pool's workers (picklable)."""


class OrderedPool(Generic[T, R]):
    """Runs ``run_chunk`` over chunks of ``(index, item)`` ahead of the consumer, in order.

    >>> pool = OrderedPool(tokenise_chunk, lost=failure, kind="thread", workers=1)  # doctest: +SKIP
    >>> with pool:  # doctest: +SKIP
    ...     for result in pool.map(enumerate(texts)):
    ...         ...

    ``run_chunk`` gets a list of ``(index, item)`` pairs and returns one result per
    pair, in order; for ``kind="process"`` it must be picklable (a module-level
    function or a ``functools.partial`` of one). ``timeout_s`` bounds one item's work (and, plus a grace, a chunk's).
    At most ``max_in_flight`` chunks (default: four per worker) are queued ahead;
    ``grace_s`` is added to every wait (see :data:`CHUNK_GRACE_S`).
    """

    def __init__(
        self,
        run_chunk: Callable[[list[tuple[int, T]]], Sequence[R]],
        *,
        lost: LostFn[T, R],
        kind: Literal["process", "thread"] = "process",
        workers: int = 1,
        chunk_size: int = 16,
        timeout_s: float = 30.0,
        max_in_flight: int | None = None,
        grace_s: float = CHUNK_GRACE_S,
    ) -> None:
        if kind not in ("process", "thread"):
            raise ValueError(f"kind must be 'process' or 'thread', got {kind!r}")
        self.run_chunk = run_chunk
        self.lost = lost
        self.kind = kind
        self.workers = max(1, workers)
        self.chunk_size = max(1, chunk_size)
        self.timeout_s = timeout_s
        self.max_in_flight = max(1, max_in_flight or self.workers * 4)
        self.grace_s = grace_s
        self._executor: Executor | None = None

    def __enter__(self) -> OrderedPool[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pool(self) -> Executor:
        if self._executor is None:
            if self.kind == "process":
                # The parent holds torch threads: never fork it. Spawned workers start clean,
                # never import the caller's __main__ (scripts, ``python -``, notebooks), and
                # end with this process even when it is killed.
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=MainlessSpawnContext(),
                    initializer=exit_with_parent,
                    initargs=(os.getpid(),),
                )
            else:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.workers, thread_name_prefix="mmsearch-prefetch"
                )
        return self._executor

    def _kill(self) -> None:
        """Drops the pool (one worker is stuck) so that a fresh one can take over."""
        if self._executor is None:
            return
        for proc in list((getattr(self._executor, "_processes", None) or {}).values()):
            proc.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None

    def start(self) -> None:
        """Starts the workers now (spawned processes take a moment to start and import),
        so that the first chunk finds them ready; otherwise they start with it. A process
        pool spawns a worker for each task that finds none idle: one task per worker."""
        pool = self._pool()
        for _ in range(self.workers):
            pool.submit(_ready)

    def close(self, *, wait: bool = True) -> None:
        """Releases the workers: waits for them to exit, or with ``wait=False`` lets idle
        ones exit on their own while the caller goes on."""
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None

    def _submit(self, chunk: list[tuple[int, T]]) -> Future[Sequence[R]]:
        return self._pool().submit(self.run_chunk, chunk)

    def map(self, items: Iterable[tuple[int, T]]) -> Iterator[R]:
        """One result per ``(index, item)`` pair, in input order (see the class doc)."""
        source = iter(items)
        pending: deque[tuple[list[tuple[int, T]], Future[Sequence[R]]]] = deque()
        retry: deque[list[tuple[int, T]]] = deque()  # innocent chunks to resubmit, in order

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
                results = future.result(timeout=self.timeout_s + self.grace_s)
            except Exception:  # timed out, or a worker died (BrokenProcessPool)
                self._kill()
                retry.extendleft(reversed([c for c, _ in pending]))
                pending.clear()
                yield from self._isolate(chunk)
                fill()
                continue
            yield from results
            fill()

    def _isolate(self, chunk: list[tuple[int, T]]) -> Iterator[R]:
        """Runs each item alone in the pool; a hang or a dead worker blames that item."""
        for index, item in chunk:
            future = self._submit([(index, item)])
            try:
                yield from future.result(timeout=self.timeout_s + self.grace_s)
            except FutureTimeout:
                self._kill()
                yield self.lost(index, item, f"timed out after {self.timeout_s:g}s", "TimeoutError")
            except Exception as exc:
                self._kill()
                yield self.lost(index, item, f"worker died: {exc}", type(exc).__name__)
