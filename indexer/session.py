"""The one way to change an index: every writer goes through :func:`writer_session`.

An indexing run, ``build-index``, ``remove``, ``index --reembed``, zero-shot labelling
and record upserts all do the same four things, in this order:

1. find where to work: the index directory itself, or for an object-store URI
   (``s3://bucket/prefix``) the writer's local cache of it;
2. take the writer lock, waiting up to ``wait_s`` for another writer to finish;
3. bring the published snapshot into that cache (object stores only), then work;
4. publish the new snapshot to the object store (:meth:`WriterSession.publish`).

A first session that fails before writing anything removes the folder it created.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mmsearch.storage.locks import index_write_lock, remove_if_only_lock
from mmsearch.storage.objectstore import RemoteIndex, remote_index


@dataclass(frozen=True)
class WriterSession:
    """An index open for writing: ``local_dir`` is where its table and ANN files live."""

    index: str
    local_dir: Path
    remote: RemoteIndex | None

    def publish(self) -> None:
        """Makes the local snapshot the published one (object stores; a no-op for local indexes)."""
        if self.remote is not None:
            self.remote.publish()


def writer_location(index: str | os.PathLike[str]) -> tuple[Path, RemoteIndex | None]:
    """Where a writer of ``index`` works (its folder, or the writer cache of a URI), and the remote."""
    remote = remote_index(index)
    return (remote.local_dir("writer") if remote is not None else Path(index)), remote


@contextmanager
def writer_session(
    index: str | os.PathLike[str], *, wait_s: float = 0.0
) -> Iterator[WriterSession]:
    """Holds ``index`` for writing (see the module docstring); yields a :class:`WriterSession`.

    A second writer waits up to ``wait_s`` seconds, then gets :class:`StorageError`.

    >>> with writer_session(".mmsearch") as session:  # doctest: +SKIP
    ...     store = ItemStore.open(session.local_dir)
    """
    local, remote = writer_location(index)
    fresh = not local.exists()
    try:
        with index_write_lock(local, wait_s=wait_s):
            if remote is not None:
                remote.pull("writer")
            yield WriterSession(os.fspath(index), local, remote)
    except BaseException:
        if fresh:
            remove_if_only_lock(local)
        raise
