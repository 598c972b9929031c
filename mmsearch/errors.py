"""Typed exceptions raised by the mmsearch library.

The library never prints and never exits: it raises one of these, and the CLI or
the server turns it into one actionable line and an exit status.
"""

from __future__ import annotations


class MMSearchError(Exception):
    """Base class of every error mmsearch raises on purpose."""


class IndexNotFoundError(MMSearchError):
    """No index exists at the given location."""


class ModelLoadError(MMSearchError):
    """Model weights or configuration could not be loaded."""


class ModelMismatchError(MMSearchError):
    """The index was built with another model than the one asked for."""


class BadQueryError(MMSearchError, ValueError):
    """The query (text, image, filter or options) is invalid."""


class ImageDecodeError(MMSearchError):
    """An image could not be decoded; ``reason`` is a short human-readable cause."""

    def __init__(self, reason: str, *, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause_class = type(cause).__name__ if cause is not None else "ImageDecodeError"


class TextCollectionError(MMSearchError):
    """A text collection cannot be read at all (missing column, unreadable file)."""


class IndexCorruptError(MMSearchError):
    """The ANN index file or its manifest is damaged or does not match the table."""


class StorageError(MMSearchError):
    """The index directory cannot be written (disk full, permissions, I/O error).

    Work committed before the error is kept; a re-run after fixing the cause completes it.
    """


class UnsafePathError(BadQueryError):
    """A path in a query resolves outside the allowed roots."""


class ImageNotFoundError(BadQueryError):
    """An image path in a query names no file (inside the allowed roots)."""


class SourceNotFoundError(MMSearchError, FileNotFoundError):
    """A path given to index does not exist, or is neither a folder nor a text collection."""


class NothingToIndexError(MMSearchError):
    """A first indexing run found no image and no text collection in the paths given."""


class IndexingFailedError(MMSearchError):
    """An indexing run had work to do and every item of it failed.

    ``report`` is the run's :class:`mmsearch.indexer.report.IndexReport` (failures, report path).
    """

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


class MetadataJoinError(MMSearchError):
    """An image-metadata sidecar names no image that is being indexed."""


class RerankModelError(ModelLoadError):
    """The re-ranking (image-text matching) model could not be loaded."""


class NoRerankerError(BadQueryError):
    """Re-ranking was asked for, but the index was opened without a reranker."""


class RecordError(MMSearchError, ValueError):
    """A record cannot be used at all (no id, not an object, an id given twice, ...);
    nothing of the upsert was written."""
