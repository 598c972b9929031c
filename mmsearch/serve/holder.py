"""The served index: the latest published snapshot, swapped in without stopping requests.

Every worker process holds one :class:`IndexHolder`. Each request takes the current
:class:`mmsearch.engine.SearchIndex` once (``get``) and uses only that object, so a
swap never changes the rows or ANN indexes under a request in flight; every answer
comes from one complete snapshot. A newer snapshot is opened - with its
:class:`~mmsearch.serve.files.FileCatalog` - by one thread while the others keep
serving the current one. A snapshot that fails to open is not retried until a newer
one is published; the old one stays in service and ``reload_error`` says why.

A local index is checked on every request (its ``snapshot.json`` is a local file). An
object-store index (``s3://bucket/prefix``) is followed by a thread in each worker
that pulls the published snapshot into the worker's cache every
:func:`reload_interval_s` seconds and opens it when it is new, so every replica moves
to a writer's snapshot within that interval, with no request paying for the download.
When the store cannot be reached the previous snapshot stays in service, and
``reload_error``, ``/readyz`` and the ``mmsearch_reload_*`` metrics say so.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mmsearch.errors import IndexCorruptError, MMSearchError
from mmsearch.serve.files import CatalogCache, FileCatalog
from mmsearch.serve.observe import record_snapshot
from mmsearch.storage.objectstore import remote_index

if TYPE_CHECKING:
    from mmsearch.engine import SearchIndex
    from mmsearch.models.base import Encoder
    from mmsearch.serve.config import ServerConfig

#: Seconds between two checks of an object-store index for a newer snapshot.
DEFAULT_RELOAD_INTERVAL_S = 5.0
_log = logging.getLogger("mmsearch.serve")


def reload_interval_s(config: Any) -> float:
    """How often an object-store index is checked: ``config.reload_interval_s``, else
    ``$MMSEARCH_RELOAD_INTERVAL_S``, else :data:`DEFAULT_RELOAD_INTERVAL_S`."""
    value = getattr(config, "reload_interval_s", None) or os.environ.get(
        "MMSEARCH_RELOAD_INTERVAL_S"
    )
    try:
        seconds = float(value) if value else DEFAULT_RELOAD_INTERVAL_S
    except ValueError:
        raise MMSearchError(
            f"MMSEARCH_RELOAD_INTERVAL_S={value!r} is not a number of seconds"
        ) from None
    if seconds <= 0:
        raise MMSearchError(f"the reload interval must be above zero, not {value!r}")
    return seconds


class IndexHolder:
    """Opens the index of ``config`` lazily and moves to newer snapshots as they are published.

    ``on_open(index)`` is called after each snapshot is opened; ``metrics`` (a
    :class:`~mmsearch.serve.observe.Metrics`) counts failed reloads.
    """

    def __init__(
        self,
        config: ServerConfig,
        on_open: Callable[[SearchIndex], None] | None = None,
        metrics: Any = None,
    ) -> None:
        self.config = config
        self._open_lock = threading.Lock()
        self._index: SearchIndex | None = None
        self._failed: Any = None  # the snapshot that last failed to open
        self._open_error: str | None = None
        self._store_error: str | None = None
        self.catalogs = CatalogCache()
        self._on_open = on_open
        self._metrics = metrics
        self.fetch_url: Callable[[str], Any] | None = None  # image-URL terms, when allowed
        self._remote = remote_index(config.index_dir)
        self._follower_pid: int | None = None
        self.interval_s = reload_interval_s(config) if self._remote is not None else None

    @property
    def current(self) -> SearchIndex | None:
        """The index now served, or None before the first open (never opens or reloads)."""
        return self._index

    @property
    def reload_error(self) -> str | None:
        """Why the newest published snapshot is not served (None: it is)."""
        return self._store_error or self._open_error

    def _open(self, encoder: Encoder | None) -> SearchIndex:
        from mmsearch.engine import SearchIndex

        index = SearchIndex(
            self.config.index_dir,
            device=self.config.device,
            image_roots=self.config.image_roots,
            encoder=encoder,
            fetch_url=self.fetch_url,
            backend=getattr(self.config, "backend", "torch"),
            quantize=getattr(self.config, "quantize", None),
        )
        self.catalogs.get(index)  # built now, by the opening thread, not by the next request
        _warm_search(index)
        if self._on_open is not None:
            self._on_open(index)
        return index

    def get(self) -> SearchIndex:
        """The newest openable snapshot's index (opens or swaps when needed)."""
        index = self._get()
        record_snapshot(index.snapshot)
        self._follow()
        return index

    def catalog(self, index: SearchIndex) -> FileCatalog:
        """The file catalog of ``index`` (one of this holder's indexes)."""
        return self.catalogs.get(index)

    def _get(self) -> SearchIndex:
        from mmsearch.storage.snapshot import read_snapshot

        current = self._index
        if current is None:
            with self._open_lock:
                opened = self._index
                if opened is None:
                    opened = self._index = self._open(self.config.encoder)
                return opened
        try:  # the index folder, or an object-store index's cache (updated by the follower)
            latest = read_snapshot(current.index_dir)
        except IndexCorruptError as exc:
            self._note_open_error(str(exc))
            return current
        if latest is None or latest == current.snapshot or latest == self._failed:
            return current
        if not self._open_lock.acquire(blocking=False):
            return current  # another thread is opening it; serve the current snapshot meanwhile
        try:
            current = self._index
            assert current is not None  # set by the first open, never unset
            if latest != current.snapshot:
                encoder = self.config.encoder
                if encoder is None and latest.model_key == current.spec.key:
                    encoder = current.encoder  # same model: reuse the loaded weights
                try:
                    self._index = self._open(encoder)
                    self._failed = None
                    self._note_open_error(None)
                except MMSearchError as exc:
                    self._failed = latest
                    self._note_open_error(f"{type(exc).__name__}: {exc}")
            return self._index if self._index is not None else current
        finally:
            self._open_lock.release()

    # ---- following an object-store index -------------------------------------------

    def refresh(self) -> bool:
        """Pulls the published snapshot of an object-store index into this worker's cache
        and swaps to it when it is new; returns whether the served snapshot changed.
        A store that cannot be reached leaves the current snapshot in service."""
        current = self._index
        if self._remote is None or current is None:
            return False
        try:
            self._remote.pull()
        except MMSearchError as exc:
            self._note_store_error(f"{type(exc).__name__}: {exc}")
            return False
        self._note_store_error(None)
        return self._get() is not current

    def _follow(self) -> None:
        """Starts this worker's follower thread (once per process: workers are spawned)."""
        if self._remote is None or self._follower_pid == os.getpid():
            return
        with self._open_lock:
            if self._follower_pid == os.getpid():
                return
            self._follower_pid = os.getpid()
        thread = threading.Thread(target=self._follow_loop, name="mmsearch-follow", daemon=True)
        thread.start()

    def _follow_loop(self) -> None:
        stop = threading.Event()  # never set: the thread ends with the worker process
        while not stop.wait(self.interval_s or DEFAULT_RELOAD_INTERVAL_S):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the follower must outlive any one failure
                self._note_store_error(f"{type(exc).__name__}: {exc}")

    def _note_store_error(self, error: str | None) -> None:
        if error is None and self._store_error is None:
            return
        self._store_error = error
        self._record(error, "store")

    def _note_open_error(self, error: str | None) -> None:
        if error is None and self._open_error is None:
            return
        self._open_error = error
        self._record(error, "open")

    def _record(self, error: str | None, reason: str) -> None:
        """Logs and counts a failed reload (``reason``: ``store`` or ``open``), or notes
        that the newest snapshot is served again (``error`` None)."""
        if error is not None:
            _log.warning("cannot move to the newest snapshot (%s): %s", reason, error)
        if self._metrics is not None:
            self._metrics.set_reload_error(
                reason if error is not None else None, failing=self.reload_error is not None
            )


def _warm_search(index: SearchIndex) -> None:
    """One search on a freshly opened snapshot, so the requests after the swap find its
    row view built and its ANN pages mapped instead of waiting for them."""
    import numpy as np

    if len(index) == 0:
        return
    probe = np.full(index.store.dim, 1.0 / np.sqrt(index.store.dim), dtype=np.float32)
    index.search_vector(probe, 1)
