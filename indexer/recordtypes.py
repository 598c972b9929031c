"""Records from a backend: what a record is, how its fields are read, and the upsert report.

A record is a plain dict (JSON-compatible, so an HTTP layer passes it through):
``{"id": "sku-123", "title": ..., "description": ..., "price": 59.0, "image": URL,
"images": [URL, bytes, PIL image, "s3://...", "/path.png", "data:image/png;base64,..."]}``.
Its ``id`` (a string; an int is taken as its decimal string) keys it; its text fields
(``title`` then ``description`` by default) are its text; its image fields (``image``,
``images``) its images; every other field is metadata for filters (numbers, booleans
and strings keep their types; lists and objects become JSON strings).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from mmsearch.errors import RecordError

#: Text fields of a record, in the order their values are joined.
DEFAULT_TEXT_FIELDS = ("title", "description")
#: Fields holding a record's images (one reference, or a list of them).
DEFAULT_IMAGE_FIELDS = ("image", "images")
#: The longest text a record may have (as for text collections: never truncated silently).
MAX_TEXT_CHARS = 10_000
#: The ``source`` of rows written through the library's upsert.
RECORDS_SOURCE = "records"
_URI_PREFIX = "record:"

MetaValue = str | int | float | bool | None

__all__ = ["Record", "RecordError", "RecordFields", "UpsertReport", "read_records"]


@dataclass(frozen=True)
class Record:
    """One record, read: its id, text (None: no text fields), image references, metadata."""

    id: str
    text: str | None
    images: tuple[Any, ...]
    metadata: dict[str, MetaValue]


@dataclass(frozen=True)
class RecordFields:
    """Which fields of a record hold its id, text and images."""

    text_fields: tuple[str, ...] = DEFAULT_TEXT_FIELDS
    image_fields: tuple[str, ...] = DEFAULT_IMAGE_FIELDS
    id_field: str = "id"


def record_prefix(record_id: str) -> str:
    """Every row of a record has a uri starting so (the id escaped: no ``#`` or ``$`` in it)."""
    return f"{_URI_PREFIX}{quote(record_id, safe='')}#"


def record_id_of(uri: str) -> str | None:
    """The record id of a record row's uri (None for other rows)."""
    if not uri.startswith(_URI_PREFIX) or "#" not in uri:
        return None
    return unquote(uri[len(_URI_PREFIX) : uri.index("#")])


def record_range(record_id: str) -> str:
    """A predicate matching every row of a record (a uri range: ``$`` follows ``#``)."""
    from mmsearch.storage.schema import sql_quote

    prefix = record_prefix(record_id)
    return f"(uri >= {sql_quote(prefix)} AND uri < {sql_quote(prefix[:-1] + '$')})"


def read_record(raw: Any, fields: RecordFields, position: int) -> Record:
    """A :class:`Record` from a dict; :class:`RecordError` naming ``position`` when unusable."""
    if not isinstance(raw, Mapping):
        raise RecordError(f"record {position} is a {type(raw).__name__}, not an object")
    record_id = raw.get(fields.id_field)
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
        raise RecordError(f"record {position} has no {fields.id_field!r} (a string)")
    record_id = str(record_id).strip()
    if not record_id:
        raise RecordError(f"record {position} has an empty {fields.id_field!r}")
    texts = [_text_of(raw[name]) for name in fields.text_fields if raw.get(name) not in (None, "")]
    text = "\n".join(t for t in texts if t.strip()) or None
    images: list[Any] = []
    for name in fields.image_fields:
        value = raw.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, (list, tuple)):
            images.extend(v for v in value if v is not None and v != "")
        else:
            images.append(value)
    skip = {fields.id_field, *fields.text_fields, *fields.image_fields}
    metadata = {str(k): metadata_value(v) for k, v in raw.items() if k not in skip}
    return Record(record_id, text, tuple(images), metadata)


def read_records(
    raw: Sequence[Any] | Mapping[str, Any], fields: RecordFields = RecordFields()
) -> list[Record]:
    """Every record of an upsert call, checked before anything is written (ids unique)."""
    if isinstance(raw, Mapping):
        raw = [raw]
    records = [read_record(r, fields, i) for i, r in enumerate(raw)]
    first: dict[str, int] = {}
    for i, record in enumerate(records):
        if record.id in first:
            raise RecordError(f"records {first[record.id]} and {i} have the same id {record.id!r}")
        first[record.id] = i
    return records


def _text_of(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "replace").decode("utf-8")


def metadata_value(value: Any) -> MetaValue:
    """A field's value as typed metadata: scalars kept, NaN as None, the rest as JSON."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    if isinstance(value, (bytes, bytearray, os.PathLike)):
        return None
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class KindCounts:
    """What an upsert did to one kind of row."""

    added: int = 0
    updated: int = 0  # content changed (a new text, or an image in place of another)
    unchanged: int = 0  # content unchanged (its metadata may have been rewritten)
    removed: int = 0
    embedded: int = 0


@dataclass
class UpsertReport:
    """What :meth:`upsert` did; :meth:`to_dict` is JSON-compatible.

    ``failed`` lists ``(record id, what, reason)``: an image that could not be fetched
    or decoded, a text that could not be embedded. The record's other parts are
    indexed; the failed part is tried again by the next upsert of the record.
    """

    records: int = 0
    images: KindCounts = field(default_factory=KindCounts)
    texts: KindCounts = field(default_factory=KindCounts)
    #: Rows rewritten for changed metadata alone, their vectors kept.
    metadata_updated: int = 0
    deleted_records: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    table_version: int | None = None
    elapsed_s: float = 0.0

    @property
    def embedded(self) -> int:
        return self.images.embedded + self.texts.embedded

    def counts(self, kind: str) -> KindCounts:
        return self.images if kind == "image" else self.texts

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = [list(f) for f in self.failed]
        data["embedded"] = self.embedded
        return data
