"""Read-only full-text (BM25) queries on an index's items table, without ``import lancedb``.

A query process needs one thing from LanceDB for the lexical leg: a full-text query
on the table at the snapshot's version. ``import lancedb`` costs about a second and
130 MB before any query runs (its package imports a generated REST client for
remote namespaces, pydantic models and pandas), all of it unused by a local index.
The query itself runs in LanceDB's native core, ``lancedb._lancedb``, which loads in
milliseconds. :class:`FullTextTable` loads that extension module alone (registered
under its own name, so a later ``import lancedb`` in the same process uses the same
module) and talks to its async API on one event-loop thread of its own.

Query objects are plain values with the attributes LanceDB's core reads from its
own ``MatchQuery`` and ``BooleanQuery`` (it dispatches on the class name); user text
is a match query's text, never query syntax.

The native core is an internal interface: it may change in any LanceDB release. So it
is used only for the releases it was tested with (:data:`NATIVE_TESTED`, the range
``pyproject.toml`` pins), and whenever it does not answer as expected (a call whose
signature changed); otherwise the same queries run through the public ``lancedb``
API (:class:`PublicFullTextTable`): the same answers, only the import is slower.

>>> table = FullTextTable.open("/tmp/idx/db", "items", version=3)  # doctest: +SKIP
>>> table.search(match_query("red dress", "search_text"), ["id", "_score"], None, 10)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from mmsearch.errors import StorageError
from mmsearch.storage.objectstore import table_location
from mmsearch.storage.schema import DB_DIRNAME, TABLE_NAME

T = TypeVar("T")
_NATIVE = "lancedb._lancedb"
#: LanceDB releases (``[low, high)`` by major.minor) whose native core this module was
#: written against and tested with; ``pyproject.toml`` pins the same range.
NATIVE_TESTED = ((0, 40), (0, 41))
#: What a native call whose interface changed raises (then the public API answers).
_MISMATCH = (TypeError, AttributeError, ImportError)


def native_matches() -> bool:
    """Whether the installed ``lancedb`` is a release in :data:`NATIVE_TESTED`."""
    try:
        found = re.findall(r"\d+", importlib.metadata.version("lancedb"))
    except importlib.metadata.PackageNotFoundError:
        return False
    release = tuple(int(part) for part in found[:2])
    return NATIVE_TESTED[0] <= release < NATIVE_TESTED[1]


class MatchQuery:
    """Terms of ``query`` ORed, ranked by BM25, on ``column`` (LanceDB's match query)."""

    def __init__(self, query: str, column: str) -> None:
        self.query = query
        self.column = column
        self.boost = 1.0
        self.fuzziness = 0
        self.max_expansions = 50
        self.operator = "OR"
        self.prefix_length = 0
        self.document_granularity = None


class BooleanQuery:
    """Clauses ``(occur, query)`` with occur ``SHOULD``, ``MUST`` or ``MUST_NOT``."""

    def __init__(self, queries: Sequence[tuple[str, MatchQuery]]) -> None:
        self.queries = list(queries)


def match_query(text: str, column: str, negative: str = "") -> MatchQuery | BooleanQuery:
    """A match query for ``text``; words of ``negative`` exclude the rows they match."""
    match = MatchQuery(text, column)
    if not negative.strip():
        return match
    return BooleanQuery([("SHOULD", match), ("MUST_NOT", MatchQuery(negative, column))])


def native_module() -> Any:
    """LanceDB's native core, loaded without running ``lancedb/__init__`` (see the module doc)."""
    loaded = sys.modules.get(_NATIVE)
    if loaded is not None:
        return loaded
    package = importlib.util.find_spec("lancedb")
    if package is None or not package.submodule_search_locations:
        raise StorageError("LanceDB is not installed: pip install lancedb")
    folder = Path(next(iter(package.submodule_search_locations)))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"_lancedb{suffix}"
        if path.is_file():
            spec = importlib.util.spec_from_file_location(_NATIVE, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return sys.modules.setdefault(_NATIVE, module)
    raise StorageError(f"LanceDB's native module is missing from {folder}; reinstall lancedb")


class _LoopThread:
    """One daemon thread running an event loop for the native async calls of this process."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # none yet, or a forked child
                self._pid = os.getpid()
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="mmsearch-fulltext", daemon=True
                ).start()
                self._loop = loop
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


_LOOP = _LoopThread()


class FullTextTable:
    """One table at one version, for full-text queries only: on LanceDB's native core, or
    through the public API when the core does not match (see the module doc)."""

    def __init__(self, table: Any, public: Callable[[], PublicFullTextTable]) -> None:
        self._table = table  # native, or None once the public API answers
        self._open_public = public
        self._public: PublicFullTextTable | None = None

    @classmethod
    def open(
        cls,
        uri: str,
        name: str,
        *,
        version: int | None = None,
        storage_options: dict[str, str] | None = None,
        native: bool | None = None,
    ) -> FullTextTable:
        """Opens table ``name`` of the LanceDB database at ``uri``, pinned to ``version``.

        ``native``: use LanceDB's native core (default: when :func:`native_matches`);
        ``False`` runs every query through the public ``lancedb`` API.
        """

        def public() -> PublicFullTextTable:
            return PublicFullTextTable.open(
                uri, name, version=version, storage_options=storage_options
            )

        table = None
        if native if native is not None else native_matches():
            try:
                table = _open_native(uri, name, version, storage_options)
            except _MISMATCH:
                table = None
        result = cls(table, public)
        if table is None:
            result._public = public()
        return result

    @property
    def is_native(self) -> bool:
        """Whether queries run on the native core (else through the public API)."""
        return self._public is None

    def search(
        self,
        query: MatchQuery | BooleanQuery,
        columns: Sequence[str],
        where: str | None,
        limit: int,
    ) -> pa.Table:
        """Up to ``limit`` rows matching ``query`` (best first), with ``columns``."""
        if self._public is None:
            try:
                return _search_native(self._table, query, columns, where, limit)
            except _MISMATCH:  # the native interface changed: the public API from now on
                self._table = None
                self._public = self._open_public()
        return self._public.search(query, columns, where, limit)


def _open_native(
    uri: str, name: str, version: int | None, storage_options: dict[str, str] | None
) -> Any:
    native = native_module()

    async def opened() -> Any:
        db = await native.connect(uri, None, None, None, None, None, None, storage_options, None)
        table = await db.open_table(name)
        if version is not None:
            await table.checkout(version)
        return table

    try:
        return _LOOP.run(opened())
    except (ValueError, OSError, RuntimeError) as exc:
        raise StorageError(f"cannot open table {name} at {uri}: {exc}") from exc


def _search_native(
    table: Any,
    query: MatchQuery | BooleanQuery,
    columns: Sequence[str],
    where: str | None,
    limit: int,
) -> pa.Table:
    async def run() -> pa.Table:
        fts = table.query().nearest_to_text({"query": query})
        fts.select_columns(list(columns))
        if where is not None:
            fts.where(where)
        fts.limit(limit)
        stream = await fts.execute(None, None)
        batches = [batch async for batch in stream]
        return pa.Table.from_batches(batches, schema=stream.schema)

    return _LOOP.run(run())


class PublicFullTextTable:
    """The same queries through LanceDB's public Python API (``import lancedb``: about a
    second more per process, every release supported)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    @classmethod
    def open(
        cls,
        uri: str,
        name: str,
        *,
        version: int | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> PublicFullTextTable:
        from mmsearch.storage.lanceimport import import_lancedb

        lancedb = import_lancedb()
        try:
            db = lancedb.connect(uri, storage_options=storage_options)
            table = db.open_table(name)
            if version is not None:
                table.checkout(version)
        except (ValueError, OSError, RuntimeError) as exc:
            raise StorageError(f"cannot open table {name} at {uri}: {exc}") from exc
        return cls(table)

    def search(
        self,
        query: MatchQuery | BooleanQuery,
        columns: Sequence[str],
        where: str | None,
        limit: int,
    ) -> pa.Table:
        """As :meth:`FullTextTable.search`."""
        search = self._table.search(_public_query(query), query_type="fts")
        search = search.select(list(columns)).limit(limit)
        if where is not None:
            search = search.where(where, prefilter=True)
        return search.to_arrow()


def _public_query(query: MatchQuery | BooleanQuery) -> Any:
    """LanceDB's own query object for one of ours (our attribute values are its defaults)."""
    from lancedb.query import BooleanQuery as LanceBoolean
    from lancedb.query import MatchQuery as LanceMatch
    from lancedb.query import Occur

    if isinstance(query, MatchQuery):
        return LanceMatch(query.query, query.column)
    return LanceBoolean([(Occur(occur), _public_query(clause)) for occur, clause in query.queries])


def open_items_fulltext(index_dir: Path, version: int | None) -> FullTextTable:
    """The items table of the index at ``index_dir`` (local or an object-store cache)."""
    remote = table_location(index_dir)
    if remote is not None:
        return FullTextTable.open(remote[0], TABLE_NAME, version=version, storage_options=remote[1])
    return FullTextTable.open(str(index_dir / DB_DIRNAME), TABLE_NAME, version=version)
