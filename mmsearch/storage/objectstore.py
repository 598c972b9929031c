"""Indexes on object storage: ``--index s3://bucket/prefix`` (any LanceDB URI).

Layout under the URI::

    db/                          the LanceDB items table (written by LanceDB itself)
    ann/objects/<sha256>         ANN data files, content-addressed (never overwritten)
    snapshot.json                the snapshot + each kind's ANN manifest; PUT last

Writers and readers work through a local directory (the cache, one per URI) holding a
``remote.json`` marker: :mod:`mmsearch.storage` then opens the table at ``<uri>/db``
with the storage options below, while the ANN files and ``snapshot.json`` are the
usual local files. ``publish`` uploads the ANN files a local snapshot names (only the
ones the store lacks: an incremental update uploads its new segment, tombstones and
FAISS file) and then the snapshot object, which is the commit point: a writer killed
before it leaves the previous snapshot, and its objects, in place. ``pull`` downloads
the objects of the published snapshot into the cache, keyed by their SHA-256 from the
manifests, so many query replicas serve one index built once.

S3 (and S3-compatible servers) are reached through boto3, every call bounded by the
timeouts and retries of :mod:`mmsearch.storage.s3`; the endpoint, ``AWS_ALLOW_HTTP``
and credentials come from the usual ``AWS_*`` variables. A failure to reach the store
is a :class:`~mmsearch.errors.StorageError` of one line naming the URI.

The snapshot is written with a condition: ``If-Match`` on the snapshot object the
writer started from (``If-None-Match: *`` when there was none), so a writer can never
publish over a snapshot it did not see; garbage collection runs after that and its
failure never undoes the publication.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mmsearch.errors import StorageError
from mmsearch.storage.publish import OBJECTS_DIR, SNAPSHOT_KEY, Published, publish_snapshot
from mmsearch.storage.s3 import (
    MISSING_CODES,
    StoreLimits,
    error_code,
    is_store_failure,
    make_client,
    store_error,
    store_errors,
)

REMOTE_MARKER = "remote.json"
__all__ = [
    "OBJECTS_DIR", "REMOTE_MARKER", "SNAPSHOT_KEY", "Published", "Pulled", "RemoteIndex",
    "store_errors",
]  # fmt: skip
_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):/+(.*)$")


def normalise_uri(value: str | os.PathLike[str]) -> str | None:
    """``scheme://rest`` for an object-store URI (also when a ``Path`` collapsed its
    ``//``), or None for a local path (``file://`` counts as local)."""
    m = _SCHEME_RE.match(os.fspath(value))
    if m is None or m.group(1).lower() == "file":
        return None
    return f"{m.group(1).lower()}://{m.group(2).rstrip('/')}"


def storage_options_from_env() -> dict[str, str]:
    """LanceDB ``storage_options`` from the ``AWS_*`` environment variables, with the
    timeouts and retries of :class:`~mmsearch.storage.s3.StoreLimits`."""
    names = {
        "aws_endpoint": ("AWS_ENDPOINT_URL", "AWS_ENDPOINT"),
        "aws_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
        "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
        "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
        "aws_session_token": ("AWS_SESSION_TOKEN",),
        "allow_http": ("AWS_ALLOW_HTTP",),
    }
    out: dict[str, str] = StoreLimits.from_env().lance_options()
    for key, env_names in names.items():
        for env in env_names:
            if os.environ.get(env):
                out[key] = os.environ[env]
                break
    return out


def cache_root() -> Path:
    """Where remote indexes are cached: ``$MMSEARCH_CACHE`` or ``~/.cache/mmsearch``."""
    return Path(os.environ.get("MMSEARCH_CACHE") or Path.home() / ".cache" / "mmsearch")


def table_location(index_dir: Path) -> tuple[str, dict[str, str]] | None:
    """(table URI, storage options) when ``index_dir`` is the cache of a remote index."""
    try:
        data = json.loads((index_dir / REMOTE_MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(
            f"cannot read {index_dir / REMOTE_MARKER}: {exc}; delete that cache folder"
        ) from exc
    return f"{data['uri']}/db", storage_options_from_env()


def remote_uri_of(index_dir: str | os.PathLike[str]) -> str | None:
    """The object-store URI whose local cache ``index_dir`` is, or None (a local index)."""
    try:
        return str(json.loads((Path(index_dir) / REMOTE_MARKER).read_text())["uri"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remote_index(index_dir: str | os.PathLike[str]) -> RemoteIndex | None:
    """A :class:`RemoteIndex` for an object-store URI, None for a local directory."""
    uri = normalise_uri(index_dir)
    return None if uri is None else RemoteIndex(uri)


def local_view(index: str | os.PathLike[str]) -> Path:
    """The directory to read ``index`` from: a local index itself, or for an object-store
    URI its reader cache with the published snapshot pulled into it."""
    remote = remote_index(index)
    return Path(index) if remote is None else remote.pull()


@dataclass(frozen=True)
class Pulled:
    """What :meth:`RemoteIndex.pull_published` found: the local directory, and the etag and
    generation of the published snapshot (None: nothing published yet)."""

    local: Path
    etag: str | None
    generation: int | None


@dataclass(frozen=True)
class RemoteIndex:
    """One index under an object-store URI, with its local cache directory."""

    uri: str

    @property
    def bucket(self) -> str:
        return self.uri.split("://", 1)[1].split("/", 1)[0]

    @property
    def prefix(self) -> str:
        rest = self.uri.split("://", 1)[1]
        return rest.split("/", 1)[1] if "/" in rest else ""

    def local_dir(self, role: str = "reader") -> Path:
        """This URI's cache directory for ``role`` (``reader`` or ``writer``: a writer's
        unpublished work never shares a folder with what readers prune), created with
        its marker on first use."""
        path = cache_root() / "indexes" / hashlib.sha256(self.uri.encode()).hexdigest()[:16] / role
        if not (path / REMOTE_MARKER).exists():
            path.mkdir(parents=True, exist_ok=True)
            tmp = path / f".{REMOTE_MARKER}.tmp-{uuid.uuid4().hex}"
            tmp.write_text(json.dumps({"uri": self.uri}))
            os.replace(tmp, path / REMOTE_MARKER)
        return path

    @cached_property
    def _client(self) -> Any:
        if not self.uri.startswith("s3://"):
            raise StorageError(
                f"{self.uri}: ANN files can be published to s3:// URIs (S3 or S3-compatible); "
                "use an s3:// URI or a local --index directory"
            )
        return make_client()

    @property
    def client(self) -> Any:
        """The boto3 S3 client (bounded timeouts and retries; see :mod:`mmsearch.storage.s3`)."""
        return self._client

    def key(self, name: str) -> str:
        """The object key of ``name`` under this index's prefix."""
        return f"{self.prefix}/{name}" if self.prefix else name

    # ---- reading ----------------------------------------------------------------

    def list_names(self, folder: str) -> list[str]:
        """The names of the objects directly under ``folder`` (relative to the index URI)."""
        prefix = self.key(folder.strip("/")) + "/"
        with store_errors(self.uri, "list"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            )
            return [o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])]

    def read_published_etag(self) -> tuple[dict[str, Any] | None, str | None]:
        """The published snapshot object and its etag, or (None, None)."""
        try:
            got = self._client.get_object(Bucket=self.bucket, Key=self.key(SNAPSHOT_KEY))
            body = got["Body"].read()
        except Exception as exc:
            if error_code(exc) in MISSING_CODES:
                return None, None
            if is_store_failure(exc):
                raise store_error(self.uri, exc, "read") from exc
            raise
        try:
            return dict(json.loads(body)), str(got["ETag"])
        except ValueError as exc:
            raise StorageError(
                f"{self.uri}/{SNAPSHOT_KEY} is damaged ({exc}); re-run mmsearch index"
            ) from exc

    def pull(self, role: str = "reader") -> Path:
        """Bring the published snapshot into the cache; returns the local directory.

        Objects already cached (same SHA-256) are not downloaded again; the local
        ``snapshot.json`` is replaced last. A writer keeps a local snapshot of a later
        generation (work of a run killed before it published; the next run publishes it).
        """
        return self.pull_published(role).local

    def pull_published(self, role: str = "reader") -> Pulled:
        """:meth:`pull`, and which published snapshot it saw (its etag and generation)."""
        with store_errors(self.uri, "read"):
            published, etag = self.read_published_etag()
            local = self._pull(role, published)
        generation = int(published["snapshot"].get("generation", 0)) if published else None
        return Pulled(local, etag, generation)

    def _pull(self, role: str, published: dict[str, Any] | None) -> Path:
        from mmsearch.storage.snapshot import Snapshot, read_snapshot, write_snapshot

        local = self.local_dir(role)
        only_if_newer = role == "writer"
        if published is None:
            return local
        current = read_snapshot(local)
        remote = Snapshot(**published["snapshot"])
        if current is not None and (
            (only_if_newer and current.generation >= remote.generation) or current == remote
        ):
            return local
        objects = cache_root() / "objects"
        objects.mkdir(parents=True, exist_ok=True)
        for kind, rel in remote.ann_dirs.items():
            manifest = published["manifests"][kind]
            target = local / rel
            target.mkdir(parents=True, exist_ok=True)
            for entry in manifest["files"].values():
                cached = objects / entry["sha256"]
                if not cached.exists():
                    self._download(f"{OBJECTS_DIR}/{entry['sha256']}", cached, entry["sha256"])
                _link(cached, target / entry["name"])
            _atomic_text(target / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
        keep = set(remote.ann_dirs.values())
        rows = published.get("rows")
        if rows:  # what queries show of each hit: vector queries need no table read
            cached = objects / rows["sha256"]
            if not cached.exists():
                self._download(f"{OBJECTS_DIR}/{rows['sha256']}", cached, rows["sha256"])
            _link(cached, local / rows["path"])
            keep.add(rows["path"])
        write_snapshot(local, remote)  # last: the cached files it names are complete
        _drop_unlisted(local, keep)
        return local

    def _download(self, name: str, dest: Path, sha256: str) -> None:
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex}")
        try:
            self._client.download_file(self.bucket, self.key(name), str(tmp))
            digest = _sha256(tmp)
            if digest != sha256:
                raise StorageError(
                    f"{self.uri}/{name} has SHA-256 {digest}, expected {sha256}; re-run mmsearch index"
                )
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    # ---- writing ----------------------------------------------------------------

    def publish(
        self, *, expect_etag: str | None = None, check: Callable[[], None] | None = None
    ) -> Published | None:
        """Publishes the writer cache's snapshot: see :func:`mmsearch.storage.publish.publish_snapshot`."""
        return publish_snapshot(self, expect_etag=expect_etag, check=check)


def _sha256(path: Path) -> str:
    from mmsearch.ann.files import sha256_file

    return sha256_file(path)


def _link(src: Path, dst: Path) -> None:
    from mmsearch.ann.files import link_or_copy

    link_or_copy(src, dst)


def _atomic_text(path: Path, text: str) -> None:
    from mmsearch.ann.files import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def _drop_unlisted(local: Path, keep: set[str]) -> None:
    """Remove cached ANN directories (and rows files) the current snapshot no longer names."""
    ann = local / "ann"
    if ann.is_dir():
        for child in ann.iterdir():
            if f"ann/{child.name}" not in keep:
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


def read_object_bytes(uri: str, *, max_bytes: int) -> bytes:
    """The bytes of one object, ``s3://bucket/key`` (an image of a record or a feed), at
    most ``max_bytes`` of them; the endpoint and credentials come from ``AWS_*`` as for
    indexes. Raises :class:`StorageError` for a missing, unreadable or oversized object."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise StorageError(f"{uri}: not an s3://bucket/key URI")
    remote = RemoteIndex(uri.rsplit("/", 1)[0])
    bucket, key = uri[5:].split("/", 1)
    try:
        obj = remote._client.get_object(Bucket=bucket, Key=key)
        size = int(obj.get("ContentLength") or 0)
        if size > max_bytes:
            raise StorageError(f"{uri} is {size} bytes, over the limit of {max_bytes}")
        data = obj["Body"].read(max_bytes + 1)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise StorageError(f"cannot read {uri}: {code}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc
    if len(data) > max_bytes:
        raise StorageError(f"{uri} is over the limit of {max_bytes} bytes")
    return bytes(data)
