"""Writing records into the index a :class:`~mmsearch.engine.SearchIndex` serves.

``idx.upsert(records)`` and ``idx.delete(ids)`` go through the indexer's record
writer (:mod:`mmsearch.indexer.upsert`: one writer session, the index's lock or
object-store lease) and then swap the engine to the snapshot they published, so a
record is searchable from the same object as soon as the call returns.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmsearch.indexer.recordtypes import UpsertReport
    from mmsearch.models.base import Encoder
    from mmsearch.urlfetch import FetchPolicy


class RecordWriter:
    """The record half of :class:`~mmsearch.engine.SearchIndex` (upsert and delete by id)."""

    _location: str | os.PathLike[str]

    @property
    def encoder(self) -> Encoder:  # provided by SearchIndex
        raise NotImplementedError

    def reload(self) -> bool:  # provided by SearchIndex
        raise NotImplementedError

    def upsert(
        self,
        records: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        *,
        text_fields: Sequence[str] | None = None,
        image_fields: Sequence[str] | None = None,
        allow_private_urls: bool = False,
        local_paths: bool = True,
        fetch_policy: FetchPolicy | None = None,
        lock_wait_s: float = 10.0,
    ) -> UpsertReport:
        """Inserts or updates records by their ``id``; searchable here when this returns.

        ``text_fields`` (default ``title``, ``description``) make a record's text,
        ``image_fields`` (default ``image``, ``images``) hold its images: URLs, ``s3://``,
        ``data:`` URIs, bytes, PIL images or paths (``local_paths=False`` refuses paths,
        for records from a network client). ``fetch_policy`` (or ``allow_private_urls``)
        governs URL fetching. Raises :class:`~mmsearch.errors.RecordError` (nothing
        written) for a record without an id or an id given twice, and
        :class:`~mmsearch.errors.StorageError` when another writer holds the index past
        ``lock_wait_s``. See :mod:`mmsearch.indexer.records`.

        >>> idx.upsert([{"id": "sku-1", "title": "red shirt", "image": "https://cdn/1.jpg"}])  # doctest: +SKIP
        """
        from mmsearch.indexer.upsert import upsert_records

        report = upsert_records(
            self._location, records, encoder=self.encoder, text_fields=text_fields,
            image_fields=image_fields, allow_private_urls=allow_private_urls,
            local_paths=local_paths, fetch_policy=fetch_policy, lock_wait_s=lock_wait_s,
        )  # fmt: skip
        self.reload()
        return report

    def delete(self, ids: Sequence[str], *, lock_wait_s: float = 10.0) -> int:
        """Deletes records by id (every row of each); returns how many the index held."""
        from mmsearch.indexer.upsert import delete_records

        found = delete_records(self._location, ids, encoder=self.encoder, lock_wait_s=lock_wait_s)
        self.reload()
        return found
