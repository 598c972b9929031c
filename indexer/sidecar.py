"""Image metadata sidecars: a CSV/JSONL/Parquet file describing the images of a folder.

``mmsearch index ./catalog --metadata catalog.jsonl`` joins each row to the image named
by its ``file`` column (relative to the sidecar's folder, or absolute); the row's other
columns become the image's metadata and its caption the image's text.

A sidecar whose paths are written relative to another folder joins nothing; the join
is therefore counted (:class:`SidecarJoin`) and, when no row matches any image, the run
stops before embedding with an error that shows where the first row's file was looked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmsearch.errors import MetadataJoinError, TextCollectionError

#: Key under which a row's text travels with its metadata (stored as the image's text).
TEXT_KEY = "_text"


@dataclass(frozen=True)
class SidecarJoin:
    """How the sidecar's rows met the images being indexed."""

    rows: int
    matched: int
    unmatched: int
    images_without_row: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ImageSidecar:
    """The rows of one sidecar, keyed by the real path of the image each names."""

    path: Path
    file_column: str
    by_path: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (path as written in the file column, real path it was looked for at), in row order
    files: list[tuple[str, str]] = field(default_factory=list)

    def metadata_for(self, image_path: str) -> dict[str, Any]:
        """The row describing ``image_path`` (empty when none does)."""
        return self.by_path.get(os.path.realpath(image_path), {})

    def join(self, image_paths: Iterable[str]) -> SidecarJoin:
        """Counts rows matched / unmatched and images without a row.

        Raises :class:`MetadataJoinError` when the sidecar has rows and none names an
        image being indexed, naming the first row's path and where it was looked for.
        """
        real = {os.path.realpath(p) for p in image_paths}
        matched = sum(1 for _, where in self.files if where in real)
        described = len(real & self.by_path.keys())
        result = SidecarJoin(
            rows=len(self.files),
            matched=matched,
            unmatched=len(self.files) - matched,
            images_without_row=len(real) - described,
        )
        if self.files and matched == 0:
            written, where = self.files[0]
            raise MetadataJoinError(
                f"no row of {self.path} names an image being indexed ({len(real)} images): "
                f"its first {self.file_column!r} value {written!r} was looked for at {where}; "
                f"paths in {self.file_column!r} are relative to the metadata file's folder {self.path.parent}"
            )
        return result


def load_image_metadata(
    path: str | os.PathLike[str], file_column: str = "file", text_column: str | None = None
) -> ImageSidecar:
    """Reads an image-metadata sidecar: real path of each image → its metadata row.

    The row's text (``text_column``, else caption/text/title/description) is kept under
    the ``_text`` key and stored as the image's ``text``.
    """
    from mmsearch.indexer.textformats import FORMATS, read_records
    from mmsearch.indexer.texttypes import infer_string_column

    sidecar = Path(path)
    suffix = sidecar.suffix.lower()
    if suffix not in FORMATS:
        raise TextCollectionError(f"image metadata {sidecar}: use .csv, .tsv, .jsonl or .parquet")
    columns, records, problems, _ = read_records(sidecar)
    if problems:
        first = problems[0]
        raise TextCollectionError(
            f"cannot read image metadata {sidecar}: row {first.row_number}: {first.reason}"
            + (f" ({len(problems) - 1} more rows like it)" if len(problems) > 1 else "")
        )
    if file_column not in columns:
        raise TextCollectionError(
            f"image metadata {sidecar} has no {file_column!r} column (columns: {', '.join(columns)}); "
            "set --file-column"
        )
    rows = [{c: row.get(c) for c in columns} for _, row in records]  # every row every column
    if suffix in (".csv", ".tsv"):  # CSV cells are text: type each column as the text reader does
        for column in columns:
            if column != file_column:
                typed = infer_string_column([row[column] for row in rows])
                for row, value in zip(rows, typed, strict=True):
                    row[column] = value
    candidates = [text_column] if text_column else ["caption", "text", "title", "description"]
    text_col = next((c for c in candidates if c in columns), None)
    out = ImageSidecar(sidecar, file_column)
    for record in rows:
        rel = str(record.pop(file_column))
        meta: dict[str, Any] = {
            str(k): (None if isinstance(v, float) and v != v else v) for k, v in record.items()
        }
        if text_col is not None:
            meta[TEXT_KEY] = None if meta.get(text_col) is None else str(meta[text_col])
        where = os.path.realpath(sidecar.parent / rel)
        out.files.append((rel, where))
        out.by_path[where] = meta
    return out
