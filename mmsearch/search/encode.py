"""Encode stage: a query's weighted text and image terms → one unit query vector.

Texts are embedded in one batch; images come as paths (checked against the allowed
roots first, then for existence, so a refusal never reveals which files exist), PIL
images, ``(H, W, 3)`` uint8 arrays, or URLs through a caller-supplied fetcher (off
unless given).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mmsearch.errors import BadQueryError, ImageDecodeError, ImageNotFoundError, UnsafePathError
from mmsearch.models.base import Encoder
from mmsearch.search.language import QueryTerm

#: Fetches an image URL and returns a decoded PIL image (the server's SSRF-safe fetcher).
UrlFetcher = Callable[[str], Any]


def check_image_path(path: str | os.PathLike[str], roots: Sequence[Path] | None) -> Path:
    """The real path of a query image: under one of ``roots`` (when given) and an existing file.

    Raises :class:`UnsafePathError` outside the roots (whether or not the file exists)
    and :class:`ImageNotFoundError` naming the file when it does not exist.
    """
    shown = os.fspath(path)
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError) as exc:
        raise UnsafePathError(f"image path {shown!r} cannot be resolved") from exc
    if roots is not None and not any(real.is_relative_to(root) for root in roots):
        raise UnsafePathError(
            f"image path {shown!r} is outside the allowed folders (quote the term to search for it as text)"
        )
    if not os.path.isfile(real):  # False, not OSError, for an over-long name (errno 36)
        raise ImageNotFoundError(
            f"image not found: {shown} (quote the term to search for it as text)"
        )
    return real


def image_vector(
    encoder: Encoder,
    image: Any,
    *,
    roots: Sequence[Path] | None = None,
    fetch_url: UrlFetcher | None = None,
    is_url: bool = False,
) -> npt.NDArray[np.float32]:
    """The unit vector of one image: a path, URL (with ``fetch_url``), PIL image or array."""
    from PIL import Image

    from mmsearch.imageio import load_image
    from mmsearch.models.preprocess import fit_square

    if is_url:
        if fetch_url is None:
            raise BadQueryError(
                f"cannot open image URL {image}: image URLs are off here (quote the term to search for it as text)"
            )
        image = fetch_url(str(image))
    elif isinstance(image, (str, os.PathLike)):
        try:
            image = load_image(check_image_path(image, roots))
        except ImageDecodeError as exc:  # unreadable, not an image, too large: name the file
            raise BadQueryError(f"cannot use image {os.fspath(image)}: {exc}") from exc
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise BadQueryError("an image array must be (H, W, 3)")
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    elif not isinstance(image, Image.Image):
        raise BadQueryError(f"cannot use {type(image).__name__} as an image query")
    return encoder.encode_images(fit_square(image.convert("RGB"), encoder.image_size)[None])[0]


def modality(terms: Sequence[QueryTerm]) -> str:
    """ "text", "image" or "mixed": what the query vector was made from."""
    kinds = {"image" if t.kind == "url" else t.kind for t in terms}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def encode_terms(
    encoder: Encoder,
    terms: Sequence[QueryTerm],
    *,
    roots: Sequence[Path] | None = None,
    fetch_url: UrlFetcher | None = None,
) -> npt.NDArray[np.float32]:
    """The normalised weighted sum of the terms' unit vectors.

    Image terms are checked before any text is embedded, so a missing file fails fast.
    """
    images = [
        (
            t.weight,
            image_vector(
                encoder, t.value, roots=roots, fetch_url=fetch_url, is_url=t.kind == "url"
            ),
        )
        for t in terms
        if t.kind in ("image", "url")
    ]
    texts = [t for t in terms if t.kind == "text"]
    parts: list[npt.NDArray[np.float32]] = []
    weights: list[float] = []
    if texts:
        parts.extend(encoder.encode_texts([str(t.value) for t in texts]))
        weights.extend(t.weight for t in texts)
    for weight, vec in images:
        parts.append(vec)
        weights.append(weight)
    if not parts:
        raise BadQueryError("a query needs at least one term (text or image)")
    vec = np.sum(np.asarray(weights, np.float32)[:, None] * np.stack(parts), axis=0)
    norm = float(np.linalg.norm(vec))
    if not np.isfinite(norm) or norm < 1e-6:
        raise BadQueryError("the query's terms cancel out")
    return (vec / norm).astype(np.float32)
