"""The HTTP shape of records: the body of ``PUT /api/items`` and the answers of the item routes.

A record over HTTP is a record of the library (:mod:`mmsearch.indexer.recordtypes`),
with what a network client may send stated in the schema (``/openapi.json``):

    [{"id": "sku-1", "title": "Red circle tee", "price": 19.0, "brand": "Lumeth",
      "image": "https://cdn.example.com/1.jpg"},
     {"id": "sku-2", "title": "Blue star cap", "images": ["data:image/png;base64,iVBORw0KGgo..."]}]

- ``id``: letters, digits and ``-_.:~+=@`` (at most :data:`MAX_ID_CHARS`), starting
  with a letter or digit, so it is one path segment of ``/api/items/{id}`` as written;
- ``title`` and ``description``: the record's text (not blank; together within the
  library's text limit);
- ``image`` and ``images``: http(s) URLs (fetched under the server's URL policy) or
  base64 ``data:image/...`` URIs; never a server path or an ``s3://`` object;
- every other field (a name like a filter column): metadata for filters, a string, a
  finite bounded number, a boolean or null.

A record names at least one of ``title``, ``description``, ``image``, ``images``. The
whole record replaces what the index held for its id (images it no longer names are
removed), so a repeated ``PUT`` changes nothing and embeds nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints, model_validator
from pydantic.json_schema import SkipJsonSchema

from mmsearch.serve.schemas import (
    MAX_COLUMN_CHARS,
    MAX_FILTER_NUMBER,
    MAX_URL_CHARS,
    NOT_BLANK,
    StrictModel,
)

#: Records one ``PUT`` may carry.
MAX_RECORDS = 1000
#: Images in one record's ``images`` (besides its ``image``).
MAX_IMAGES = 16
#: Fields of one record, its id, text and images included.
MAX_FIELDS = 64
MAX_ID_CHARS = 128
MAX_TITLE_CHARS = 1000
#: A title and a description stay within the library's text limit together (10,000).
MAX_DESCRIPTION_CHARS = 8000
MAX_META_CHARS = 1000
#: A ``data:`` URI is bounded by the request body cap first; this bounds the schema.
MAX_DATA_URI_CHARS = 64 * 1024 * 1024

ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.:~+=@-]{{0,{MAX_ID_CHARS - 1}}}$"
FIELD_NAME_PATTERN = rf"^[A-Za-z_][A-Za-z0-9_.]{{0,{MAX_COLUMN_CHARS - 1}}}$"
_B64 = "[A-Za-z0-9+/]"
DATA_URI_PATTERN = rf"^data:image/[A-Za-z0-9.+-]+;base64,(?:{_B64}{{4}})*(?:{_B64}{{4}}|{_B64}{{3}}=|{_B64}{{2}}==)$"
#: Printable ASCII without spaces (both regex dialects agree on it; encode other characters).
URL_PATTERN = r"^https?://[!-~]+$"

ItemId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ImageUrl = Annotated[str, StringConstraints(max_length=MAX_URL_CHARS, pattern=URL_PATTERN)]
ImageData = Annotated[
    str, StringConstraints(max_length=MAX_DATA_URI_CHARS, pattern=DATA_URI_PATTERN)
]
ImageRef = ImageUrl | ImageData
FieldName = Annotated[str, StringConstraints(pattern=FIELD_NAME_PATTERN)]
MetaValue = (
    bool
    | Annotated[int, Field(ge=-int(MAX_FILTER_NUMBER), le=int(MAX_FILTER_NUMBER))]
    | Annotated[float, Field(ge=-MAX_FILTER_NUMBER, le=MAX_FILTER_NUMBER)]
    | Annotated[str, StringConstraints(max_length=MAX_META_CHARS)]
    | None
)
Title = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TITLE_CHARS, pattern=NOT_BLANK)
]
Description = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_DESCRIPTION_CHARS, pattern=NOT_BLANK)
]
_CONTENT = ("title", "description", "image", "images")


class RecordIn(StrictModel):
    """One record of ``PUT /api/items`` (see the module docstring)."""

    model_config = ConfigDict(
        strict=True,
        extra="allow",
        json_schema_extra={
            "anyOf": [{"required": [name]} for name in _CONTENT],
            "propertyNames": {"pattern": FIELD_NAME_PATTERN},
            "maxProperties": MAX_FIELDS,
        },
    )
    # Extra fields are the record's metadata; their names and values are typed too.
    __pydantic_extra__: dict[FieldName, MetaValue] = Field(init=False)  # type: ignore[assignment]

    id: ItemId = Field(
        description="The record's id (a product id): the key of upserts and deletes."
    )
    title: Title | SkipJsonSchema[None] = None
    description: Description | SkipJsonSchema[None] = None
    image: ImageRef | SkipJsonSchema[None] = Field(
        None, description="One image: an http(s) URL or a base64 `data:image/...` URI."
    )
    images: (
        Annotated[list[ImageRef], Field(min_length=1, max_length=MAX_IMAGES)] | SkipJsonSchema[None]
    ) = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        """A content field is a value or absent: ``null`` is not in the schema, so it is refused."""
        if isinstance(data, dict):
            nulls = [name for name in ("id", *_CONTENT) if name in data and data[name] is None]
            if nulls:
                raise ValueError(f"{', '.join(nulls)}: null is not allowed (leave the field out)")
        return data

    @model_validator(mode="after")
    def _checked(self) -> RecordIn:
        extra = self.__pydantic_extra__ or {}
        if len(extra) + 1 + sum(getattr(self, n) is not None for n in _CONTENT) > MAX_FIELDS:
            raise ValueError(f"a record has at most {MAX_FIELDS} fields")
        if all(getattr(self, name) is None for name in _CONTENT):
            raise ValueError("a record needs a title, a description, an image or images")
        return self

    def to_record(self) -> dict[str, Any]:
        """The record as the library takes it (a plain dict)."""
        return self.model_dump(
            exclude_none=False, exclude={n for n in _CONTENT if getattr(self, n) is None}
        )


Records = Annotated[list[RecordIn], Field(min_length=1, max_length=MAX_RECORDS)]

_COUNTS = {
    "type": "object",
    "required": ["added", "updated", "unchanged", "removed", "embedded"],
    "properties": {
        name: {"type": "integer", "minimum": 0}
        for name in ("added", "updated", "unchanged", "removed", "embedded")
    },
}


def upsert_answer_schema() -> dict[str, Any]:
    """The 200 answer of ``PUT /api/items``."""
    failure = {
        "type": "object",
        "required": ["id", "what", "reason"],
        "properties": {
            "id": {"type": "string"},
            "what": {"type": "string", "description": "`text`, or `image N (URL or size)`."},
            "reason": {"type": "string"},
        },
    }
    return {
        "type": "object",
        "required": [
            "ids",
            "records",
            "images",
            "texts",
            "metadata_updated",
            "embedded",
            "failed",
            "table_version",
            "elapsed_s",
        ],  # fmt: skip
        "properties": {
            "ids": {
                "type": "array",
                "items": {"type": "string", "pattern": ID_PATTERN},
                "description": "The ids written, in the order of the request.",
            },
            "records": {"type": "integer", "minimum": 0},
            "images": _COUNTS,
            "texts": _COUNTS,
            "metadata_updated": {
                "type": "integer",
                "minimum": 0,
                "description": "Rows rewritten for changed metadata alone, their vectors kept.",
            },
            "embedded": {"type": "integer", "minimum": 0},
            "failed": {
                "type": "array",
                "items": failure,
                "description": "Parts that failed (an image that could not be fetched or "
                "decoded); the record's other parts are indexed, and the failed part is "
                "tried again by the next upsert of the record.",
            },
            "table_version": {"type": ["integer", "null"]},
            "elapsed_s": {"type": "number", "minimum": 0},
        },
    }


def upsert_answer(ids: list[str], report: Any) -> dict[str, Any]:
    """The JSON answer of ``PUT /api/items`` from an :class:`~mmsearch.indexer.recordtypes.UpsertReport`."""
    data = report.to_dict()
    counts = ("added", "updated", "unchanged", "removed", "embedded")
    return {
        "ids": ids,
        "records": data["records"],
        "images": {k: data["images"][k] for k in counts},
        "texts": {k: data["texts"][k] for k in counts},
        "metadata_updated": data["metadata_updated"],
        "embedded": data["embedded"],
        "failed": [{"id": i, "what": w, "reason": r} for i, w, r in report.failed],
        "table_version": data["table_version"],
        "elapsed_s": round(float(data["elapsed_s"]), 6),
    }


DELETE_ANSWER = {
    "type": "object",
    "required": ["id", "deleted"],
    "properties": {
        "id": {"type": "string", "pattern": ID_PATTERN},
        "deleted": {
            "type": "boolean",
            "description": "Whether the index held the record (a repeated delete answers false).",
        },
    },
}

ROW = {
    "type": "object",
    "required": ["id", "uri", "kind", "text", "metadata"],
    "properties": {
        "id": {"type": "integer", "description": "The row's id (as in search results)."},
        "uri": {"type": "string"},
        "kind": {"type": "string", "enum": ["image", "text"]},
        "text": {"type": ["string", "null"]},
        "metadata": {"type": "object"},
    },
}

RECORD_ANSWER = {
    "type": "object",
    "required": ["id", "items"],
    "properties": {
        "id": {"type": "string", "pattern": ID_PATTERN},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": ROW,
            "description": "The record's rows in the served snapshot: its text and each image.",
        },
    },
}
