"""Saving and loading a ``VectorIndex``: generation-numbered files plus a manifest.

``save`` writes new-generation data files — the rows added since the last save as one
new refine segment, the tombstones, the FAISS index if it changed — reusing (or
hard-linking from the directory the index came from) the existing segments, then the
manifest as the commit point, then deletes files no manifest names. ``load`` checks the manifest against the expected model and
table version and verifies every file before opening it (memory-mapped by default).
Both work on an :class:`~mmsearch.ann.state.IndexState`; ``VectorIndex.save`` /
``VectorIndex.load`` delegate here and hold the locks.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from mmsearch.ann import files as F
from mmsearch.ann.checks import check_rows
from mmsearch.ann.params import ID_BYTES, IndexParams
from mmsearch.ann.segment import SUFFIX, Segment, check_dtype, write_segment
from mmsearch.ann.state import FileEntries, IndexState
from mmsearch.ann.store import VectorStore
from mmsearch.ann.structure import fill_index
from mmsearch.errors import BadQueryError, IndexCorruptError, ModelMismatchError

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
_MMAP_FLAG = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)
_GEN_RE = re.compile(r"^(?:\.)?(?:index|vectors|ids|tombstones)-(\d+)\.")
MAX_SEGMENTS = 16
COMPACT_DEAD_FRACTION = 0.25


def save_index(
    state: IndexState,
    directory: str | os.PathLike[str],
    *,
    table_version: int,
    model_key: str,
    adopt: Callable[[VectorStore, FileEntries, Path], None],
) -> None:
    """Write ``state`` to ``directory`` crash-safely (new generation files, then the
    manifest, then files no manifest names are deleted).

    Existing refine segments are reused in place, or hard-linked from the directory the
    index came from; only rows added since (one new segment) and the tombstones are
    written, unless ``should_compact`` asks for one rewritten segment. Right after the
    manifest is committed, and before old files are collected, ``adopt(store, files,
    root)`` receives the refine store reopened over the saved segments and the files
    now on record: the caller puts them in ``state`` (under its own lock). The caller
    also keeps ``state`` from changing during the save.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    with F.writer_lock(root):
        store = state.store
        compact = should_compact(store)
        files: dict[str, dict[str, Any]] = {}
        counts: list[int] = []
        if not compact:
            for i, seg in enumerate(store.segments):
                for role in segment_roles(i):
                    entry = state.files[role]
                    assert state.files_dir is not None  # sealed segments come from files
                    F.link_or_copy(
                        state.files_dir / entry["name"], root / entry["name"], sync=False
                    )
                    files[role] = dict(entry)
                counts.append(len(seg))
        gen = _next_generation(root)
        suffix = SUFFIX[store.dtype]
        if compact or store.delta_rows:
            rows = store.iter_live() if compact else store.iter_delta()
            vpath, ipath = root / f"vectors-{gen}{suffix}", root / f"ids-{gen}.i64"
            n_new, vsha, isha = write_segment(vpath, ipath, rows, store.dtype)
            vrole, irole = segment_roles(len(counts))
            files[vrole], files[irole] = F.file_entry(vpath, vsha), F.file_entry(ipath, isha)
            counts.append(n_new)
        dead = np.empty(0, np.int64) if compact else store.tombstones()
        if len(dead):
            old = state.files.get("tombstones")
            if not store.dirty and old is not None and (root / old["name"]).exists():
                files["tombstones"] = dict(old)
            else:
                tpath = root / f"tombstones-{gen}.i64"
                data = np.ascontiguousarray(dead, np.int64).tobytes()
                F.atomic_write_bytes(tpath, data)
                files["tombstones"] = F.file_entry(tpath)
        if state.params.index_type == "ivfpq":
            same_dir = state.files_dir is not None and _same_dir(state.files_dir, root)
            if same_dir and not state.index_dirty and _files_present(root, state.files, ("index",)):
                files["index"] = state.files["index"]
            elif (  # unchanged (pending rows wait beside it): linked from the previous directory
                not state.index_dirty
                and state.files_dir is not None
                and _files_present(state.files_dir, state.files, ("index",))
            ):
                entry = state.files["index"]
                F.link_or_copy(state.files_dir / entry["name"], root / entry["name"], sync=False)
                files["index"] = dict(entry)
            else:
                xpath = root / f"index-{gen}.faiss"
                F.atomic_write(xpath, lambda tmp: faiss.write_index(state.index, str(tmp)))
                files["index"] = F.file_entry(xpath)
        manifest = _manifest(state, gen, table_version, model_key, files, counts)
        F.fsync_dir(root)  # the links above, once, before the manifest names them
        F.write_manifest(root, manifest)  # commit point
        adopt(open_store(root, manifest, checksum=False), files, root)
        F.collect_garbage(root, {e["name"] for e in files.values()})


def should_compact(store: VectorStore) -> bool:
    """Rewrite all live rows as one segment when the next save would leave more than
    ``MAX_SEGMENTS`` segments, or more than ``COMPACT_DEAD_FRACTION`` of the stored
    rows are dead (a full copy, amortised over many incremental saves)."""
    stored = sum(len(s) for s in store.segments)
    too_many = len(store.segments) + (1 if store.delta_rows else 0) > MAX_SEGMENTS
    return too_many or (stored > 0 and store.n_dead > COMPACT_DEAD_FRACTION * stored)


def segment_roles(i: int) -> tuple[str, str]:
    """Manifest roles of segment ``i``'s vectors and ids files."""
    return ("vectors", "ids") if i == 0 else (f"vectors.{i}", f"ids.{i}")


def open_store(root: Path, manifest: dict[str, Any], *, checksum: bool) -> VectorStore:
    """The refine store a manifest describes: its segments memory-mapped, tombstones applied."""
    try:
        d, files = int(manifest["d"]), manifest["files"]
        dtype = str(manifest.get("refine_dtype", "float32"))
        counts = [int(c) for c in manifest.get("segments", [manifest["n"]])]
        itemsize = check_dtype(dtype).itemsize
        entries = [tuple(files[r] for r in segment_roles(i)) for i in range(len(counts))]
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexCorruptError(
            f"{root / F.MANIFEST_NAME} is incomplete ({exc!r}); {F.REBUILD_HINT}"
        ) from exc
    segments = []
    for n, (vec_entry, ids_entry) in zip(counts, entries, strict=True):
        if vec_entry["size"] != n * d * itemsize or ids_entry["size"] != n * ID_BYTES:
            raise IndexCorruptError(
                f"{root / F.MANIFEST_NAME} is inconsistent (sizes vs n={n}, d={d}); {F.REBUILD_HINT}"
            )
        vpath = F.verify_file(root, vec_entry, checksum=checksum)
        ipath = F.verify_file(root, ids_entry, checksum=checksum)
        try:
            segments.append(Segment.open(vpath, ipath, n, d, dtype))
        except ValueError as exc:
            raise IndexCorruptError(f"{ipath} holds repeated ids; {F.REBUILD_HINT}") from exc
    store = VectorStore(segments, d, dtype=dtype)
    if "tombstones" in files:
        tpath = F.verify_file(root, files["tombstones"], checksum=checksum)
        store.apply_tombstones(np.fromfile(tpath, dtype=np.int64))
    if store.n_live != int(manifest["n"]):
        raise IndexCorruptError(
            f"{root / F.MANIFEST_NAME} records {manifest['n']} rows but its segments hold "
            f"{store.n_live} live rows; {F.REBUILD_HINT}"
        )
    return store


def streamed_store(
    chunks: Iterable[tuple[F32, I64]], root: Path, dtype: str
) -> tuple[VectorStore, FileEntries, Path]:
    """Write chunks as the first segment of a new index directory; returns the store
    over it (memory-mapped), the segment's manifest entries and the directory."""
    root.mkdir(parents=True, exist_ok=True)
    d_seen: list[int] = []

    def checked() -> Iterator[tuple[F32, I64]]:
        for vecs, ids in chunks:
            vecs, ids = check_rows(vecs, ids, d=d_seen[0] if d_seen else None, allow_empty=True)
            if not d_seen:
                d_seen.append(vecs.shape[1])
            yield vecs, ids

    with F.writer_lock(root):
        gen = _next_generation(root)
        vpath, ipath = root / f"vectors-{gen}{SUFFIX[dtype]}", root / f"ids-{gen}.i64"
        n, vsha, isha = write_segment(vpath, ipath, checked(), dtype)
    if not d_seen:
        raise BadQueryError("cannot build an index from no rows")
    d = d_seen[0]
    try:
        segment = Segment.open(vpath, ipath, n, d, dtype)
    except ValueError as exc:
        raise BadQueryError("ids passed to build must be unique") from exc
    files = dict(
        zip(segment_roles(0), (F.file_entry(vpath, vsha), F.file_entry(ipath, isha)), strict=True)
    )
    return VectorStore([segment], d, dtype=dtype), files, root


def _manifest(
    state: IndexState,
    gen: int,
    table_version: int,
    model_key: str,
    files: dict[str, Any],
    counts: list[int],
) -> dict[str, Any]:
    return {
        "format_version": F.FORMAT_VERSION,
        "generation": gen,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "table_version": int(table_version),
        "model_key": str(model_key),
        "n": state.store.n_live,
        "d": state.params.d,
        "refine_dtype": state.store.dtype,
        "segments": counts,
        "params": state.params.to_dict(),
        "nprobe": state.nprobe,
        "refine": state.refine,
        "meta": state.meta,
        "files": files,
    }


def load_index(
    directory: str | os.PathLike[str],
    *,
    expect_table_version: int | None = None,
    expect_model_key: str | None = None,
    verify_checksums: bool = True,
    mmap: bool = True,
) -> IndexState:
    """Read a saved index's state. Raises IndexNotFoundError (no
    manifest), ModelMismatchError (other model), IndexCorruptError (stale table version,
    missing/truncated/corrupt files). ``mmap=True`` maps the IVF lists and refine vectors
    instead of reading them."""
    root = Path(directory)
    for attempt in range(3):
        manifest = F.read_manifest(root)
        try:
            return _load_manifest(
                root, manifest, expect_table_version, expect_model_key, verify_checksums, mmap
            )
        except IndexCorruptError:
            # A concurrent save may have switched the manifest and collected our files.
            if attempt == 2 or F.read_manifest(root).get("generation") == manifest.get(
                "generation"
            ):
                raise
    raise AssertionError("unreachable")


def _load_manifest(
    root: Path,
    manifest: dict[str, Any],
    expect_table_version: int | None,
    expect_model_key: str | None,
    verify_checksums: bool,
    mmap: bool,
) -> IndexState:
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
        index_entry = files["index"] if params.index_type == "ivfpq" else None
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexCorruptError(
            f"{root / F.MANIFEST_NAME} is incomplete ({exc!r}); {F.REBUILD_HINT}"
        ) from exc
    if params.d != d:
        raise IndexCorruptError(
            f"{root / F.MANIFEST_NAME} is inconsistent (d={d}); {F.REBUILD_HINT}"
        )
    store = open_store(root, manifest, checksum=verify_checksums)
    if verify_checksums and n > 1 and not bool(np.all(np.diff(store.live_ids()) > 0)):
        raise IndexCorruptError(f"{root} holds an id twice across segments; {F.REBUILD_HINT}")
    if index_entry is None:
        index: faiss.Index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        fill_index(index, store)
        meta.pop("pending", None)  # filled from the store: it holds every live row
        meta.pop("lazily_removed", None)
    else:
        xpath = F.verify_file(root, index_entry, checksum=verify_checksums)
        try:
            index = faiss.read_index(str(xpath), _MMAP_FLAG if mmap else 0)
        except RuntimeError as exc:
            raise IndexCorruptError(
                f"cannot read FAISS index {xpath}: {exc}; {F.REBUILD_HINT}"
            ) from exc
        # rows waiting beside the structure (mmsearch.ann.pending) are not in it yet
        in_structure = n - len(meta.get("pending", ())) + len(meta.get("lazily_removed", ()))
        if index.ntotal != in_structure or index.d != d:
            raise IndexCorruptError(
                f"FAISS index {xpath} holds {index.ntotal} vectors of dimension {index.d}, "
                f"manifest says {in_structure} x {d}; {F.REBUILD_HINT}"
            )
    meta["gpu"] = False
    return IndexState(
        params=params,
        index=index,
        store=store,
        nprobe=nprobe,
        refine=refine,
        meta=meta,
        files={k: dict(v) for k, v in files.items()},
        files_dir=root,
        index_dirty=False,
        index_readonly_mmap=index_entry is not None and mmap,
    )


def verify_files(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Full check of a saved index's files: size and SHA-256 of each, then the refine
    segments opened (sizes against the manifest, no repeated ids, live row count).

    Reads every byte (seconds for millions of vectors), which is why opening an index
    does not do it; ``mmsearch check`` and the ANN build (right after writing) do.
    Returns the manifest; raises :class:`IndexCorruptError` naming the first bad file.
    """
    root = Path(directory)
    manifest = F.read_manifest(root)
    try:
        entries = list(dict(manifest["files"]).values())
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexCorruptError(
            f"{root / F.MANIFEST_NAME} is incomplete ({exc!r}); {F.REBUILD_HINT}"
        ) from exc
    for entry in entries:
        F.verify_file(root, entry, checksum=True)
    open_store(root, manifest, checksum=False)  # just hashed
    return manifest


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
