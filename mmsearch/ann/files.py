"""Crash-safe files of an index directory: atomic writes, manifest, lock, garbage collection.

Layout of an index directory (``<g>`` is the generation, bumped by every save)::

    manifest.json          written atomically LAST; the only entry point
    index-<g>.faiss        FAISS IVF-PQ index (absent for flat indexes)
    vectors-<g>.f32|.f16   one refine segment: float32/float16 (n_s, d) row-major
    ids-<g>.i64            its int64 ids (n_s,), in row order
    tombstones-<g>.i64     int64 positions of removed rows across the segments
    .lock                  flock'ed by writers

Segments are append-only: a save writes only the rows added since the last one as a
new segment; a save into another directory hard-links the existing segments there
(``link_or_copy``) instead of copying them.

Data files never change once written: a save writes new generation files (temp file
in the same directory, fsync, ``os.replace``, fsync of the directory), then the
manifest the same way, and only then deletes files no manifest refers to. A process
killed at any point therefore leaves the previous manifest pointing at complete
previous files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmsearch.errors import IndexCorruptError, IndexNotFoundError

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
"""Version 1: a single refine segment named by the roles ``vectors`` and ``ids``."""
REBUILD_HINT = "rebuild it with `mmsearch build-index`"

_DATA_FILE_RE = re.compile(
    r"^(index-\d+\.faiss|vectors-\d+\.f(32|16)|ids-\d+\.i64|tombstones-\d+\.i64)$"
)
_TEMP_FILE_RE = re.compile(r"^\..+\.tmp-[0-9a-f]+$")


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename inside it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Create ``path`` atomically: ``write(temp_path)`` fills a temp file in the same
    directory (its return value is ignored), which is then fsynced, renamed over ``path`` and the directory fsynced.
    The temp file is removed if ``write`` fails."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``atomic_write`` of an in-memory byte string."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def link_or_copy(src: Path, dst: Path, *, sync: bool = True) -> None:
    """Make the finished data file ``src`` also appear as ``dst``: a hard link (no bytes
    copied), or an atomic copy across file systems. An existing ``dst`` that is the
    same file is kept. ``sync=False`` leaves the directory's fsync to the caller (one
    for many links, before whatever names them is committed)."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.samefile(src, dst):
            return
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
        return
    if sync:
        fsync_dir(dst.parent)


def sha256_file(path: Path, *, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path, sha256: str | None = None) -> dict[str, Any]:
    """Manifest entry for a finished data file (name, size, checksum)."""
    return {
        "name": path.name,
        "size": path.stat().st_size,
        "sha256": sha256 if sha256 is not None else sha256_file(path),
    }


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse ``manifest.json``; IndexNotFoundError if absent, IndexCorruptError if unreadable."""
    path = directory / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IndexNotFoundError(
            f"no ANN index in {directory} (missing {MANIFEST_NAME}); build one with "
            "`mmsearch build-index`"
        ) from None
    except OSError as exc:
        raise IndexCorruptError(f"cannot read {path}: {exc}; {REBUILD_HINT}") from exc
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"{path} is not valid JSON ({exc}); {REBUILD_HINT}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") not in READABLE_FORMATS:
        raise IndexCorruptError(
            f"{path} has an unknown format (format_version="
            f"{manifest.get('format_version') if isinstance(manifest, dict) else None!r}, "
            f"expected {FORMAT_VERSION}); {REBUILD_HINT}"
        )
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace ``manifest.json`` (this is the commit point of a save)."""
    data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    atomic_write_bytes(directory / MANIFEST_NAME, data)


def verify_file(directory: Path, entry: dict[str, Any], *, checksum: bool) -> Path:
    """Check that a manifest data file exists with the recorded size (and checksum)."""
    path = directory / str(entry["name"])
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise IndexCorruptError(f"index file {path} is missing; {REBUILD_HINT}") from None
    if size != entry["size"]:
        raise IndexCorruptError(
            f"index file {path} is {size} bytes but the manifest records {entry['size']} "
            f"(truncated or overwritten); {REBUILD_HINT}"
        )
    if checksum and sha256_file(path) != entry["sha256"]:
        raise IndexCorruptError(
            f"index file {path} fails its SHA-256 check (corrupt); {REBUILD_HINT}"
        )
    return path


@contextlib.contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock so two processes never save into one directory at once."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def collect_garbage(directory: Path, keep: set[str]) -> list[str]:
    """Delete data files of older generations and temp files of killed writers.

    Call only under ``writer_lock`` and after the manifest naming ``keep`` is durable.
    Readers that already mapped an old file keep their mapping (POSIX unlink).
    """
    removed: list[str] = []
    for entry in os.scandir(directory):
        name = entry.name
        if name in keep or not (_DATA_FILE_RE.match(name) or _TEMP_FILE_RE.match(name)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(name)
    return removed
