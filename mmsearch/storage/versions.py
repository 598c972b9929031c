"""The items table's committed versions, read from Lance's file names (no LanceDB import).

``mmsearch info`` and a reader's staleness check need the newest table version without
paying for LanceDB; Lance names each version's manifest after its number.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmsearch.storage.objectstore import RemoteIndex, remote_uri_of

#: The LanceDB table's directory inside an index (``schema.DB_DIRNAME/TABLE_NAME.lance``);
#: spelled out here so that reading it does not import the schema (and pyarrow).
TABLE_DIR = Path("db") / "items.lance"
_U64_MAX = (1 << 64) - 1


def latest_table_version(index_dir: str | os.PathLike[str]) -> int | None:
    """The newest committed table version, from the names of Lance's version manifests
    (listed in the object store for the cache of an object-store index).

    Lance names them ``<v>.manifest`` or, in its newer layout, ``<2**64-1-v>.manifest``.
    Returns None when the layout is not recognised (the caller then omits staleness).
    """
    folder = Path(index_dir) / TABLE_DIR / "_versions"
    uri = remote_uri_of(index_dir)
    best: int | None = None
    try:
        if uri is not None:
            names = RemoteIndex(uri).list_names(f"{TABLE_DIR.as_posix()}/_versions")
        else:
            names = os.listdir(folder)
    except OSError:
        return None
    for name in names:
        stem, _, ext = name.partition(".")
        if ext != "manifest" or not stem.isdigit():
            continue
        value = int(stem)
        version = _U64_MAX - value if value > (1 << 63) else value
        best = version if best is None else max(best, version)
    return best
