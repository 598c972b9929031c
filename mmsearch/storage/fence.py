"""Fences: a writer that may have lost its right to write is stopped before its next commit.

A writer of an object-store index holds a lease (:mod:`mmsearch.storage.lease`). While
it works, it registers a *fence* for its local index directory: a check that raises
when the lease is no longer certainly held. Every write to the index goes through
:func:`mmsearch.storage.locks.write_guard`, which runs the fence of its directory
first, so no table commit of a writer whose lease lapsed can land after another
writer took over. Local indexes have no fence (the OS lock cannot be lost).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_FENCES: dict[str, Callable[[], None]] = {}
_GUARD = threading.Lock()


def _key(index_dir: str | os.PathLike[str]) -> str:
    return os.path.realpath(Path(index_dir))


@contextmanager
def fenced(index_dir: str | os.PathLike[str], check: Callable[[], None]) -> Iterator[None]:
    """Runs ``check`` before every write to ``index_dir`` while the block runs."""
    key = _key(index_dir)
    with _GUARD:
        _FENCES[key] = check
    try:
        yield
    finally:
        with _GUARD:
            if _FENCES.get(key) is check:
                del _FENCES[key]


def check_fence(index_dir: str | os.PathLike[str]) -> None:
    """Raises (the fence's error) when the writer of ``index_dir`` may no longer write."""
    with _GUARD:
        check = _FENCES.get(_key(index_dir))
    if check is not None:
        check()
