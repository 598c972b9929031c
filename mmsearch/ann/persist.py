"""Saving and loading a ``VectorIndex``: generation-numbered files plus a manifest.

``save`` writes new-generation data files (reusing unchanged ones when saving back to
the directory the index came from), then the manifest as the commit point, then
deletes older generations. ``load`` checks the manifest against the expected model and
table version and verifies every file before opening it (memory-mapped by default).
``VectorIndex.save`` / ``VectorIndex.load`` delegate here.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from mmsearch.ann import files as F
from mmsearch.ann.params import ID_BYTES, IndexParams
from mmsearch.ann.store import VectorStore
from mmsearch.ann.training import fill_index
from mmsearch.errors import IndexCorruptError, ModelMismatchError

if TYPE_CHECKING:
    from mmsearch.ann.index import VectorIndex

_MMAP_FLAG = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)
_GEN_RE = re.compile(r"^(?:\.)?(?:index|vectors|ids)-(\d+)\.")


def save_index(
    index: VectorIndex, directory: str | os.PathLike[str], *, table_version: int, model_key: str
) -> None:
    """Write ``index`` to ``directory`` crash-safely (new generation files, then the
    manifest, then old generations are deleted). Unchanged files are reused."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    with index._mutate, F.writer_lock(root):
        gen = _next_generation(root)
        same_dir = index._files_dir is not None and _same_dir(index._files_dir, root)
        files: dict[str, dict[str, Any]] = {}
        new_store = None
        if (
            same_dir
            and not index._store.dirty
            and _files_present(root, index._files, ("vectors", "ids"))
        ):
            files["vectors"], files["ids"] = index._files["vectors"], index._files["ids"]
        else:
            vpath, ipath = root / f"vectors-{gen}.f32", root / f"ids-{gen}.i64"
            vsha, isha = index._store.write(vpath, ipath)
            files["vectors"], files["ids"] = (
                F.file_entry(vpath, vsha),
                F.file_entry(ipath, isha),
            )
            new_store = VectorStore.open(vpath, ipath, index._store.n_live, index._store.d)
        if index._params.index_type == "ivfpq":
            if (
                same_dir
                and not index._index_dirty
                and _files_present(root, index._files, ("index",))
            ):
                files["index"] = index._files["index"]
            else:
                xpath = root / f"index-{gen}.faiss"
                F.atomic_write(xpath, lambda tmp: faiss.write_index(index._index, str(tmp)))
                files["index"] = F.file_entry(xpath)
        manifest = _manifest(index, gen, table_version, model_key, files)
        F.write_manifest(root, manifest)  # commit point
        with index._rw.write():
            if new_store is not None:
                new_store.dirty = False
                index._store = new_store  # refine vectors now come from the memory map
            index._files, index._files_dir, index._index_dirty = files, root, False
        F.collect_garbage(root, {e["name"] for e in files.values()})


def _manifest(
    index: VectorIndex, gen: int, table_version: int, model_key: str, files: dict[str, Any]
) -> dict[str, Any]:
    return {
        "format_version": F.FORMAT_VERSION,
        "generation": gen,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "table_version": int(table_version),
        "model_key": str(model_key),
        "n": index._store.n_live,
        "d": index._params.d,
        "params": index._params.to_dict(),
        "nprobe": index._nprobe,
        "refine": index._refine,
        "meta": index._meta,
        "files": files,
    }


def load_index(
    cls: type[VectorIndex],
    directory: str | os.PathLike[str],
    *,
    expect_table_version: int | None = None,
    expect_model_key: str | None = None,
    verify_checksums: bool = True,
    mmap: bool = True,
) -> VectorIndex:
    """Open a saved index as an instance of ``cls``. Raises IndexNotFoundError (no
    manifest), ModelMismatchError (other model), IndexCorruptError (stale table version,
    missing/truncated/corrupt files). ``mmap=True`` maps the IVF lists and refine vectors
    instead of reading them."""
    root = Path(directory)
    for attempt in range(3):
        manifest = F.read_manifest(root)
        try:
            return _load_manifest(
                cls, root, manifest, expect_table_version, expect_model_key, verify_checksums, mmap
            )
        except IndexCorruptError:
            # A concurrent save may have switched the manifest and collected our files.
            if attempt == 2 or F.read_manifest(root).get("generation") == manifest.get(
                "generation"
            ):
                raise
    raise AssertionError("unreachable")


def _load_manifest(
    cls: type[VectorIndex],
    root: Path,
    manifest: dict[str, Any],
    expect_table_version: int | None,
    expect_model_key: str | None,
    verify_checksums: bool,
    mmap: bool,
) -> VectorIndex:
    if expect_model_key is not None and manifest.get("model_key") != expect_model_key:
        raise ModelMismatchError(
            f"the index in {root} was built with model {manifest.get('model_key')!r} but "
            f"{expect_model_key!r} is in use; re-embed and rebuild with `mmsearch build-index`"
        )
    if expect_table_version is not None and manifest.get("table_version") != expect_table_version:
        raise IndexCorruptError(
            f"the index in {root} is for table version {manifest.get('table_version')} but "
            f"the table is at version {expect_table_version} (stale index); {F.REBUILD_HINT}"
        )
    try:
        params = IndexParams.from_dict(manifest["params"])
        n, d = int(manifest["n"]), int(manifest["d"])
        files = manifest["files"]
        nprobe, refine, meta = (
            int(manifest["nprobe"]),
            int(manifest["refine"]),
            dict(manifest["meta"]),
        )
        vec_entry, ids_entry = files["vectors"], files["ids"]
        index_entry = files["index"] if params.index_type == "ivfpq" else None
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexCorruptError(
            f"{root / F.MANIFEST_NAME} is incomplete ({exc!r}); {F.REBUILD_HINT}"
        ) from exc
    if vec_entry["size"] != n * d * 4 or ids_entry["size"] != n * ID_BYTES or params.d != d:
        raise IndexCorruptError(
            f"{root / F.MANIFEST_NAME} is inconsistent (sizes vs n={n}, d={d}); {F.REBUILD_HINT}"
        )
    vpath = F.verify_file(root, vec_entry, checksum=verify_checksums)
    ipath = F.verify_file(root, ids_entry, checksum=verify_checksums)
    _check_ids(ipath, n, full=verify_checksums)
    store = VectorStore.open(vpath, ipath, n, d)
    if index_entry is None:
        index: faiss.Index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        fill_index(index, store)
    else:
        xpath = F.verify_file(root, index_entry, checksum=verify_checksums)
        try:
            index = faiss.read_index(str(xpath), _MMAP_FLAG if mmap else 0)
        except RuntimeError as exc:
            raise IndexCorruptError(
                f"cannot read FAISS index {xpath}: {exc}; {F.REBUILD_HINT}"
            ) from exc
        if index.ntotal != n or index.d != d:
            raise IndexCorruptError(
                f"FAISS index {xpath} holds {index.ntotal} vectors of dimension {index.d}, "
                f"manifest says {n} x {d}; {F.REBUILD_HINT}"
            )
    out = cls(params=params, index=index, store=store, nprobe=nprobe, refine=refine, meta=meta)
    out._index_readonly_mmap = index_entry is not None and mmap
    out._index_dirty = False
    out._files = {k: dict(v) for k, v in files.items()}
    out._files_dir = root
    out._meta["gpu"] = False
    return out


def verify_files(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Full check of a saved index's files: size and SHA-256 of each, and id order.

    Reads every byte (seconds for millions of vectors), which is why opening an index
    does not do it; ``mmsearch check`` and the ANN build (right after writing) do.
    Returns the manifest; raises :class:`IndexCorruptError` naming the first bad file.
    """
    root = Path(directory)
    manifest = F.read_manifest(root)
    try:
        entries = dict(manifest["files"])
        n = int(manifest["n"])
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexCorruptError(
            f"{root / F.MANIFEST_NAME} is incomplete ({exc!r}); {F.REBUILD_HINT}"
        ) from exc
    for entry in entries.values():
        F.verify_file(root, entry, checksum=True)
    if "ids" in entries:
        _check_ids(root / entries["ids"]["name"], n, full=True)
    return manifest


def _check_ids(path: Path, n: int, *, full: bool) -> None:
    """Ids must be non-negative and strictly increasing. The full scan runs with the
    checksums (``mmsearch check``, after writes); an everyday open checks only the ends,
    which reads two pages of the memory-mapped file instead of all of it."""
    if n == 0:
        return
    ids = np.memmap(path, dtype=np.int64, mode="r", shape=(n,))
    ok = int(ids[0]) >= 0 and (n == 1 or int(ids[0]) < int(ids[-1]))
    if ok and full and n > 1:
        ok = bool(np.all(np.diff(ids) > 0))
    if not ok:
        raise IndexCorruptError(f"{path} is not sorted by id; {F.REBUILD_HINT}")


def _next_generation(root: Path) -> int:
    gen = 0
    try:
        gen = int(F.read_manifest(root).get("generation", 0))
    except Exception:  # noqa: BLE001 - a missing or broken manifest only affects numbering
        gen = 0
    for name in os.listdir(root):
        m = _GEN_RE.match(name)
        if m:
            gen = max(gen, int(m.group(1)))
    return gen + 1


def _files_present(root: Path, files: dict[str, dict[str, Any]], roles: tuple[str, ...]) -> bool:
    return all(r in files and (root / files[r]["name"]).exists() for r in roles)


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
