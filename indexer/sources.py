"""What an indexing run is asked to read: checked before anything loads or is written.

A path that does not exist fails at once with one line (:class:`SourceNotFoundError`),
before the model loads and before the index directory is created. The one exception is
a folder the index already holds rows from: a missing one may be an unmounted disk, so
it is reported by the run and its rows are kept (never swept as "all deleted").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mmsearch.errors import SourceNotFoundError

TEXT_EXTENSIONS = frozenset({".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".pq"})


def is_text_collection(path: Path) -> bool:
    """A file whose extension names a text collection format."""
    return path.is_file() and path.suffix.lower() in TEXT_EXTENSIONS


def _indexed_sources(index_dir: Path) -> set[str]:
    from mmsearch.storage.table import ItemStore

    if not ItemStore.exists(index_dir):
        return set()
    return ItemStore.open(index_dir).sources()


def check_sources(paths: Sequence[str | os.PathLike[str]], index_dir: Path) -> list[Path]:
    """The paths to index, or :class:`SourceNotFoundError` naming the first bad one.

    >>> check_sources(["./no-such-folder"], Path(".mmsearch"))  # doctest: +SKIP
    Traceback (most recent call last):
    SourceNotFoundError: cannot index no-such-folder: no such file or folder
    """
    from mmsearch.indexer.discover import path_to_uri

    if not paths:
        raise SourceNotFoundError(
            "nothing to index: name at least one image folder or text collection"
        )
    out: list[Path] = []
    indexed: set[str] | None = None
    for raw in paths:
        path = Path(raw)
        if path.is_dir() or is_text_collection(path):
            out.append(path)
            continue
        if path.exists():
            kinds = " ".join(sorted(TEXT_EXTENSIONS))
            raise SourceNotFoundError(
                f"cannot index {path}: not a folder or a text collection ({kinds})"
            )
        if indexed is None:
            indexed = _indexed_sources(index_dir)
        if path_to_uri(os.path.abspath(path)) not in indexed:
            raise SourceNotFoundError(f"cannot index {path}: no such file or folder")
        out.append(path)
    return out
