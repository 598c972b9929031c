"""The served index: the latest published snapshot, swapped in without stopping requests.

Every worker process holds one :class:`IndexHolder`. Each request takes the current
:class:`mmsearch.engine.SearchIndex` once (``get``) and uses only that object, so a
swap never changes the rows or ANN indexes under a request in flight; every answer
comes from one complete snapshot. A newer snapshot is opened - with its
:class:`~mmsearch.serve.files.FileCatalog` - by one request thread while the others
keep serving the current one. A snapshot that fails to open is not retried until a
newer one is published; the old one stays in service and ``reload_error`` says why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsearch.errors import IndexCorruptError, MMSearchError
from mmsearch.serve.files import CatalogCache, FileCatalog
from mmsearch.serve.observe import record_snapshot

if TYPE_CHECKING:
    from mmsearch.engine import SearchIndex
    from mmsearch.models.base import Encoder
    from mmsearch.serve.config import ServerConfig


class IndexHolder:
    """Opens the index of ``config`` lazily and moves to newer snapshots as they are published.

    ``on_open(index)`` is called after each snapshot is opened (metrics use it).
    """

    def __init__(
        self, config: ServerConfig, on_open: Callable[[SearchIndex], None] | None = None
    ) -> None:
        self.config = config
        self._open_lock = threading.Lock()
        self._index: SearchIndex | None = None
        self._failed: Any = None  # the snapshot that last failed to open
        self.reload_error: str | None = None
        self.catalogs = CatalogCache()
        self._on_open = on_open
        self.fetch_url: Callable[[str], Any] | None = None  # image-URL terms, when allowed

    @property
    def current(self) -> SearchIndex | None:
        """The index now served, or None before the first open (never opens or reloads)."""
        return self._index

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
        try:
            latest = read_snapshot(Path(self.config.index_dir))
        except IndexCorruptError as exc:
            self.reload_error = str(exc)
            return current
        if latest is None or latest == current.snapshot or latest == self._failed:
            return current
        if not self._open_lock.acquire(blocking=False):
            return current  # another request is opening it; serve the current snapshot meanwhile
        try:
            current = self._index
            assert current is not None  # set by the first open, never unset
            if latest != current.snapshot:
                encoder = self.config.encoder
                if encoder is None and latest.model_key == current.spec.key:
                    encoder = current.encoder  # same model: reuse the loaded weights
                try:
                    self._index = current = self._open(encoder)
                    self._failed, self.reload_error = None, None
                except MMSearchError as exc:
                    self._failed, self.reload_error = latest, f"{type(exc).__name__}: {exc}"
            return current
        finally:
            self._open_lock.release()


def _warm_search(index: SearchIndex) -> None:
    """One search on a freshly opened snapshot, so the requests after the swap find its
    row view built and its ANN pages mapped instead of waiting for them."""
    import numpy as np

    if len(index) == 0:
        return
    probe = np.full(index.store.dim, 1.0 / np.sqrt(index.store.dim), dtype=np.float32)
    index.search_vector(probe, 1)
