"""What the query pipeline reads of an open index: the :class:`SearchSource` protocol.

:func:`mmsearch.search.pipeline.run` takes any object with these members; the
engine's :class:`~mmsearch.engine.snapshot.IndexSnapshot` (one published snapshot of
an index directory) is the one the product uses, and tests may pass their own. The
stages never import the engine: this protocol is the whole of what they know of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import pyarrow as pa

    from mmsearch.ann import VectorIndex
    from mmsearch.models.base import Encoder
    from mmsearch.search.calibrate import Chance
    from mmsearch.search.encode import UrlFetcher
    from mmsearch.search.rows import Rows


class SearchSource(Protocol):
    """One consistent version of an index, as the query stages read it."""

    @property
    def index_dir(self) -> Path:
        """Where the index lives (named in error messages)."""
        ...

    @property
    def dim(self) -> int:
        """The dimension of the stored vectors."""
        ...

    @property
    def ann(self) -> Mapping[str, VectorIndex]:
        """One ANN index per kind the snapshot holds (``image``, ``text``)."""
        ...

    @property
    def has_lexical(self) -> bool:
        """Whether the snapshot has a full-text index (lexical and hybrid modes)."""
        ...

    @property
    def encoder(self) -> Encoder:
        """The model that encodes query terms (loaded on first use)."""
        ...

    @property
    def image_roots(self) -> Sequence[Path] | None:
        """Folders a query image path must resolve under (None: any path)."""
        ...

    @property
    def fetch_url(self) -> UrlFetcher | None:
        """Fetches image-URL terms (None: URL terms are refused)."""
        ...

    def rows(self) -> Rows:
        """The snapshot's row columns (uri, kind, text, metadata), by id."""
        ...

    def lexical_table(self) -> Any:
        """The LanceDB table the lexical legs search (its full-text index)."""
        ...

    def kind_chance(self) -> Mapping[str, Chance]:
        """Per-kind chance levels: relative fusion and hybrid's cut-off (see :mod:`mmsearch.search.calibrate`)."""
        ...

    def file_stats(self, ids: npt.NDArray[np.int64]) -> pa.Table:
        """``id, mtime_ns, size`` as indexed, for the re-rank stage's changed-file check."""
        ...
