"""mmsearch: cross-modal semantic search over image and text collections.

>>> import mmsearch
>>> idx = mmsearch.open(".mmsearch")                      # doctest: +SKIP
>>> for hit in idx.search("a red circle on the left", k=5):  # doctest: +SKIP
...     print(hit.score, hit.uri)

Heavy dependencies (torch, open_clip, lancedb, faiss) load on first use, so that
``import mmsearch`` stays cheap and decode workers never import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmsearch.errors import (
    BadQueryError,
    ImageDecodeError,
    IndexCorruptError,
    IndexNotFoundError,
    MMSearchError,
    ModelLoadError,
    ModelMismatchError,
    StorageError,
    TextCollectionError,
    UnsafePathError,
)
from mmsearch.models.spec import ModelSpec

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mmsearch.engine import SearchIndex, SearchResult
    from mmsearch.search.types import Query, Results


def open(index_dir: Any = None, **kwargs: Any) -> SearchIndex:  # noqa: A001 - mirrors lancedb.connect
    """Opens an index directory for searching; see :class:`mmsearch.engine.SearchIndex`."""
    from mmsearch.engine import open_index

    return open_index(index_dir, **kwargs)


def index(paths: Any, index_dir: Any = None, *, model: ModelSpec | None = None, **options: Any) -> Any:
    """Indexes folders of images and text collections; returns an ``IndexReport``.

    >>> report = mmsearch.index(["./photos"], ".mmsearch", model=ModelSpec("mmsearch-tiny", ""))  # doctest: +SKIP
    """
    from indexer.pipeline import IndexOptions, run_index
    from mmsearch.storage import default_index_dir

    if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__"):
        paths = [paths]
    return run_index(
        list(paths),
        index_dir if index_dir is not None else default_index_dir(),
        model or ModelSpec(),
        options=IndexOptions(**options),
    )


def __getattr__(name: str) -> Any:
    if name in ("SearchIndex", "SearchResult", "Query", "Results"):
        from mmsearch import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'mmsearch' has no attribute {name!r}")


__all__ = [
    "BadQueryError",
    "ImageDecodeError",
    "IndexCorruptError",
    "IndexNotFoundError",
    "MMSearchError",
    "ModelLoadError",
    "ModelMismatchError",
    "ModelSpec",
    "Query",
    "Results",
    "SearchIndex",
    "SearchResult",
    "StorageError",
    "TextCollectionError",
    "UnsafePathError",
    "index",
    "open",
]
