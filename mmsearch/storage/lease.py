"""The writer lease of an object-store index: one writer per URI, on every machine.

A local ``flock`` is invisible to another machine, so writers of ``s3://bucket/prefix``
agree through one object, ``<prefix>/writer-lease.json``, written only with the
store's conditional writes:

- **take**: ``PUT If-None-Match: *`` when there is no lease object; ``PUT If-Match:
  <etag>`` over one that was released or has expired. Exactly one of two racing
  writers succeeds; the other sees ``412 Precondition Failed`` and reads the winner.
- **renew**: a heartbeat thread rewrites it every ``ttl/6`` seconds with ``If-Match``
  on the etag it last wrote. A failed condition means another writer took it over.
- **expire**: a lease not renewed for ``ttl`` seconds is dead (its holder was killed
  or cut off). Its age is read on the store's own clock (the ``Date`` of the answer
  minus the object's ``Last-Modified``), so the machines' clocks need not agree.
- **release**: ``PUT If-Match`` of a released lease when the writer finishes.
- **left behind**: a lease of this host and cache found by a writer that holds that
  cache's writer lock (the session takes it first) belongs to a run that died: the
  re-run on the same machine takes it over at once.

The holder stops writing before anyone may take over: :meth:`WriterLease.check`
goes ahead only within ``ttl/2`` seconds of the last renewal the store confirmed (half
a lease before it can expire for the others); past that it renews at once, under the
same condition, and stops when the store says another writer holds the lease or does
not answer. The writer session runs
it before every table commit (:mod:`mmsearch.storage.fence`) and before publishing;
the snapshot itself is published with ``If-Match`` too, so a writer that lost its
lease can never replace another's snapshot.

The lease length is ``MMSEARCH_LEASE_TTL_S`` (default 60 s): the longest a dead
writer blocks the next one.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from mmsearch.errors import StorageError
from mmsearch.storage.s3 import MISSING_CODES, PRECONDITION_CODES, error_code, store_error

LEASE_KEY = "writer-lease.json"
DEFAULT_TTL_S = 60.0
#: Slack for the store's one-second ``Last-Modified``/``Date`` resolution.
CLOCK_SLACK_S = 1.0


def lease_ttl_from_env() -> float:
    """``MMSEARCH_LEASE_TTL_S`` (seconds, at least 1), else :data:`DEFAULT_TTL_S`."""
    raw = os.environ.get("MMSEARCH_LEASE_TTL_S", "").strip()
    if not raw:
        return DEFAULT_TTL_S
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"MMSEARCH_LEASE_TTL_S={raw!r} is not a number of seconds") from None
    if value < 1:
        raise StorageError(f"MMSEARCH_LEASE_TTL_S={raw!r} must be at least 1 second")
    return value


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease: enough for a person to find the process."""

    host: str
    pid: int
    cache: str
    started: str  # ISO 8601, UTC

    @classmethod
    def here(cls, cache: str) -> LeaseHolder:
        started = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        return cls(socket.gethostname(), os.getpid(), cache, started)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (cache {self.cache}), writing since {self.started}"


@dataclass(frozen=True)
class LeaseState:
    """The lease object as read from the store."""

    etag: str
    token: str
    holder: LeaseHolder | None
    ttl_s: float
    beat: int
    released: bool
    age_s: float | None  # by the store's clock; None when it did not say

    def expired(self, seen_for_s: float) -> bool:
        """Released, or not renewed for longer than its ttl (by the store's clock, or by
        how long this reader has seen the same etag)."""
        limit = self.ttl_s + CLOCK_SLACK_S
        return (
            self.released or seen_for_s > limit or (self.age_s is not None and self.age_s > limit)
        )


class WriterLease:
    """This process's lease on one object-store index (see the module docstring).

    >>> lease = WriterLease(remote, cache="/home/me/.cache/mmsearch")  # doctest: +SKIP
    >>> lease.acquire(wait_s=30)  # doctest: +SKIP
    >>> lease.check()  # before each write  # doctest: +SKIP
    >>> lease.release()  # doctest: +SKIP
    """

    def __init__(
        self,
        remote: Any,
        *,
        cache: str,
        ttl_s: float | None = None,
        poll_s: float | None = None,
        cache_locked: bool = False,
    ) -> None:
        """``cache_locked``: the caller holds the writer lock of ``cache`` on this host, so a
        lease held by this host and cache belongs to a run that died (its next run need not
        wait for the lease to expire)."""
        self.remote = remote
        self.cache_locked = cache_locked
        self.uri: str = remote.uri
        self.ttl_s = ttl_s if ttl_s is not None else lease_ttl_from_env()
        self.poll_s = poll_s if poll_s is not None else min(1.0, self.ttl_s / 10)
        self.holder = LeaseHolder.here(cache)
        self.token = uuid.uuid4().hex
        self.took_over: LeaseHolder | None = None  # the dead or released holder replaced
        self._beat = 0
        self._etag: str | None = None
        self._valid_until = 0.0
        self._lost: str | None = None
        self._renew_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._renewing = threading.Lock()  # held across one conditional rewrite of the lease

    # ---- the store ------------------------------------------------------------------

    @property
    def _key(self) -> str:
        return self.remote.key(LEASE_KEY)

    def read(self) -> LeaseState | None:
        """The lease object now, or None when there is none."""
        try:
            got = self.remote.client.get_object(Bucket=self.remote.bucket, Key=self._key)
            body = got["Body"].read()
        except Exception as exc:
            if error_code(exc) in MISSING_CODES:
                return None
            raise store_error(self.uri, exc, "read the writer lease of") from exc
        try:
            data = json.loads(body)
            holder = LeaseHolder(**data["holder"]) if data.get("holder") else None
            ttl_s, beat = float(data["ttl_s"]), int(data.get("beat", 0))
            token, released = str(data["token"]), bool(data.get("released", False))
        except (ValueError, KeyError, TypeError):  # not ours, or damaged: treat as released
            holder, ttl_s, beat, token, released = None, 0.0, 0, "", True
        return LeaseState(got["ETag"], token, holder, ttl_s, beat, released, _store_age(got))

    def _body(self, *, released: bool = False) -> bytes:
        data = {
            "holder": asdict(self.holder),
            "token": self.token,
            "ttl_s": self.ttl_s,
            "beat": self._beat,
            "released": released,
        }
        return json.dumps(data, sort_keys=True).encode()

    def _put(self, *, if_match: str | None) -> str | None:
        """One conditional write of this lease; its etag, or None when the condition failed."""
        cond = {"IfMatch": if_match} if if_match is not None else {"IfNoneMatch": "*"}
        try:
            out = self.remote.client.put_object(
                Bucket=self.remote.bucket, Key=self._key, Body=self._body(), **cond
            )
            return str(out["ETag"])
        except Exception as exc:
            code = error_code(exc)
            if code in PRECONDITION_CODES or code in MISSING_CODES:
                mine = self.read()  # a retried write may have landed the first time
                if mine is not None and mine.token == self.token and mine.beat == self._beat:
                    return mine.etag
                return None
            raise store_error(self.uri, exc, "write the writer lease of") from exc

    # ---- taking, checking, renewing, releasing --------------------------------------

    def acquire(self, wait_s: float = 0.0) -> None:
        """Takes the lease, waiting up to ``wait_s`` seconds for a live holder to finish;
        raises :class:`StorageError` naming the URI and the holder when it does not."""
        deadline = time.monotonic() + max(0.0, wait_s)
        seen: dict[str, float] = {}  # etag -> when this process first saw it
        while True:
            state = self.read()
            sent = time.monotonic()
            if state is None:
                etag = self._put(if_match=None)
            else:
                first = seen.setdefault(state.etag, sent)
                if not state.expired(sent - first) and not self._left_by_dead_run(state):
                    if time.monotonic() >= deadline:
                        raise self._held_error(state, wait_s)
                    time.sleep(self.poll_s)
                    continue
                etag = self._put(if_match=state.etag)
            if etag is not None and self._confirm(etag):
                if state is not None and not state.released:
                    self.took_over = state.holder
                self._held(etag, sent)
                self._start_heartbeat()
                return

    def _left_by_dead_run(self, state: LeaseState) -> bool:
        """A lease of this host and cache while this process holds that cache's writer lock:
        its holder cannot be running (it would hold the lock)."""
        holder = state.holder
        return (
            self.cache_locked
            and holder is not None
            and (holder.host, holder.cache) == (self.holder.host, self.holder.cache)
        )

    def _confirm(self, etag: str) -> bool:
        """Reads the lease back: ours (a store whose conditional writes race loses nothing)."""
        state = self.read()
        return state is not None and state.token == self.token and state.etag == etag

    def _held(self, etag: str, sent: float) -> None:
        with self._lock:
            self._etag = etag
            self._valid_until = sent + self.ttl_s / 2
            self._renew_error = None

    def _held_error(self, state: LeaseState, wait_s: float) -> StorageError:
        who = state.holder.describe() if state.holder else "an unknown writer"
        waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
        left = ""
        if state.age_s is not None:
            left = f"; if it died, its lease expires in {max(0.0, state.ttl_s - state.age_s):.0f} s"
        return StorageError(
            f"another mmsearch writer holds {self.uri}: {who}{waited}; wait for it to finish{left}"
        )

    def check(self) -> None:
        """Raises :class:`StorageError` unless this process certainly still holds the lease.

        When the last confirmed renewal is older than half a lease (the heartbeat thread
        was starved, or the store was slow), it renews now, under the same condition, and
        fails only when the store says another writer holds it or cannot be reached.
        """
        self._raise_if_lost()
        with self._lock:
            late = time.monotonic() >= self._valid_until
        if not late:
            return
        self.renew()
        self._raise_if_lost()
        with self._lock:
            valid_until, error = self._valid_until, self._renew_error
        if time.monotonic() >= valid_until:
            why = f" ({error})" if error else ""
            raise StorageError(
                f"cannot renew the writer lease of {self.uri}{why}; stopped before the next write "
                "so that no other writer's work is overwritten; re-run (committed work is kept)"
            )

    def _raise_if_lost(self) -> None:
        with self._lock:
            lost = self._lost
        if lost is not None:
            raise StorageError(
                f"this run lost the writer lease of {self.uri} to {lost}; it stopped before "
                "writing over that writer's work (its committed rows are kept); re-run when it is done"
            )

    def renew(self) -> None:
        """One heartbeat: rewrites the lease with ``If-Match`` (the heartbeat thread calls
        it; one renewal at a time, or two would take each other for another writer)."""
        with self._renewing:
            with self._lock:
                if self._lost is not None or self._etag is None:
                    return
                etag = self._etag
                self._beat += 1
            sent = time.monotonic()
            try:
                new = self._put(if_match=etag)
            except StorageError as exc:
                with self._lock:
                    self._renew_error = str(exc).split("; ", 1)[0]
                return
            if new is None:
                state = self._safe_read()
                who = state.holder.describe() if state and state.holder else "another writer"
                with self._lock:
                    self._lost = who
                return
            self._held(new, sent)

    def _safe_read(self) -> LeaseState | None:
        try:
            return self.read()
        except StorageError:
            return None

    def _start_heartbeat(self) -> None:
        interval = self.ttl_s / 6

        def beat() -> None:
            while not self._stop.wait(interval):
                self.renew()

        self._thread = threading.Thread(target=beat, name="mmsearch-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stops the heartbeat and marks the lease released (best effort: it expires anyway)."""
        self._stop.set()
        if not self._renewing.acquire(timeout=0.5):  # a renewal in flight: let the lease expire
            return
        try:
            with self._lock:
                etag, lost = self._etag, self._lost
                self._beat += 1
            if etag is None or lost is not None:
                return
            try:
                self.remote.client.put_object(
                    Bucket=self.remote.bucket,
                    Key=self._key,
                    Body=self._body(released=True),
                    IfMatch=etag,
                )
            except Exception:  # noqa: BLE001 - the lease expires by itself; the run's work is done
                pass
            with self._lock:
                self._etag = None
        finally:
            self._renewing.release()


def _store_age(got: dict[str, Any]) -> float | None:
    """Seconds since the object was last written, by the store's clock, or None."""
    modified = got.get("LastModified")
    date = got.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if modified is None or not date:
        return None
    try:
        now = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    return (now - modified).total_seconds()
