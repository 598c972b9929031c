"""The one way to change an index: every writer goes through :func:`writer_session`.

An indexing run, ``build-index``, ``remove``, ``repair``, ``index --reembed``,
zero-shot labelling and record upserts all do the same four things, in this order:

1. find where to work: the index directory itself, or for an object-store URI
   (``s3://bucket/prefix``) the writer's local cache of it;
2. become the one writer, waiting up to ``wait_s`` for another writer to finish: the
   local ``flock`` of that directory, and for an object-store URI also the writer
   lease in the store (:mod:`mmsearch.storage.lease`), which writers on other
   machines see;
3. bring the published snapshot into that cache (object stores only), then work: ids
   of new rows are read from the table only now, so no two writers hand out the same;
4. publish the new snapshot to the object store (:meth:`WriterSession.publish`), only
   over the snapshot this session started from.

While an object-store session works, every table commit first checks that the lease is
still held (:mod:`mmsearch.storage.fence`); any failure to reach the store becomes one
:class:`~mmsearch.errors.StorageError` naming the URI. A first session that fails
before writing anything removes the folder it created.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mmsearch.storage.fence import fenced
from mmsearch.storage.lease import WriterLease
from mmsearch.storage.locks import index_write_lock, remove_if_only_lock
from mmsearch.storage.objectstore import RemoteIndex, cache_root, remote_index, store_errors
from mmsearch.storage.snapshot import read_snapshot


@dataclass
class WriterSession:
    """An index open for writing: ``local_dir`` is where its table and ANN files live.

    ``lease`` is the writer lease of an object-store index (None for a local one);
    ``warnings`` collects what went wrong after a snapshot was already published
    (clean-up of old files), which never fails the run.
    """

    index: str
    local_dir: Path
    remote: RemoteIndex | None
    lease: WriterLease | None = None
    published_etag: str | None = None  # the published snapshot this session builds on
    published_generation: int | None = None
    warnings: list[str] = field(default_factory=list)

    def unpublished(self, table_version: int) -> bool:
        """True when an earlier run left work that readers do not see yet: table commits
        newer than the local snapshot, or a local snapshot newer than the published one
        (it stopped before it built or published its snapshot). A re-run publishes it."""
        local = read_snapshot(self.local_dir)
        if local is None:  # nothing was ever built: nothing waits to be published
            return False
        if local.table_version < table_version:
            return True
        return self.remote is not None and local.generation > (self.published_generation or 0)

    def publish(self) -> None:
        """Makes the local snapshot the published one (object stores; a no-op for local
        indexes), only over the snapshot this session started from."""
        if self.remote is None:
            return
        check = self.lease.check if self.lease is not None else None
        if check is not None:
            check()
        out = self.remote.publish(expect_etag=self.published_etag, check=check)
        if out is not None:
            self.published_etag = out.etag
            self.published_generation = int(out.data["snapshot"].get("generation", 0))
            self.warnings.extend(out.warnings)


def writer_location(index: str | os.PathLike[str]) -> tuple[Path, RemoteIndex | None]:
    """Where a writer of ``index`` works (its folder, or the writer cache of a URI), and the remote."""
    remote = remote_index(index)
    return (remote.local_dir("writer") if remote is not None else Path(index)), remote


@contextmanager
def writer_session(
    index: str | os.PathLike[str], *, wait_s: float = 0.0
) -> Iterator[WriterSession]:
    """Holds ``index`` for writing (see the module docstring); yields a :class:`WriterSession`.

    A second writer waits up to ``wait_s`` seconds, then gets :class:`StorageError`
    (for an object-store URI: one line naming the URI and the writer holding it).

    >>> with writer_session(".mmsearch") as session:  # doctest: +SKIP
    ...     store = ItemStore.open(session.local_dir)
    """
    local, remote = writer_location(index)
    fresh = not local.exists()
    deadline = time.monotonic() + max(0.0, wait_s)
    name = remote.uri if remote is not None else None
    try:
        with index_write_lock(local, wait_s=wait_s, name=name), ExitStack() as stack:
            session = WriterSession(remote.uri if remote else os.fspath(index), local, remote)
            if remote is not None:
                stack.enter_context(store_errors(remote.uri))
                # the flock above is held: a lease of this cache was left by a dead run
                lease = WriterLease(remote, cache=str(cache_root()), cache_locked=True)
                lease.acquire(wait_s=max(0.0, deadline - time.monotonic()))
                stack.callback(lease.release)
                stack.enter_context(fenced(local, lease.check))
                session.lease = lease
                pulled = remote.pull_published("writer")
                session.published_etag, session.published_generation = (
                    pulled.etag,
                    pulled.generation,
                )
            yield session
    except BaseException:
        if fresh:
            remove_if_only_lock(local)
        raise
