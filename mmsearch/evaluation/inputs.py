"""Evaluation inputs: query sets (JSONL) and captioned collections (COCO, Flickr30k, CSV/JSONL).

Query set, one JSON object a line::

    {"query": "a red circle on the left", "relevant": ["images/buttons/item-000003.jpg", 17]}
    {"query": "photos/ref.jpg", "relevant": {"file:///.../a.jpg": 2, "file:///.../b.jpg": 1}}
    {"query": {"terms": [{"text": "red dress", "weight": 2}, {"image": "ref.jpg"}],
               "where": ["price < 20"], "kind": "image"}, "relevant": [...]}

``relevant`` holds item uris, ids, or image paths (relative to the query file); a
``{key: grade}`` object gives graded relevance (grade > 0 is relevant). Image paths in
queries are relative to the query file too. An optional ``class`` (a string such as
``"brand"`` or ``"sku"``) groups queries: the report gives each class its own figures.

Captioned collection: the Karpathy split JSON of COCO / Flickr30k (``images[].filename``
+ ``sentences[].raw``, filtered to one ``split``), the COCO annotation format
(``images`` + ``annotations``), a JSON list of ``{"image": path, "caption": [...]}``
(CLIP_benchmark / LAVIS style), or a CSV/JSONL with an image column and a caption
column (several rows per image, or a list of captions per row).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch.errors import BadQueryError, TextCollectionError

IMAGE_COLUMNS = ("image", "file", "filename", "file_name", "filepath", "path", "image_path")
CAPTION_COLUMNS = ("caption", "captions", "text", "sentence", "raw")


@dataclass(frozen=True)
class EvalQuery:
    """One query of a query set: what to search for and which items are relevant (with grades)."""

    line: int
    query: str
    relevant: dict[str | int, float]
    kind: str = "any"
    where: list[str] = field(default_factory=list)
    group: str | None = None  # the query's class, if the set names one

    @property
    def label(self) -> str:
        return self.query if len(self.query) <= 120 else self.query[:117] + "..."


def _resolve_path(value: str, base: Path) -> str:
    """``value`` made absolute against ``base`` when it names an existing file there."""
    if os.path.isabs(value) or value.startswith(("file:", "s3:", "gs:", "http:", "https:")):
        return value
    candidate = base / value
    return str(candidate.resolve()) if candidate.is_file() else value


def _quote_text(text: str) -> str:
    if '"' not in text:
        return f'"{text}"'
    if "'" not in text:
        return f"'{text}'"
    raise BadQueryError(f"a structured query's text cannot hold both quote characters: {text!r}")


def structured_query(obj: Mapping[str, Any], base: Path) -> str:
    """The query-language string of a structured query (``terms`` of text/image with weights)."""
    terms = obj.get("terms")
    if terms is None:
        terms = [{"text": obj["text"]}] if "text" in obj else []
        terms += [{"image": obj["image"]}] if "image" in obj else []
    if not isinstance(terms, list) or not terms:
        raise BadQueryError("a structured query needs 'terms' (or 'text' / 'image')")
    parts: list[str] = []
    for term in terms:
        if not isinstance(term, Mapping) or ("text" in term) == ("image" in term):
            raise BadQueryError(
                "each term is {'text': ...} or {'image': ...}, with an optional 'weight'"
            )
        weight = float(term.get("weight", 1.0))
        sign = "-" if weight < 0 else "+"
        prefix = "" if abs(weight) == 1.0 else f"{abs(weight):g}:"
        if "text" in term:
            body = _quote_text(prefix + str(term["text"]))
        else:
            body = prefix + _resolve_path(str(term["image"]), base)
        parts.append(body if not parts and sign == "+" else f"{sign} {body}")
    return " ".join(parts)


def _relevance(value: Any, base: Path, line: int) -> dict[str | int, float]:
    if isinstance(value, Mapping):
        items = [(k, float(g)) for k, g in value.items()]
    elif isinstance(value, list):
        items = [(k, 1.0) for k in value]
    else:
        raise BadQueryError(f"line {line}: 'relevant' must be a list or an object of grades")
    out: dict[str | int, float] = {}
    for key, grade in items:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise BadQueryError(
                f"line {line}: a relevant item is a uri, an id or a path, not {key!r}"
            )
        out[key if isinstance(key, int) else _resolve_path(key, base)] = grade
    if not any(g > 0 for g in out.values()):
        raise BadQueryError(f"line {line}: no relevant item (grade > 0)")
    return out


def read_queries(path: str | os.PathLike[str]) -> list[EvalQuery]:
    """Reads a query-set JSONL file; raises :class:`BadQueryError` naming the bad line."""
    source = Path(path)
    base = source.resolve().parent
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadQueryError(f"cannot read query set {source}: {exc}") from exc
    queries: list[EvalQuery] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadQueryError(f"{source} line {number}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or "query" not in obj or "relevant" not in obj:
            raise BadQueryError(f"{source} line {number}: needs 'query' and 'relevant'")
        q = obj["query"]
        where = list(obj.get("where", []))
        kind = str(obj.get("kind", "any"))
        if isinstance(q, Mapping):
            where += list(q.get("where", []))
            kind = str(q.get("kind", kind))
            text = structured_query(q, base)
        elif isinstance(q, str) and q.strip():
            text = _resolve_path(q, base)
        else:
            raise BadQueryError(
                f"{source} line {number}: 'query' must be a text, an image path or an object"
            )
        group = obj.get("class")
        if group is not None and (not isinstance(group, str) or not group.strip()):
            raise BadQueryError(f"{source} line {number}: 'class' must be a non-empty string")
        relevance = _relevance(obj["relevant"], base, number)
        queries.append(EvalQuery(number, text, relevance, kind, where, group))
    if not queries:
        raise BadQueryError(f"query set {source} holds no queries")
    return queries


@dataclass
class CaptionedSet:
    """Images and their captions: ``caption_image[j]`` is the index of caption ``j``'s image."""

    images: list[Path]
    captions: list[str]
    caption_image: list[int]


def _first(
    columns: Sequence[str], wanted: Sequence[str], given: str | None, what: str, source: Path
) -> str:
    if given is not None:
        if given not in columns:
            raise TextCollectionError(
                f"{source} has no {given!r} column (columns: {', '.join(columns)})"
            )
        return given
    for name in wanted:
        if name in columns:
            return name
    raise TextCollectionError(
        f"{source}: no {what} column among {', '.join(columns)}; name it with --{what}-column"
    )


def _records(source: Path) -> list[dict[str, Any]] | dict[str, Any]:
    suffix = source.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(source.read_text(encoding="utf-8"))
        if suffix in (".jsonl", ".ndjson"):
            return [
                json.loads(line)
                for line in source.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
        if suffix in (".csv", ".tsv"):
            with open(source, encoding="utf-8-sig", newline="") as fh:
                return list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(source).to_pylist()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TextCollectionError(f"cannot read captions {source}: {exc}") from exc
    raise TextCollectionError(
        f"captions {source}: use .json (COCO/Karpathy), .jsonl, .csv, .tsv or .parquet"
    )


def read_captioned(
    path: str | os.PathLike[str],
    images_root: str | os.PathLike[str] | None = None,
    *,
    split: str | None = "test",
    image_column: str | None = None,
    caption_column: str | None = None,
) -> CaptionedSet:
    """Reads a captioned collection; image paths are relative to ``images_root`` (default: the file's folder).

    ``split`` filters Karpathy-style files (``images[].split``); ``None`` keeps every image.
    """
    source = Path(path)
    root = Path(images_root) if images_root is not None else source.resolve().parent
    data = _records(source)
    pairs: list[tuple[str, str]] = []
    if isinstance(data, dict) and "annotations" in data:  # COCO annotation format
        names = {img["id"]: img["file_name"] for img in data["images"]}
        pairs = [
            (names[a["image_id"]], a["caption"])
            for a in data["annotations"]
            if a["image_id"] in names
        ]
    elif isinstance(data, dict) and "images" in data:  # Karpathy split JSON
        for img in data["images"]:
            if split is not None and img.get("split", split) != split:
                continue
            name = os.path.join(img.get("filepath", ""), img["filename"])
            pairs += [(name, s["raw"] if isinstance(s, dict) else str(s)) for s in img["sentences"]]
    elif isinstance(data, list) and data:
        columns = list(data[0].keys())
        image_col = _first(columns, IMAGE_COLUMNS, image_column, "image", source)
        caption_col = _first(columns, CAPTION_COLUMNS, caption_column, "caption", source)
        for record in data:
            caps = record[caption_col]
            for cap in caps if isinstance(caps, list) else [caps]:
                pairs.append((str(record[image_col]), str(cap)))
    if not pairs:
        raise TextCollectionError(
            f"captions {source}: no image/caption pairs" + (f" in split {split!r}" if split else "")
        )
    index_of: dict[str, int] = {}
    images: list[Path] = []
    captions: list[str] = []
    caption_image: list[int] = []
    for name, caption in pairs:
        if not caption.strip():
            continue
        if name not in index_of:
            index_of[name] = len(images)
            images.append(Path(name) if os.path.isabs(name) else root / name)
        captions.append(caption)
        caption_image.append(index_of[name])
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise TextCollectionError(
            f"{len(missing)} image(s) of {source} not found, e.g. {missing[0]}; set --images to their folder"
        )
    return CaptionedSet(images, captions, caption_image)
