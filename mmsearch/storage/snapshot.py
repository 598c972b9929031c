"""The index snapshot: which table version the ANN indexes were built from.

``snapshot.json`` in the index directory is written last, atomically, after the
table commit and the ANN files it names. Readers open the table *at that version*
and the ANN indexes it lists, so a query never mixes an index with rows it was not
built from — even while an indexing run is writing newer versions.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmsearch.errors import IndexCorruptError

SNAPSHOT_FILENAME = "snapshot.json"
ANN_DIRNAME = "ann"


@dataclass(frozen=True)
class Snapshot:
    """A consistent view: table version + model + one ANN directory per kind + full-text index.

    ``lexical_index`` names the table's full-text index when, at ``table_version``, it
    covers every row (None: the snapshot serves vector search only).
    """

    table_version: int
    model_key: str
    ann_dirs: dict[str, str] = field(default_factory=dict)  # kind -> dir relative to the index dir
    generation: int = 0
    lexical_index: str | None = None

    def ann_path(self, index_dir: Path, kind: str) -> Path:
        return index_dir / self.ann_dirs[kind]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via temp file + fsync + rename + directory fsync."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_snapshot(index_dir: Path) -> Snapshot | None:
    """The current snapshot, or None when no ANN index was ever completed."""
    path = index_dir / SNAPSHOT_FILENAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return Snapshot(
            table_version=int(data["table_version"]),
            model_key=str(data["model_key"]),
            ann_dirs={str(k): str(v) for k, v in data.get("ann_dirs", {}).items()},
            generation=int(data.get("generation", 0)),
            lexical_index=str(data["lexical_index"]) if data.get("lexical_index") else None,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexCorruptError(
            f"{path} is damaged ({exc}); rebuild it with: mmsearch build-index --index {index_dir}"
        ) from exc


def write_snapshot(index_dir: Path, snapshot: Snapshot) -> None:
    atomic_write_bytes(
        index_dir / SNAPSHOT_FILENAME, json.dumps(asdict(snapshot), indent=2).encode()
    )


def rows_file_name(generation: int) -> str:
    """The rows file of a snapshot generation, relative to the index directory
    (see :mod:`mmsearch.storage.rowsfile`)."""
    return f"{ANN_DIRNAME}/rows-g{generation}.arrow"
