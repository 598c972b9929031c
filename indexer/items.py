"""What flows through the indexing loop: items to embed, and what became of each.

A :class:`~mmsearch.indexer.source.Source` turns what it holds into :class:`Item` s (one per
row to write), an executor (:mod:`mmsearch.indexer.executor`) turns items into
:class:`Embedded` or :class:`Failed` outcomes, and the write loop
(:mod:`mmsearch.indexer.writeloop`) turns outcomes into committed rows and a report.
Ids of new rows come from one :class:`IdAllocator`, owned by the loop's caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from mmsearch.storage.table import ItemStore, StoredState

Kind = Literal["image", "text"]


@dataclass(frozen=True)
class Item:
    """One row to (re-)write.

    ``payload`` is what the executor embeds: for an image, a file path (``str``) or the
    encoded bytes; for a text, the text. ``prev`` is the stored row it replaces (its id
    is kept), ``where`` and ``row_number`` say where a failure is reported, ``ref`` is
    the source's own handle on the item (a file entry, a text row, a record part).
    An item that carries a ``vector`` already (a metadata-only change) skips the model.
    """

    kind: Kind
    uri: str
    payload: str | bytes
    prev: StoredState | None
    where: str
    ref: Any = None
    row_number: int | None = None
    sha256: str | None = None
    vector: npt.NDArray[np.float32] | None = None


@dataclass(frozen=True)
class Embedded:
    """An item and its unit vector; ``sha256`` is the content hash the row stores."""

    item: Item
    vector: npt.NDArray[np.float32]
    sha256: str | None


@dataclass(frozen=True)
class Failed:
    """An item that could not be embedded: why, the exception class, and the stage."""

    item: Item
    reason: str
    exc_class: str
    stage: str  # read | fetch | decode | tokenize | embed


Outcome = Embedded | Failed


@dataclass
class IdAllocator:
    """Hands out the ids of new rows: the one place that decides the id policy.

    Today: the next id after the table's largest, under the writer lock.

    >>> ids = IdAllocator(next_id=7)
    >>> ids.take(3)
    [7, 8, 9]
    """

    next_id: int = 0

    @classmethod
    def for_store(cls, store: ItemStore) -> IdAllocator:
        return cls(next_id=store.max_id() + 1)

    def take(self, n: int) -> list[int]:
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        return ids

    def ids_for(self, items: list[Item]) -> list[int]:
        """A changed item keeps its stored id; a new one takes the next."""
        fresh = iter(self.take(sum(1 for item in items if item.prev is None)))
        return [item.prev.id if item.prev is not None else next(fresh) for item in items]
