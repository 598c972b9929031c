"""Records (from a backend's upsert, or a product feed) as a :class:`~mmsearch.indexer.source.Source`.

Each record is one text row (``<prefix>text``: its text fields) and one image row per
distinct image (``<prefix>image/<sha256>``: keyed by content, so a reordered list moves
nothing), where ``<prefix>`` is :func:`~mmsearch.indexer.recordtypes.record_prefix` of
its id. Every row carries the record's metadata and ``metadata["id"]``, so filters
and ``group_by="id"`` see whole records.

Against the table, per record: a text whose hash is unchanged, or an image whose
bytes are, is not embedded again (when only the metadata changed the row is
rewritten with its stored vector); new content is embedded; images the record no
longer names are deleted once its new rows are committed, unless one of its images
failed (never delete on doubt: the failed one is tried again next time). Records come
in chunks, fetched concurrently, so a large feed never holds all its images at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from mmsearch.indexer.items import Embedded, Failed, Item
from mmsearch.indexer.options import ProgressFn
from mmsearch.indexer.recordimages import ImageProblem, ImageResolver, describe
from mmsearch.indexer.recordtypes import (
    MAX_TEXT_CHARS,
    Record,
    UpsertReport,
    record_id_of,
    record_prefix,
    record_range,
)
from mmsearch.indexer.report import Failure, IndexReport

from mmsearch.storage.metadata_keys import ID_KEY
from mmsearch.storage.schema import fixed_list_to_numpy, make_rows, sql_quote
from mmsearch.storage.table import ItemStore, StoredState

#: Records whose stored rows are read in one query.
_IDS_PER_QUERY = 200


@dataclass(frozen=True)
class Stored:
    """A stored row of a record: its state, and the text and metadata it holds."""

    state: StoredState
    kind: str
    text: str | None
    metadata: str | None


@dataclass(frozen=True)
class Part:
    """An item's place in its record: the record, the change it makes, its image number."""

    record: Record
    change: str  # added | updated | refresh
    image: int | None = None
    size: int = 0


def stored_rows(store: ItemStore, record_ids: Sequence[str]) -> dict[str, Stored]:
    """uri → stored row, for every row of the given records."""
    out: dict[str, Stored] = {}
    for start in range(0, len(record_ids), _IDS_PER_QUERY):
        where = " OR ".join(record_range(r) for r in record_ids[start : start + _IDS_PER_QUERY])
        tbl = store.scan(["uri", "id", "sha256", "kind", "text", "metadata"], where)
        for row in tbl.to_pylist():
            state = StoredState(int(row["id"]), None, None, row["sha256"])
            out[row["uri"]] = Stored(state, row["kind"], row["text"], row["metadata"])
    return out


class RecordSource:
    """Chunks of :class:`Record` s written under ``source`` (see the module docstring).

    ``sweep_missing`` (a product feed): once every chunk is written, rows of this
    ``source`` whose record the chunks never named are deleted.
    """

    def __init__(
        self,
        chunks: Iterable[list[Record]],
        resolver: ImageResolver,
        upsert: UpsertReport,
        *,
        source: str,
        sweep_missing: bool = False,
    ) -> None:
        self.chunks = chunks
        self.resolver = resolver
        self.upsert = upsert
        self.source = source
        self.sweep_missing = sweep_missing
        self.seen: set[str] = set()
        self.doubtful: set[str] = set()  # records with a failed part: nothing of theirs is deleted
        self._new_images: dict[str, int] = {}  # per record: images embedded as new rows
        self.removed_ids: list[int] = []  # rows deleted (stale images, swept records)

    def plan(
        self, store: ItemStore, report: IndexReport, progress: ProgressFn
    ) -> Iterator[list[Item]]:
        for chunk in self.chunks:
            self.upsert.records += len(chunk)
            self.seen.update(r.id for r in chunk)
            stored = stored_rows(store, [r.id for r in chunk])
            refs = [ref for r in chunk for ref in r.images]
            resolved = iter(self.resolver.resolve(refs))
            items: list[Item] = []
            stale: dict[str, list[Stored]] = {}
            for record in chunk:
                mine = {u: s for u, s in stored.items() if u.startswith(record_prefix(record.id))}
                images = [next(resolved) for _ in record.images]
                items += self._plan_record(record, mine, images, stale, report)
            progress("scan", len(chunk), len(chunk))
            _attach_vectors(store, items)
            yield items
            # The chunk's rows are committed: drop what its records no longer name.
            gone = self._count_removed(stale)
            self.removed_ids += gone
            report.deleted += store.delete_ids(gone)

    def _count_removed(self, stale: dict[str, list[Stored]]) -> list[int]:
        """The ids of stale rows to delete; an image in place of a removed one counts as updated."""
        gone: list[int] = []
        for record_id, old in stale.items():
            new = self._new_images.pop(record_id, 0)
            if record_id in self.doubtful:
                self.upsert.images.added += new
                continue
            gone += [s.state.id for s in old]
            removed = sum(1 for s in old if s.kind == "image")
            pairs = min(new, removed)
            self.upsert.images.added += new - pairs
            self.upsert.images.updated += pairs
            self.upsert.images.removed += removed - pairs
            self.upsert.texts.removed += len(old) - removed
        return gone

    def _plan_record(
        self,
        record: Record,
        mine: dict[str, Stored],
        images: list[bytes | ImageProblem],
        stale: dict[str, list[Stored]],
        report: IndexReport,
    ) -> list[Item]:
        prefix = record_prefix(record.id)
        meta = json.dumps({**record.metadata, ID_KEY: record.id}, sort_keys=True, default=str)
        items: list[Item] = []
        keep: set[str] = set()
        if record.text is not None and len(record.text) > MAX_TEXT_CHARS:
            self._fail(record.id, "text", f"text is {len(record.text)} characters, over {MAX_TEXT_CHARS}",
                       "TextTooLongError", "read", report)  # fmt: skip
            keep.add(prefix + "text")
        elif record.text is not None:
            uri = prefix + "text"
            keep.add(uri)
            sha = hashlib.sha256(record.text.encode("utf-8")).hexdigest()
            item = self._item(record, "text", uri, record.text, sha, mine.get(uri), meta, None)
            items += [item] if item is not None else []
            report.unchanged += item is None
        for n, (ref, data) in enumerate(zip(record.images, images, strict=True)):
            if isinstance(data, ImageProblem):
                self._fail(record.id, f"image {n} ({describe(ref)})", data.reason, data.exc_class,
                           "fetch", report)  # fmt: skip
                continue
            sha = hashlib.sha256(data).hexdigest()
            uri = f"{prefix}image/{sha[:32]}"
            if uri in keep:  # the same image twice: one row
                continue
            keep.add(uri)
            item = self._item(record, "image", uri, data, sha, mine.get(uri), meta, n)
            items += [item] if item is not None else []
            report.unchanged += item is None
        stale[record.id] = [s for u, s in mine.items() if u not in keep]
        return items

    def _item(
        self,
        record: Record,
        kind: str,
        uri: str,
        payload: str | bytes,
        sha: str,
        prev: Stored | None,
        meta: str,
        image: int | None,
    ) -> Item | None:
        """The item to write for one part, or None when it is unchanged through and through."""
        counts = self.upsert.counts(kind)
        size = len(payload) if isinstance(payload, bytes) else len(payload.encode("utf-8"))
        if prev is not None and prev.state.sha256 == sha:
            counts.unchanged += 1
            if prev.metadata == meta and prev.text == record.text:
                return None
            part = Part(record, "refresh", image, size)  # content kept, metadata rewritten
            return Item(kind, uri, payload, prev.state, record.id, ref=part, sha256=sha)  # type: ignore[arg-type]
        part = Part(record, "added" if prev is None else "updated", image, size)
        state = prev.state if prev is not None else None
        return Item(kind, uri, payload, state, record.id, ref=part, sha256=sha)  # type: ignore[arg-type]

    def rows(
        self,
        done: Sequence[Embedded],
        ids: Sequence[int],
        vectors: npt.NDArray[np.float32],
        schema: pa.Schema,
    ) -> pa.Table:
        kind = done[0].item.kind
        counts = self.upsert.counts(kind)
        parts: list[Part] = [d.item.ref for d in done]
        for part in parts:
            if part.change == "refresh":
                self.upsert.metadata_updated += 1
                continue
            counts.embedded += 1
            if kind == "image":  # new content: added or updated once the stale ones are known
                self._new_images[part.record.id] = self._new_images.get(part.record.id, 0) + 1
            elif part.change == "updated":
                counts.updated += 1
            else:
                counts.added += 1
        now = time.time_ns()
        return make_rows(
            ids=ids,
            uris=[d.item.uri for d in done],
            kind=kind,
            texts=[p.record.text for p in parts],
            source=self.source,
            mtime_ns=[now] * len(done),
            sizes=[p.size for p in parts],
            sha256=[d.item.sha256 for d in done],
            metadata=[{**p.record.metadata, ID_KEY: p.record.id} for p in parts],
            vectors=vectors,
            schema=schema,
        )

    def failure(self, failed: Failed) -> Failure:
        part: Part = failed.item.ref
        what = "text"
        if part.image is not None:
            what = f"image {part.image} ({describe(part.record.images[part.image])})"
        self.doubtful.add(part.record.id)
        self.upsert.failed.append((part.record.id, what, failed.reason))
        return Failure(part.record.id, f"{what}: {failed.reason}", failed.exc_class, failed.stage)

    def _fail(
        self, record_id: str, what: str, reason: str, exc_class: str, stage: str,
        report: IndexReport,
    ) -> None:  # fmt: skip
        self.doubtful.add(record_id)
        self.upsert.failed.append((record_id, what, reason))
        report.failures.append(Failure(record_id, f"{what}: {reason}", exc_class, stage))

    def sweep(self, store: ItemStore, report: IndexReport) -> None:
        """A feed: rows of this source whose record the feed no longer has are deleted."""
        if not self.sweep_missing:
            return
        rows = store.scan(["uri", "id", "kind"], f"source = {sql_quote(self.source)}").to_pylist()
        gone = [r for r in rows if record_id_of(r["uri"]) not in self.seen]
        for row in gone:
            self.upsert.counts(row["kind"]).removed += 1
        self.upsert.deleted_records += len({record_id_of(r["uri"]) for r in gone})
        self.removed_ids += [r["id"] for r in gone]
        report.deleted += store.delete_ids(r["id"] for r in gone)


def _attach_vectors(store: ItemStore, items: list[Item]) -> None:
    """Items whose content is unchanged (a metadata rewrite) get their stored vector."""
    refresh = [i for i, item in enumerate(items) if item.ref.change == "refresh"]
    if not refresh:
        return
    ids = [items[i].prev.id for i in refresh]  # type: ignore[union-attr]
    tbl = store.scan(["id", "vector"], f"id IN ({','.join(str(i) for i in ids)})")
    vectors = dict(
        zip(
            tbl.column("id").to_pylist(),
            fixed_list_to_numpy(tbl.column("vector"), store.dim),
            strict=True,
        )
    )
    for i in refresh:
        item = items[i]
        vector: Any = vectors.get(item.prev.id)  # type: ignore[union-attr]
        if vector is None:  # gone meanwhile: embed it again
            part = Part(item.ref.record, "updated", item.ref.image, item.ref.size)
            items[i] = replace(item, ref=part)
        else:
            items[i] = replace(item, vector=vector)
