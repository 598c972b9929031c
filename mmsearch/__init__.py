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
    RecordError,
    SourceNotFoundError,
    StorageError,
    TextCollectionError,
    UnsafePathError,
)
from mmsearch.models.spec import ModelSpec

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:
    from mmsearch.engine import SearchIndex, SearchResult
    from mmsearch.indexer.recordtypes import UpsertReport
    from mmsearch.indexer.report import IndexReport
    from mmsearch.search.rerank import Reranker
    from mmsearch.search.types import Query, Results


def open(  # noqa: A001 - mirrors lancedb.connect
    index_dir: str | _os.PathLike[str] | None = None,
    *,
    model: ModelSpec | None = None,
    device: str | None = None,
    image_roots: _Sequence[str | _os.PathLike[str]] | None = None,
    create: bool = False,
    reranker: "Reranker | str | None" = None,
) -> "SearchIndex":
    """Opens an index directory for searching (``$MMSEARCH_INDEX`` or ``./.mmsearch`` by default).

    ``model`` (optional) must be the index's own model; ``device`` picks where queries
    are encoded; ``image_roots`` restricts query image paths to those folders;
    ``create=True`` makes an empty index of ``model`` first when there is none, for
    ``idx.upsert(records)`` and ``idx.delete(ids)``. ``reranker`` serves
    ``search(..., rerank=True)``: a re-ranker object or the name of an ITM model
    (``"mmsearch-tiny-itm"``, a folder, a Hugging Face id); without it the first
    re-ranked query loads the index's recorded model, else the default, exactly as
    ``mmsearch query --rerank`` does. See :class:`mmsearch.engine.SearchIndex`.

    >>> idx = mmsearch.open(".mmsearch", reranker="mmsearch-tiny-itm")  # doctest: +SKIP
    >>> idx.search("a red circle to the left of a blue square", rerank=True)  # doctest: +SKIP
    """
    from mmsearch.engine import open_index

    encoder = None
    if create:
        from mmsearch.indexer.upsert import create_index
        from mmsearch.storage.table import default_index_dir

        index_dir = index_dir if index_dir is not None else default_index_dir()
        encoder = create_index(index_dir, model, device=device)
    return open_index(
        index_dir, model=model, device=device, image_roots=image_roots, encoder=encoder,
        reranker=reranker,
    )  # fmt: skip


def index(
    paths: str | _os.PathLike[str] | _Sequence[str | _os.PathLike[str]],
    index_dir: str | _os.PathLike[str] | None = None,
    *,
    model: ModelSpec | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    backend: str = "auto",
    quantize: str | None = None,
    text_column: str | None = None,
    id_column: str | None = None,
    image_column: str | None = None,
    allow_private_urls: bool = False,
    metadata: str | _os.PathLike[str] | None = None,
    file_column: str = "file",
    build_index: bool = True,
    index_type: str = "auto",
    refine_dtype: str = "float32",
    ray: str | None = None,
    gpu_decode: bool | None = None,
    offline: bool = False,
    lock_wait_s: float = 0.0,
    rerank_model: str | None = None,
) -> "IndexReport":
    """Indexes image folders, text collections and product feeds; returns the run's ``IndexReport``.

    A collection with an image column (``image_column``, or a merchant feed's
    ``image_link``) is a product feed; ``report.records`` then holds the same counts and
    failures by id as ``idx.upsert`` returns. ``allow_private_urls`` lets a feed fetch
    images from an internal host.

    The options are ``mmsearch index``'s, with its defaults (see ``mmsearch index --help``):
    ``batch_size`` None is 64 on a CPU and fitted to free memory on a GPU; ``backend``
    ``auto`` runs ONNX Runtime on a CPU when it is installed (``torch``, ``onnx``);
    ``quantize="int8"`` quantised ONNX graphs; ``metadata`` a CSV/JSONL/Parquet sidecar
    describing the images (``file_column`` names their paths); ``build_index=False``
    writes only the table (``--no-ann``); ``index_type`` auto, flat or ivfpq;
    ``refine_dtype`` float32 or float16; ``ray`` an address (``local``, ``auto``,
    ``ray://HOST:10001``) to decode and embed on Ray Data; ``gpu_decode`` JPEG decoding
    on the GPU; ``lock_wait_s`` how long to wait for another writer of the index;
    ``rerank_model`` records the index's re-ranking model (``--rerank-model``).

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
    from mmsearch.indexer.options import index_options
    from mmsearch.indexer.pipeline import run_index
    from mmsearch.storage.table import default_index_dir

    if isinstance(paths, str) or hasattr(paths, "__fspath__"):
        paths = [paths]  # type: ignore[list-item]
    options = index_options(
        batch_size=batch_size, workers=workers, device=device, backend=backend, quantize=quantize,
        text_column=text_column, id_column=id_column, image_column=image_column,
        allow_private_urls=allow_private_urls, metadata=metadata, file_column=file_column,
        build_index=build_index, index_type=index_type, refine_dtype=refine_dtype, ray=ray,
        gpu_decode=gpu_decode, offline=offline, lock_wait_s=lock_wait_s,
    )  # fmt: skip
    target = index_dir if index_dir is not None else default_index_dir()
    report = run_index(list(paths), target, model or ModelSpec(), options=options)  # type: ignore[arg-type]
    if rerank_model:
        from mmsearch.rerank.config import record_rerank_model

        record_rerank_model(target, rerank_model)
    return report


_LAZY = {
    "SearchIndex": "mmsearch.engine",
    "SearchResult": "mmsearch.engine",
    "IndexReport": "mmsearch.indexer.report",
    "UpsertReport": "mmsearch.indexer.recordtypes",
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
    "RecordError",
    "Results",
    "SearchIndex",
    "SearchResult",
    "SourceNotFoundError",
    "StorageError",
    "TextCollectionError",
    "UnsafePathError",
    "UpsertReport",
    "index",
    "open",
]


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
