"""Publishing a writer's snapshot to an object-store index: the commit point readers see.

Layout under the index URI (see :mod:`mmsearch.storage.objectstore`)::

    ann/objects/<sha256>     ANN files and rows files, content-addressed (never overwritten)
    snapshot.json            the snapshot + each kind's ANN manifest + the rows file; PUT last

:func:`publish_snapshot` uploads the files the store lacks, then writes the snapshot
object with a condition (``If-Match`` on the snapshot the writer started from, or
``If-None-Match: *`` when there was none), so a writer can never publish over a
snapshot it did not see. Garbage collection runs after that, and its failure is a
warning: the new snapshot is live whatever happens next.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mmsearch.errors import StorageError
from mmsearch.storage.s3 import MISSING_CODES, PRECONDITION_CODES, error_code, store_errors

SNAPSHOT_KEY = "snapshot.json"
OBJECTS_DIR = "ann/objects"


class RemoteIndex(Protocol):
    """What publishing needs of :class:`mmsearch.storage.objectstore.RemoteIndex`."""

    @property
    def uri(self) -> str: ...

    @property
    def bucket(self) -> str: ...

    @property
    def client(self) -> Any: ...

    def key(self, name: str) -> str: ...

    def local_dir(self, role: str = "reader") -> Path: ...

    def read_published_etag(self) -> tuple[dict[str, Any] | None, str | None]: ...


@dataclass
class Published:
    """What :func:`publish_snapshot` did: the snapshot object and its etag, and what
    went wrong after it was live (garbage collection), which never fails a run."""

    data: dict[str, Any]
    etag: str | None
    warnings: list[str] = field(default_factory=list)


def publish_snapshot(
    remote: RemoteIndex, *, expect_etag: str | None = None, check: Callable[[], None] | None = None
) -> Published | None:
    """Upload the writer cache's ANN files (and rows file) the store lacks, then the
    snapshot object, then delete objects neither it nor the previous snapshot names.
    Returns what was published, or None when the cache has no snapshot.

    The snapshot object is written only over the one whose etag is ``expect_etag``
    (None: only where none exists): when another writer published meanwhile, this
    raises :class:`StorageError` and leaves that writer's snapshot in place. ``check``
    runs just before that write (the writer lease's check).
    """
    from mmsearch.storage.snapshot import read_snapshot

    local = remote.local_dir("writer")
    snapshot = read_snapshot(local)
    if snapshot is None:
        return None
    with store_errors(remote.uri, "publish to"):
        manifests: dict[str, Any] = {}
        for kind, rel in snapshot.ann_dirs.items():
            manifest = json.loads((local / rel / "manifest.json").read_text())
            for entry in manifest["files"].values():
                upload_once(remote, local / rel / entry["name"], entry)
            manifests[kind] = manifest
        published = {"snapshot": asdict(snapshot), "manifests": manifests}
        rows = rows_entry(local, snapshot.generation)
        if rows is not None:
            upload_once(remote, local / rows["path"], rows)
            published["rows"] = rows
        previous, etag = remote.read_published_etag()
        if previous == published:  # nothing new (an unchanged re-run): keep the history as is
            return Published(published, etag)
        if etag != expect_etag:
            raise _overtaken(remote)
        if check is not None:
            check()
        new_etag = put_snapshot(remote, published, expect_etag)
    out = Published(published, new_etag)
    try:  # the new snapshot is live: nothing from here on fails the run
        with store_errors(remote.uri, "clean up old ANN files of"):
            collect_garbage(remote, published, previous)
    except StorageError as exc:
        out.warnings.append(
            f"{exc}; the new snapshot is published, old files stay until the next run"
        )
    return out


def rows_entry(local: Path, generation: int) -> dict[str, Any] | None:
    """The snapshot's rows file (see :mod:`mmsearch.storage.rowsfile`), to publish too."""
    from mmsearch.ann.files import sha256_file
    from mmsearch.storage.snapshot import rows_file_name

    rel = rows_file_name(generation)
    path = local / rel
    if not path.is_file():
        return None
    return {"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)}


def _overtaken(remote: RemoteIndex) -> StorageError:
    return StorageError(
        f"another writer published a snapshot of {remote.uri} after this run started; "
        "this run's rows are committed: re-run to publish them on top of it"
    )


def put_snapshot(
    remote: RemoteIndex, published: dict[str, Any], expect_etag: str | None
) -> str | None:
    """The conditional PUT of the snapshot object; its new etag."""
    body = json.dumps(published).encode()
    cond = {"IfMatch": expect_etag} if expect_etag is not None else {"IfNoneMatch": "*"}
    try:
        out = remote.client.put_object(
            Bucket=remote.bucket, Key=remote.key(SNAPSHOT_KEY), Body=body, **cond
        )
        return str(out["ETag"])
    except Exception as exc:
        code = error_code(exc)
        if code not in PRECONDITION_CODES and code not in MISSING_CODES:
            raise
        now, etag = remote.read_published_etag()  # a retried PUT may have landed the first time
        if now == published:
            return etag
        raise _overtaken(remote) from exc


def upload_once(remote: RemoteIndex, path: Path, entry: dict[str, Any]) -> None:
    """Uploads ``path`` as ``ann/objects/<sha256>`` unless the store has it already."""
    from mmsearch.ann.files import sha256_file

    if not entry.get("sha256"):
        entry["sha256"] = sha256_file(path)
    key = remote.key(f"{OBJECTS_DIR}/{entry['sha256']}")
    try:
        remote.client.head_object(Bucket=remote.bucket, Key=key)
        return  # content-addressed: already there
    except Exception as exc:
        if error_code(exc) not in MISSING_CODES:
            raise
    remote.client.upload_file(str(path), remote.bucket, key)


def collect_garbage(
    remote: RemoteIndex, current: dict[str, Any], previous: dict[str, Any] | None
) -> None:
    """Deletes the objects that neither ``current`` nor ``previous`` names."""
    keep = {
        e["sha256"]
        for snap in (current, previous)
        if snap
        for m in snap.get("manifests", {}).values()
        for e in m["files"].values()
    }
    keep |= {snap["rows"]["sha256"] for snap in (current, previous) if snap and snap.get("rows")}
    paginator = remote.client.get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=remote.bucket, Prefix=remote.key(OBJECTS_DIR) + "/")
    stale = [
        obj["Key"]
        for page in pages
        for obj in page.get("Contents", [])
        if obj["Key"].rsplit("/", 1)[-1] not in keep
    ]
    for start in range(0, len(stale), 1000):
        batch = [{"Key": k} for k in stale[start : start + 1000]]
        remote.client.delete_objects(Bucket=remote.bucket, Delete={"Objects": batch, "Quiet": True})
