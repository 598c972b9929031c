"""``mmsearch demo``: sample catalog → index with mmsearch-tiny → queries → HTML gallery."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch.models.spec import TINY_MODEL_NAME, ModelSpec

TEXT_QUERIES = (
    "a red circle on the left",
    "blue square",
    "a yellow star on the top",
    "green triangle",
)


@dataclass
class DemoResult:
    report: Any
    queries: list[tuple[str, str, list[Any]]] = field(
        default_factory=list
    )  # (query, kind, results)
    html_path: Path | None = None


def run_demo(
    out: str | os.PathLike[str],
    *,
    n: int = 400,
    seed: int = 0,
    device: str | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> DemoResult:
    """Runs the whole demo in ``out`` (catalog/, index/, results.html); safe to re-run."""
    from mmsearch.datasets.synthetic import generate_catalog
    from mmsearch.engine import SearchIndex
    from mmsearch.indexer.pipeline import IndexOptions, run_index

    out_dir = Path(out)
    catalog_dir = out_dir / "catalog"
    jsonl = catalog_dir / "catalog.jsonl"
    if not (jsonl.is_file() and sum(1 for _ in jsonl.open(encoding="utf-8")) == n):
        generate_catalog(catalog_dir, n=n, seed=seed)
    spec = ModelSpec(TINY_MODEL_NAME, "")
    index_dir = out_dir / "index"
    report = run_index(
        [catalog_dir, jsonl],
        index_dir,
        spec,
        options=IndexOptions(
            device=device,
            backend="auto",  # ONNX Runtime on a CPU: mmsearch-tiny's export ships with mmsearch
            text_column="caption",
            id_column="id",
            image_metadata=jsonl,
        ),
        progress=progress,
    )
    idx = SearchIndex(index_dir, device=device, backend="auto")
    result = DemoResult(report=report)
    for query in TEXT_QUERIES:
        result.queries.append((query, "image", idx.search(query, k=5, kind="image")))
    rows = [json.loads(line) for line in jsonl.open(encoding="utf-8")]
    probe = rows[0]
    probe_path = str(catalog_dir / probe["file"])
    result.queries.append(
        (
            f"{probe['file']} ({probe['caption']})",
            "image",
            idx.search(Path(probe_path), k=5, kind="image"),
        )
    )
    result.queries.append(
        (
            f"{probe['file']} ({probe['caption']})",
            "text",
            idx.search(Path(probe_path), k=5, kind="text"),
        )
    )
    result.html_path = write_gallery(out_dir / "results.html", result.queries)
    return result


def write_gallery(path: Path, queries: list[tuple[str, str, list[Any]]]) -> Path:
    """Writes a static HTML page of result thumbnails (image paths relative to the page)."""
    base = path.parent.resolve()
    parts = [
        "<!doctype html><meta charset='utf-8'><title>mmsearch demo</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em}figure{display:inline-block;margin:6px;"
        "text-align:center;font-size:12px;width:140px}img{width:128px;height:128px;object-fit:contain;"
        "border:1px solid #ccc;image-rendering:pixelated}.t{display:block;padding:4px;border:1px solid #ddd;margin:3px}</style>",
        "<h1>mmsearch demo results</h1>",
    ]
    for query, kind, results in queries:
        parts.append(f"<h2>{html.escape(query)} &rarr; {html.escape(kind)}</h2><div>")
        for hit in results:
            if hit.kind == "image" and hit.path:
                rel = os.path.relpath(hit.path, base)
                parts.append(
                    f"<figure><img src='{html.escape(rel)}' alt=''><figcaption>#{hit.rank} "
                    f"{hit.score:.3f}<br>{html.escape(str(hit.metadata.get('file', '')))}</figcaption></figure>"
                )
            else:
                parts.append(
                    f"<span class='t'>#{hit.rank} {hit.score:.3f} {html.escape(hit.text or hit.uri)}</span>"
                )
        parts.append("</div>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
