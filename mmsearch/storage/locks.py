"""The index directory's writer lock, and I/O failures while writing turned into one error."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmsearch.errors import StorageError
from mmsearch.storage.fence import check_fence
from mmsearch.storage.objectstore import remote_uri_of
from mmsearch.storage.s3 import is_store_failure, store_error


@contextmanager
def write_guard(index_dir: Path) -> Iterator[None]:
    """Turns I/O failures while writing the index (disk full, ...) into :class:`StorageError`.

    Runs the index's fence first (see :mod:`mmsearch.storage.fence`): a writer of an
    object-store index that may have lost its lease does not write. A failure to reach
    the object store names the index's URI, not its local cache.
    """
    check_fence(index_dir)
    try:
        yield
    except (OSError, RuntimeError, ValueError) as exc:
        remote = _store_failure(index_dir, exc)
        if remote is not None:
            raise remote from exc
        shown = remote_uri_of(index_dir) or index_dir
        if isinstance(exc, OSError):
            raise StorageError(
                f"cannot write the index at {shown}: {exc.strerror or exc}; "
                "fix that and re-run (work committed so far is kept)"
            ) from exc
        # lance reports I/O errors as RuntimeError("lance error: ...")
        if not isinstance(exc, RuntimeError) or (
            "lance error" not in str(exc) and "LanceError" not in str(exc)
        ):
            raise
        detail = str(exc).split(", /", 1)[0].replace("lance error: ", "")
        raise StorageError(
            f"cannot write the index at {shown}: {detail}; fix that and re-run (work committed so far is kept)"
        ) from exc


def _store_failure(index_dir: Path, exc: BaseException) -> StorageError | None:
    """The one-line error of a failure to reach the object store behind ``index_dir``."""
    if not is_store_failure(exc):
        return None
    uri = remote_uri_of(index_dir)
    return None if uri is None else store_error(uri, exc, "write")


WRITE_LOCK_NAME = ".write.lock"
#: How often a waiting writer tries the lock again.
_LOCK_POLL_S = 0.05


@contextmanager
def index_write_lock(
    index_dir: str | os.PathLike[str], *, wait_s: float = 0.0, name: str | None = None
) -> Iterator[None]:
    """Holds the index directory's writer lock; a second writer waits up to ``wait_s``, then fails.

    Two writers at once would hand out the same row ids. The lock is an advisory
    ``flock``: the OS releases it when the process dies. ``name`` is how the error
    names the index (default: the directory; an object-store cache passes its URI).
    """
    import fcntl

    path = Path(index_dir)
    with write_guard(path):
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / WRITE_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
                    raise StorageError(
                        f"another mmsearch process is writing the index at {name or path}{waited}; "
                        "wait for it to finish"
                    ) from None
                time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)


def remove_if_only_lock(index_dir: Path) -> None:
    """Removes an index directory that a failed first run left holding only its lock file."""
    try:
        entries = os.listdir(index_dir)
    except OSError:
        return
    if set(entries) <= {WRITE_LOCK_NAME}:
        for name in entries:
            (index_dir / name).unlink(missing_ok=True)
        index_dir.rmdir()
