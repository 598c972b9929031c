"""Image metadata sidecars: a CSV/JSONL/Parquet file describing the images of a folder.

``mmsearch index ./catalog --metadata catalog.jsonl`` joins each row to the image named
by its ``file`` column (relative to the sidecar's folder, or absolute); the row's other
columns become the image's metadata and its caption the image's text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def load_image_metadata(
    path: str | os.PathLike[str], file_column: str = "file", text_column: str | None = None
) -> dict[str, dict[str, Any]]:
    """Reads an image-metadata sidecar: real path of each image → its metadata row.

    The row's text (``text_column``, else caption/text/title/description) is kept under
    the ``_text`` key and stored as the image's ``text``.
    """
    import pandas as pd

    from mmsearch.errors import TextCollectionError

    sidecar = Path(path)
    suffix = sidecar.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(sidecar, lines=True, dtype=False)
        elif suffix in (".csv", ".tsv"):
            frame = pd.read_csv(sidecar, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(sidecar)
        else:
            raise TextCollectionError(f"image metadata {sidecar}: use .csv, .tsv, .jsonl or .parquet")
    except (OSError, ValueError) as exc:
        raise TextCollectionError(f"cannot read image metadata {sidecar}: {exc}") from exc
    if file_column not in frame.columns:
        raise TextCollectionError(
            f"image metadata {sidecar} has no {file_column!r} column (columns: {', '.join(map(str, frame.columns))}); "
            "set --file-column"
        )
    if suffix in (".csv", ".tsv"):  # CSV cells are text: type each column as the text reader does
        from indexer.texttypes import infer_string_column

        for column in frame.columns:
            if column != file_column:
                frame[column] = pd.Series(infer_string_column(frame[column].tolist()), dtype=object)
    candidates = [text_column] if text_column else ["caption", "text", "title", "description"]
    text_col = next((c for c in candidates if c in frame.columns), None)
    out: dict[str, dict[str, Any]] = {}
    for record in frame.to_dict(orient="records"):
        rel = str(record.pop(file_column))
        meta: dict[str, Any] = {k: (None if isinstance(v, float) and v != v else v) for k, v in record.items()}
        if text_col is not None:
            meta["_text"] = None if meta.get(text_col) is None else str(meta[text_col])
        out[os.path.realpath(sidecar.parent / rel)] = meta
    return out
