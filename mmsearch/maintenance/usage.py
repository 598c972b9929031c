"""What an index directory holds: its sources, disk size per component, the last run.

``mmsearch info`` shows these next to the engine's own description (rows, model, ANN).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: Index components by top-level entry of the index directory.
COMPONENTS = {"db": "table", "ann": "ann", "reports": "reports"}


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed meanwhile (an old ANN generation, a temp file)
                pass
    return total


def disk_usage(index_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes on disk per component: ``table`` (LanceDB), ``ann``, ``reports``, ``other``."""
    sizes = {name: 0 for name in (*COMPONENTS.values(), "other")}
    for entry in Path(index_dir).iterdir():
        sizes[COMPONENTS.get(entry.name, "other")] += _tree_bytes(entry)
    return sizes


def indexed_sources(index_dir: str | os.PathLike[str]) -> list[dict[str, Any]] | None:
    """Each folder or text collection the snapshot holds rows from, with its kind and row count.

    Read from the snapshot's rows file (no LanceDB); None for an index without one.
    """
    from mmsearch.storage.rowsfile import read_rows_file, rows_file_path
    from mmsearch.storage.snapshot import read_snapshot

    snapshot = read_snapshot(Path(index_dir))
    if snapshot is None:
        return None
    try:
        table = read_rows_file(rows_file_path(index_dir, snapshot))[0]
    except (OSError, KeyError, ValueError):
        return None
    if "source" not in table.column_names:
        return None
    counts = (
        table.select(["source", "kind"]).group_by(["source", "kind"]).aggregate([("kind", "count")])
    )
    rows = [
        {"source": s, "kind": k, "rows": int(n)}
        for s, k, n in zip(
            counts.column("source").to_pylist(),
            counts.column("kind").to_pylist(),
            counts.column("kind_count").to_pylist(),
            strict=True,
        )
    ]
    return sorted(rows, key=lambda r: (str(r["source"]), r["kind"]))


def last_run(index_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The latest indexing run's summary (``reports/last-run.json``), or None before any."""
    from mmsearch.indexer.report import FAILURES_DIRNAME, LAST_RUN_NAME

    path = Path(index_dir) / FAILURES_DIRNAME / LAST_RUN_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
