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

>>> table = FullTextTable.open("/tmp/idx/db", "items", version=3)  # doctest: +SKIP
>>> table.search(match_query("red dress", "search_text"), ["id", "_score"], None, 10)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from mmsearch.errors import StorageError
from mmsearch.storage.objectstore import table_location
from mmsearch.storage.schema import DB_DIRNAME, TABLE_NAME

T = TypeVar("T")
_NATIVE = "lancedb._lancedb"


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
    """One table at one version, for full-text queries only."""

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
    ) -> FullTextTable:
        """Opens table ``name`` of the LanceDB database at ``uri``, pinned to ``version``."""
        native = native_module()

        async def opened() -> Any:
            db = await native.connect(
                uri, None, None, None, None, None, None, storage_options, None
            )
            table = await db.open_table(name)
            if version is not None:
                await table.checkout(version)
            return table

        try:
            return cls(_LOOP.run(opened()))
        except (ValueError, OSError, RuntimeError) as exc:
            raise StorageError(f"cannot open table {name} at {uri}: {exc}") from exc

    def search(
        self,
        query: MatchQuery | BooleanQuery,
        columns: Sequence[str],
        where: str | None,
        limit: int,
    ) -> pa.Table:
        """Up to ``limit`` rows matching ``query`` (best first), with ``columns``."""

        async def run() -> pa.Table:
            fts = self._table.query().nearest_to_text({"query": query})
            fts.select_columns(list(columns))
            if where is not None:
                fts.where(where)
            fts.limit(limit)
            stream = await fts.execute(None, None)
            batches = [batch async for batch in stream]
            return pa.Table.from_batches(batches, schema=stream.schema)

        return _LOOP.run(run())


def open_items_fulltext(index_dir: Path, version: int | None) -> FullTextTable:
    """The items table of the index at ``index_dir`` (local or an object-store cache)."""
    remote = table_location(index_dir)
    if remote is not None:
        return FullTextTable.open(remote[0], TABLE_NAME, version=version, storage_options=remote[1])
    return FullTextTable.open(str(index_dir / DB_DIRNAME), TABLE_NAME, version=version)
