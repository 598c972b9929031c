"""The images of records, as bytes: from URLs, ``s3://``, ``data:`` URIs, bytes, PIL images and paths.

:func:`resolve_images` turns every image reference of a batch of records into its
encoded bytes (hashed by the caller: the bytes decide whether an image changed) or a
failure reason, fetching concurrently: http(s) URLs through one pooled, retrying
:class:`~mmsearch.urlfetch.UrlFetcher` (the policy the server's ``--allow-urls`` uses),
``s3://`` objects through the object-store client, local files read here. Every source
is capped at the policy's ``max_bytes``. Decoding comes later, in the indexer's decode
workers, with the same safe loader and limits as files.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mmsearch.errors import MMSearchError, StorageError
from mmsearch.urlfetch import FetchPolicy, UrlFetcher

#: A record's image: a URL, ``s3://`` URI, ``data:`` URI or path (str / PathLike), bytes, or a PIL image.
ImageRef = Any


@dataclass(frozen=True)
class ImageProblem:
    """Why an image reference gave no bytes (reason, exception class name)."""

    reason: str
    exc_class: str


def describe(ref: ImageRef) -> str:
    """A short, log-safe name of an image reference (a URL is kept, bytes are counted)."""
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return f"<{len(ref)} bytes>"
    if isinstance(ref, (str, os.PathLike)):
        text = os.fspath(ref)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
        return text[:40] + "..." if text.startswith("data:") else text[:300]
    return f"<{type(ref).__name__}>"


class ImageResolver:
    """Resolves image references to bytes; one URL pool for its lifetime.

    ``local_paths=False`` refuses file paths (for references that come from a network
    client rather than the program itself).
    """

    def __init__(
        self, policy: FetchPolicy | None = None, *, local_paths: bool = True, workers: int = 16
    ) -> None:
        self.policy = policy or FetchPolicy()
        self.local_paths = local_paths
        self.workers = workers
        self._fetcher: UrlFetcher | None = None

    def __enter__(self) -> ImageResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None

    def resolve(self, refs: Sequence[ImageRef]) -> list[bytes | ImageProblem]:
        """One entry per reference, in order: its bytes, or the problem."""
        if not refs:
            return []
        if len(refs) == 1:
            return [self._one(refs[0])]
        with ThreadPoolExecutor(
            max_workers=min(self.workers, len(refs)), thread_name_prefix="mmsearch-images"
        ) as pool:
            return list(pool.map(self._one, refs))

    def _one(self, ref: ImageRef) -> bytes | ImageProblem:
        try:
            data = self._bytes(ref)
        except MMSearchError as exc:
            return ImageProblem(str(getattr(exc, "reason", None) or exc), type(exc).__name__)
        except (OSError, ValueError) as exc:
            return ImageProblem(str(exc), type(exc).__name__)
        if not data:
            return ImageProblem("empty image", "EmptyImage")
        if len(data) > self.policy.max_bytes:
            return ImageProblem(f"image is larger than {self.policy.max_bytes} bytes", "TooLarge")
        return data

    def _bytes(self, ref: ImageRef) -> bytes:
        if isinstance(ref, (bytes, bytearray, memoryview)):
            return bytes(ref)
        if hasattr(ref, "save") and hasattr(ref, "mode"):  # a PIL image: its pixels, as PNG
            buf = io.BytesIO()
            ref.save(buf, format="PNG")
            return buf.getvalue()
        if not isinstance(ref, (str, os.PathLike)):
            raise ValueError(
                f"an image must be a URL, path, bytes or PIL image, not {type(ref).__name__}"
            )
        text = os.fspath(ref)
        if isinstance(text, str):
            lowered = text[:8].lower()
            if lowered.startswith(("http://", "https://")):
                return self._url_fetcher().fetch(text)
            if lowered.startswith("s3://"):
                from mmsearch.storage.objectstore import read_object_bytes

                return read_object_bytes(text, max_bytes=self.policy.max_bytes)
            if lowered.startswith("data:"):
                return _data_uri_bytes(text)
        if not self.local_paths:
            raise StorageError(
                "local file paths are not accepted here; send the image data or a URL"
            )
        return _read_capped(text, self.policy.max_bytes)

    def _url_fetcher(self) -> UrlFetcher:
        if self._fetcher is None:
            self._fetcher = UrlFetcher(self.policy)
        return self._fetcher


def _data_uri_bytes(uri: str) -> bytes:
    """The payload of a ``data:[type];base64,...`` URI."""
    head, _, payload = uri.partition(",")
    if ";base64" not in head.lower():
        raise ValueError("a data: URI image must be base64 (data:image/jpeg;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64 image data: {exc}") from exc


def _read_capped(path: str | bytes, max_bytes: int) -> bytes:
    import stat

    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file (directory, FIFO, device or socket)")
    if st.st_size > max_bytes:
        raise ValueError(f"image file is larger than {max_bytes} bytes")
    with open(path, "rb") as fh:
        return fh.read(max_bytes + 1)
