"""Where mmsearch keeps derived model artefacts (ONNX exports, calibration embeddings).

The directory is ``$MMSEARCH_CACHE`` when set, else ``$XDG_CACHE_HOME/mmsearch``, else
``~/.cache/mmsearch``. Everything in it can be deleted: it is rebuilt on demand.
Weight-file fingerprints (sha256) are memoised by (path, size, mtime) so that a
one-shot command never re-hashes a large checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

_FINGERPRINTS = "fingerprints.json"


def user_cache_dir() -> Path:
    """The mmsearch cache directory (created on first use)."""
    env = os.environ.get("MMSEARCH_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(base) / "mmsearch"
    root.mkdir(parents=True, exist_ok=True)
    return root


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; an absent or damaged file reads as ``{}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Writes ``data`` to ``path`` via a temporary file and a rename (readers never see half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, sort_keys=True, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of a weights file, memoised by (real path, size, mtime_ns) in the cache."""
    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    memo_path = user_cache_dir() / _FINGERPRINTS
    memo = read_json(memo_path)
    entry = memo.get(real)
    if (
        isinstance(entry, dict)
        and entry.get("stamp") == stamp
        and isinstance(entry.get("sha256"), str)
    ):
        return str(entry["sha256"])
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    memo = read_json(memo_path)  # re-read: another process may have added entries
    memo[real] = {"stamp": stamp, "sha256": digest}
    write_json_atomic(memo_path, memo)
    return digest
