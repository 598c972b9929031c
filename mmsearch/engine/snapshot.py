"""One published snapshot of an index, open for searching: :class:`IndexSnapshot`.

A snapshot ties a table version to the ANN indexes and full-text index built from it
(``snapshot.json``, see :mod:`mmsearch.storage.snapshot`). Opening one reads the
rows file when the snapshot has one (LanceDB is then not imported until something
asks for the table) and loads each kind's ANN index. Nothing in it changes once open
apart from caches filled on first use (the row view, the table, the encoder, the
hybrid cut-off's calibration), so any number of queries can share it;
:meth:`IndexSnapshot.reload` returns a *new* object for a newer snapshot, and callers
swap to it between requests. It implements :class:`~mmsearch.search.source.SearchSource`,
what :func:`mmsearch.search.pipeline.run` reads.

>>> snap = IndexSnapshot.open(".mmsearch", encoders=LazyEncoder())  # doctest: +SKIP
>>> run(snap, query)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mmsearch.engine.calibration import cached_chance
from mmsearch.errors import IndexNotFoundError, ModelMismatchError
from mmsearch.models.base import Encoder
from mmsearch.models.spec import ModelSpec
from mmsearch.search.calibrate import CHANCE_DEPTH, Chance, kind_chance, probe_texts
from mmsearch.search.encode import UrlFetcher
from mmsearch.search.rows import ROW_COLUMNS, Rows
from mmsearch.storage.fulltext import FullTextTable, open_items_fulltext
from mmsearch.storage.objectstore import RemoteIndex, remote_index
from mmsearch.storage.s3 import store_errors
from mmsearch.storage.snapshot import Snapshot, read_snapshot
from mmsearch.storage.table import ItemStore

if TYPE_CHECKING:
    import pyarrow as pa

    from mmsearch.ann import VectorIndex

#: Largest kind whose chance level is measured by exact search (its ANN index above it).
EXACT_CHANCE_ROWS = 200_000


class LazyEncoder:
    """The query encoder of an index, loaded on first use and shared by its snapshots.

    ``encoder`` given: used as is (its spec must be the index's). Else the index's
    model is loaded with ``device``/``backend``/``quantize`` and checked against the
    backends that wrote the index (:func:`mmsearch.models.backends.check_backend`).
    """

    def __init__(
        self,
        encoder: Encoder | None = None,
        *,
        device: str | None = None,
        backend: str = "torch",
        quantize: str | None = None,
    ) -> None:
        self.device, self.backend, self.quantize = device, backend, quantize
        self._encoder = encoder
        self._lock = threading.Lock()

    @property
    def given(self) -> Encoder | None:
        """The encoder already at hand (given or loaded), else None."""
        return self._encoder

    def get(self, spec: ModelSpec, index_dir: Path) -> Encoder:
        with self._lock:
            if self._encoder is None:
                from mmsearch.models.backends import check_backend, load_encoder

                encoder = load_encoder(
                    spec, device=self.device, backend=self.backend, quantize=self.quantize
                )
                check_backend(index_dir, encoder, record=False)
                self._encoder = encoder
            return self._encoder


class IndexSnapshot:
    """A published snapshot of one index (rows, ANN indexes, full-text index), open for queries.

    Build one with :meth:`open`. ``published`` is the snapshot record served;
    ``image_roots`` and ``fetch_url`` are the query-input policy of whoever opened it.
    """

    def __init__(
        self,
        index_dir: Path,
        published: Snapshot,
        spec: ModelSpec,
        dim: int,
        ann: dict[str, VectorIndex],
        *,
        rows: Rows | None,
        store: ItemStore | None,
        encoders: LazyEncoder,
        image_roots: Sequence[Path] | None = None,
        fetch_url: UrlFetcher | None = None,
        remote: RemoteIndex | None = None,
    ) -> None:
        self._index_dir = index_dir
        self.published = published
        self.spec = spec
        self._dim = dim
        self._ann = ann
        self._image_roots = image_roots
        self._fetch_url = fetch_url
        self._encoders = encoders
        self._remote = remote
        self._rows = rows
        self._store = store
        self._fulltext: FullTextTable | None = None
        self._chance: dict[str, Chance] | None = None
        self._lock = threading.RLock()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        *,
        encoders: LazyEncoder,
        model: ModelSpec | None = None,
        image_roots: Sequence[str | os.PathLike[str]] | None = None,
        fetch_url: UrlFetcher | None = None,
    ) -> IndexSnapshot:
        """Opens the snapshot published at ``location`` (a directory, or an object-store URI
        served from its local cache, pulled now).

        Raises :class:`IndexNotFoundError` without a published snapshot and
        :class:`ModelMismatchError` when ``model`` or the given encoder is another model.
        """
        remote = remote_index(location)
        index_dir = remote.pull() if remote is not None else Path(location)
        roots = (
            [Path(os.path.realpath(r)) for r in image_roots] if image_roots is not None else None
        )
        return cls._read(index_dir, remote, encoders, model, roots, fetch_url)

    @classmethod
    def _read(
        cls,
        index_dir: Path,
        remote: RemoteIndex | None,
        encoders: LazyEncoder,
        model: ModelSpec | None,
        image_roots: Sequence[Path] | None,
        fetch_url: UrlFetcher | None,
        previous: Rows | None = None,
    ) -> IndexSnapshot:
        from mmsearch.ann import VectorIndex

        published = read_snapshot(index_dir)
        if published is None:
            if ItemStore.exists(index_dir):
                raise IndexNotFoundError(
                    f"index at {index_dir} has rows but no search index yet; "
                    f"run: mmsearch build-index --index {index_dir}"
                )
            raise IndexNotFoundError(
                f"no mmsearch index at {index_dir} (create one with: mmsearch index PATH --index {index_dir})"
            )
        rows_file = _read_rows_or_none(index_dir, published, previous)
        store: ItemStore | None = None
        if rows_file is not None:  # no LanceDB needed until something asks for the table
            rows, spec, dim = rows_file
        else:
            store = ItemStore.open(index_dir, version=published.table_version)
            rows, spec, dim = None, store.model_spec, store.dim
        if model is not None and model != spec:
            raise ModelMismatchError(
                f"index at {index_dir} was built with model {spec.key}; cannot query it with {model.key}"
            )
        given = encoders.given
        if given is not None and getattr(given, "spec", spec) != spec:
            raise ModelMismatchError(
                f"index at {index_dir} was built with model {spec.key}; "
                f"the encoder given is {given.spec.key}"
            )
        ann = {
            kind: VectorIndex.load(
                published.ann_path(index_dir, kind),
                expect_table_version=published.table_version,
                expect_model_key=spec.key,
                verify_checksums=False,  # sizes and ids only; full checks: `mmsearch check`
            )
            for kind in published.ann_dirs
        }
        return cls(
            index_dir, published, spec, dim, ann, rows=rows, store=store, encoders=encoders,
            image_roots=image_roots, fetch_url=fetch_url, remote=remote,
        )  # fmt: skip

    def reload(self) -> IndexSnapshot:
        """The newest published snapshot: ``self`` when nothing newer was published, else a
        new object (same model, encoder and query-input policy) that callers swap to."""
        if self._remote is not None:
            self._remote.pull()
        latest = read_snapshot(self._index_dir)
        if latest is None or latest == self.published:
            return self
        return self._read(
            self._index_dir, self._remote, self._encoders, self.spec, self._image_roots,
            self._fetch_url, self._rows,
        )  # fmt: skip

    def store_reads(self) -> AbstractContextManager[None]:
        """Where an object-store index's table reads (full-text legs, rows of indexes without
        a rows file) fail as one :class:`~mmsearch.errors.StorageError` naming the URI."""
        return nullcontext() if self._remote is None else store_errors(self._remote.uri, "read")

    # -- what the pipeline reads (SearchSource) --------------------------------------------
    @property
    def index_dir(self) -> Path:
        return self._index_dir

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ann(self) -> Mapping[str, VectorIndex]:
        return self._ann

    @property
    def image_roots(self) -> Sequence[Path] | None:
        return self._image_roots

    @property
    def fetch_url(self) -> UrlFetcher | None:
        return self._fetch_url

    @property
    def has_lexical(self) -> bool:
        """True when the snapshot has a full-text index (hybrid and lexical modes work)."""
        return bool(self.published.lexical_index)

    @property
    def encoder(self) -> Encoder:
        """The index's query encoder (loaded and backend-checked on first use)."""
        # Under the snapshot's lock, like the table's opening: a one-shot hybrid query
        # would otherwise load the model while its lexical leg imports LanceDB, two
        # import-bound loads fighting over the GIL (measured 1.2x slower than one after
        # the other; benchmarks/RESULTS.md, engine refactor).
        with self._lock:
            return self._encoders.get(self.spec, self._index_dir)

    @property
    def store(self) -> ItemStore:
        """The items table at the snapshot's version (opened on first use)."""
        with self._lock:
            if self._store is None:
                self._store = ItemStore.open(self._index_dir, version=self.published.table_version)
            return self._store

    def rows(self) -> Rows:
        with self._lock:
            if self._rows is None:
                self._rows = Rows(self.store.scan(ROW_COLUMNS))
            return self._rows

    def lexical_table(self) -> Any:
        """The items table at the snapshot's version, for full-text queries only: LanceDB's
        native core, without importing the ``lancedb`` package (see
        :mod:`mmsearch.storage.fulltext`)."""
        with self._lock:
            if self._fulltext is None:
                self._fulltext = open_items_fulltext(self._index_dir, self.published.table_version)
            return self._fulltext

    def kind_chance(self) -> Mapping[str, Chance]:
        """Per-kind chance levels (see :mod:`mmsearch.search.calibrate`), measured once per
        snapshot (and kept in the user cache for later processes:
        :mod:`mmsearch.engine.calibration`).

        Probes search a kind exactly up to :data:`EXACT_CHANCE_ROWS` rows, through its ANN
        index above that (the level of a meaningless query's best hits needs no more).
        """
        with self._lock:
            if self._chance is None:
                self._chance = cached_chance(
                    self._index_dir, self.published, self._measure_chance,
                    exact_rows=EXACT_CHANCE_ROWS,
                )  # fmt: skip
            return self._chance

    def _measure_chance(self) -> dict[str, Chance]:
        probes = np.asarray(self.encoder.encode_texts(probe_texts()), np.float32)
        top = {}
        for kind, index in self._ann.items():
            if len(index):
                depth, exact = min(CHANCE_DEPTH, len(index)), len(index) <= EXACT_CHANCE_ROWS
                scores, _ = index.search(probes, depth, exact=exact)
                found = (scores > -np.inf).all(axis=1)  # an ANN probe may come back short
                if found.any():
                    top[kind] = scores[found]
        return kind_chance(top)

    def file_stats(self, ids: npt.NDArray[np.int64]) -> pa.Table:
        """``id, mtime_ns, size`` of the given rows as indexed (rows not in the table are absent)."""
        listed = ", ".join(str(int(i)) for i in ids)
        return self.store.scan(["id", "mtime_ns", "size"], where=f"id IN ({listed})")

    # -- about the snapshot ----------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(a) for a in self._ann.values())

    @property
    def stale(self) -> bool:
        """True when the table has commits newer than this snapshot's version."""
        from mmsearch.storage.versions import latest_table_version

        latest = latest_table_version(self._index_dir)  # file names only: no LanceDB
        if latest is not None:
            return latest > self.published.table_version
        try:
            return ItemStore.open(self._index_dir).version > self.published.table_version
        except IndexNotFoundError:
            return False

    def info(self) -> dict[str, Any]:
        """Row count, model, snapshot, full-text index and per-kind ANN parameters."""
        return {
            "index_dir": str(self._index_dir),
            "model": self.spec.key,
            "dim": self._dim,
            "rows": self.store.count(),
            "table_version": self.published.table_version,
            "stale": self.stale,
            "lexical_index": self.published.lexical_index,
            "ann": {kind: dict(a.info) for kind, a in self._ann.items()},
        }


def _read_rows_or_none(
    index_dir: Path, snapshot: Snapshot, previous: Rows | None = None
) -> tuple[Rows, ModelSpec, int] | None:
    """The snapshot's rows file (see :mod:`mmsearch.storage.rowsfile`), or None to use the
    table. A delta is looked up beside its full file, which is not copied; the rows of
    that full file (and their typed metadata, once built) are those of ``previous``
    when it was built on the same file: a reader's switch to a record upsert's snapshot
    costs the changed rows, not the index."""
    import pyarrow as pa

    from mmsearch.storage.rowsfile import read_rows_parts, rows_file_path

    try:
        parts = read_rows_parts(rows_file_path(index_dir, snapshot))
        identity = parts.base_identity()
    except (OSError, KeyError, ValueError, pa.ArrowException):  # absent (older index) or unreadable
        return None
    base = None if previous is None else (previous.base or previous)
    if base is None or base.origin != identity:
        base = Rows(parts.base, origin=identity)
    if parts.changed is None:
        return base, parts.spec, parts.dim
    return Rows.with_changes(base, parts.changed, parts.dropped), parts.spec, parts.dim
