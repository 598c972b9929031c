"""mmsearch: cross-modal semantic search over image and text collections.

>>> import mmsearch
>>> idx = mmsearch.open(".mmsearch")                      # doctest: +SKIP
>>> for hit in idx.search("a red circle on the left", k=5):  # doctest: +SKIP
...     print(hit.score, hit.uri)

Heavy dependencies (torch, open_clip, lancedb, faiss) load on first use, so that
``import mmsearch`` stays cheap and decode workers never import torch.
"""

import os as _os
import typing as _typing
from collections.abc import Sequence as _Sequence

from mmsearch.errors import (
    BadQueryError,
    ImageDecodeError,
    IndexCorruptError,
    IndexingFailedError,
    IndexNotFoundError,
    MetadataJoinError,
    MMSearchError,
    ModelLoadError,
    ModelMismatchError,
    NothingToIndexError,
    SourceNotFoundError,
    StorageError,
    TextCollectionError,
    UnsafePathError,
)
from mmsearch.models.spec import ModelSpec

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:
    from mmsearch.engine import SearchIndex, SearchResult
    from mmsearch.indexer.report import IndexReport
    from mmsearch.search.types import Query, Results


def open(  # noqa: A001 - mirrors lancedb.connect
    index_dir: str | _os.PathLike[str] | None = None,
    *,
    model: ModelSpec | None = None,
    device: str | None = None,
    image_roots: _Sequence[str | _os.PathLike[str]] | None = None,
) -> "SearchIndex":
    """Opens an index directory for searching (``$MMSEARCH_INDEX`` or ``./.mmsearch`` by default).

    ``model`` (optional) must be the index's own model; ``device`` picks where queries
    are encoded; ``image_roots`` restricts query image paths to those folders.
    See :class:`mmsearch.engine.SearchIndex`.
    """
    from mmsearch.engine import open_index

    return open_index(index_dir, model=model, device=device, image_roots=image_roots)


def index(
    paths: str | _os.PathLike[str] | _Sequence[str | _os.PathLike[str]],
    index_dir: str | _os.PathLike[str] | None = None,
    *,
    model: ModelSpec | None = None,
    device: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
    metadata: str | _os.PathLike[str] | None = None,
    file_column: str = "file",
    build_index: bool = True,
    index_type: str = "auto",
    offline: bool = False,
) -> "IndexReport":
    """Indexes image folders and text collections; returns the run's ``IndexReport``.

    Works from any caller: scripts without a ``__main__`` guard, ``python -``, a REPL
    or a notebook (decode workers never import the caller's ``__main__``). Raises
    :class:`SourceNotFoundError` for a path that does not exist, :class:`ModelLoadError`
    when the weights cannot be had (``offline=True``: never contact the hub),
    :class:`MetadataJoinError` when ``metadata`` names none of the images, and
    :class:`IndexingFailedError` when every item failed.

    >>> report = mmsearch.index(["./photos"], ".mmsearch", model=ModelSpec("mmsearch-tiny", ""))  # doctest: +SKIP
    >>> report.added, report.failed  # doctest: +SKIP
    (400, 0)
    """
    from mmsearch.indexer.pipeline import IndexOptions, run_index
    from mmsearch.storage.table import default_index_dir

    if isinstance(paths, str) or hasattr(paths, "__fspath__"):
        paths = [paths]  # type: ignore[list-item]
    options = IndexOptions(
        batch_size=batch_size,
        workers=workers,
        device=device,
        text_column=text_column,
        id_column=id_column,
        image_metadata=metadata,
        file_column=file_column,
        build_index=build_index,
        index_type=index_type,
        offline=offline,
    )
    return run_index(
        list(paths),  # type: ignore[arg-type]
        index_dir if index_dir is not None else default_index_dir(),
        model or ModelSpec(),
        options=options,
    )


_LAZY = {
    "SearchIndex": "mmsearch.engine",
    "SearchResult": "mmsearch.engine",
    "IndexReport": "mmsearch.indexer.report",
    "Query": "mmsearch.search.types",
    "Results": "mmsearch.search.types",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmsearch' has no attribute {name!r}")


__all__ = [
    "BadQueryError",
    "ImageDecodeError",
    "IndexCorruptError",
    "IndexNotFoundError",
    "IndexReport",
    "IndexingFailedError",
    "MMSearchError",
    "MetadataJoinError",
    "ModelLoadError",
    "ModelMismatchError",
    "ModelSpec",
    "NothingToIndexError",
    "Query",
    "Results",
    "SearchIndex",
    "SearchResult",
    "SourceNotFoundError",
    "StorageError",
    "TextCollectionError",
    "UnsafePathError",
    "index",
    "open",
]


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
