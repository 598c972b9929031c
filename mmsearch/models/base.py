"""The model side of search, as a Protocol: what the engine and the indexer call on an encoder.

:class:`mmsearch.models.encoder.ClipEncoder` (torch) implements it; so can an ONNX
Runtime encoder or a test double. Every vector is float32 and L2-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from mmsearch.models.spec import ModelSpec


@runtime_checkable
class Encoder(Protocol):
    """Embeds texts and images into one space.

    >>> isinstance(load_encoder(ModelSpec("mmsearch-tiny")), Encoder)   # doctest: +SKIP
    True
    """

    #: The model that makes the vectors; an index refuses an encoder of another model.
    spec: ModelSpec
    #: Vector size.
    dim: int
    #: Side of the square uint8 images :meth:`encode_images` takes (see ``fit_square``).
    image_size: int

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``(N, dim)`` unit rows for ``N`` texts, in order."""
        ...

    def encode_images(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """``(N, dim)`` unit rows for uint8 images shaped ``(N, image_size, image_size, 3)``."""
        ...


def checked_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, refusing one bare string or a non-string item (BadQueryError)."""
    from mmsearch.errors import BadQueryError

    if isinstance(texts, str):
        raise BadQueryError("encode_texts expects a sequence of strings, not one string")
    out = list(texts)
    for t in out:
        if not isinstance(t, str):
            raise BadQueryError(f"text queries must be strings, got {type(t).__name__}")
    return out
