"""The chance levels of a published snapshot, kept in the user cache between processes.

Measuring them (:mod:`mmsearch.search.calibrate`: :data:`~mmsearch.search.calibrate.N_PROBES`
nonsense queries through the text tower, then searched per kind) costs a one-shot
``mmsearch query`` seconds with a ViT text tower on a CPU. A snapshot never changes, so
the levels are measured once per snapshot and model and read back by every later
process. The key names the index's real path, the snapshot record, the ``snapshot.json``
file's size and time (a removed and rebuilt index at the same path is another key) and
the calibration's parameters; a cache that cannot be read or written only costs the
measurement again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from mmsearch.models.cache import read_json, user_cache_dir, write_json_atomic
from mmsearch.search.calibrate import CHANCE_DEPTH, N_PROBES, Chance
from mmsearch.storage.snapshot import Snapshot

#: Bumped when the measurement changes (probes, depth, the statistics kept).
CALIBRATION_VERSION = 1


def _cache_path(index_dir: Path, published: Snapshot, exact_rows: int) -> Path | None:
    try:
        st = os.stat(index_dir / "snapshot.json")
    except OSError:
        return None
    key = json.dumps(
        [
            os.path.realpath(index_dir), asdict(published), st.st_size, st.st_mtime_ns,
            N_PROBES, CHANCE_DEPTH, exact_rows, CALIBRATION_VERSION,
        ],
        sort_keys=True,
    )  # fmt: skip
    return user_cache_dir() / "chance" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def cached_chance(
    index_dir: Path,
    published: Snapshot,
    measure: Callable[[], dict[str, Chance]],
    *,
    exact_rows: int,
) -> dict[str, Chance]:
    """The snapshot's chance levels from the cache, else ``measure()`` (then cached)."""
    try:
        path = _cache_path(index_dir, published, exact_rows)
    except OSError:  # no usable cache directory
        path = None
    if path is not None:
        stored = read_json(path).get("kinds")
        if isinstance(stored, dict):
            try:
                return {kind: Chance(**values) for kind, values in stored.items()}
            except TypeError:
                pass  # written by another layout: measure again
    measured = measure()
    if path is not None:
        try:
            write_json_atomic(path, {"kinds": {k: asdict(v) for k, v in measured.items()}})
        except OSError:
            pass
    return measured
