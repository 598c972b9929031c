"""The writer lease of an object-store index, against moto's S3 server on loopback:
one holder at a time, a refusal that names the holder, expiry of a dead holder's
lease, a writer that lost its lease stopped before it writes or publishes."""

from __future__ import annotations

import json
import threading
import time

import pytest
from mmsearch.indexer.session import writer_session

from mmsearch.errors import StorageError
from mmsearch.storage.lease import LEASE_KEY, WriterLease
from mmsearch.storage.locks import write_guard
from mmsearch.storage.objectstore import RemoteIndex
from tests.s3server import BUCKET

URI = f"s3://{BUCKET}/lease/index"


def lease(cache: str, ttl_s: float = 60.0) -> WriterLease:
    return WriterLease(RemoteIndex(URI), cache=cache, ttl_s=ttl_s, poll_s=0.1)


def test_one_holder_and_a_refusal_naming_it(s3) -> None:
    first = lease("/cache/A")
    first.acquire()
    try:
        second = lease("/cache/B")
        with pytest.raises(StorageError) as err:
            second.acquire(wait_s=0.3)
        line = str(err.value)
        assert "\n" not in line and URI in line and "/cache/A" in line and "waited 0.3 s" in line
        stored = json.loads(
            s3.get_object(Bucket=BUCKET, Key=f"lease/index/{LEASE_KEY}")["Body"].read()
        )
        assert stored["token"] == first.token and not stored["released"]
        first.check()  # still held
    finally:
        first.release()


def test_a_waiting_writer_gets_the_lease_when_it_is_released(s3) -> None:
    first = lease("/cache/A")
    first.acquire()
    timer = threading.Timer(0.5, first.release)
    timer.start()
    second = lease("/cache/B")
    started = time.monotonic()
    second.acquire(wait_s=20)
    waited = time.monotonic() - started
    timer.join()
    assert 0.4 < waited < 10 and second.took_over is None  # released, not taken over
    second.check()
    second.release()


def test_a_dead_holders_lease_expires_and_is_taken_over(s3) -> None:
    dead = lease("/cache/dead", ttl_s=2)
    dead.acquire()
    dead._stop.set()  # the holder dies: no more heartbeats, no release
    heir = lease("/cache/heir", ttl_s=2)
    with pytest.raises(StorageError, match="expires in"):
        heir.acquire(wait_s=0)
    started = time.monotonic()
    heir.acquire(wait_s=20)
    assert 2 < time.monotonic() - started < 10
    assert heir.took_over == dead.holder
    heir.release()


def test_a_lease_left_by_a_dead_run_of_this_cache_is_taken_at_once(s3) -> None:
    dead = lease("/cache/same", ttl_s=60)
    dead.acquire()
    dead._stop.set()  # killed: no heartbeat, no release
    elsewhere = lease("/cache/other", ttl_s=60)
    with pytest.raises(StorageError, match="another mmsearch writer holds"):
        elsewhere.acquire(wait_s=0)
    rerun = WriterLease(RemoteIndex(URI), cache="/cache/same", ttl_s=60, cache_locked=True)
    started = time.monotonic()
    rerun.acquire(wait_s=0)  # holds the cache's writer lock: the old holder cannot be running
    assert time.monotonic() - started < 5 and rerun.took_over == dead.holder
    rerun.release()


def test_heartbeats_keep_a_live_lease(s3) -> None:
    live = lease("/cache/live", ttl_s=1.5)
    live.acquire()
    time.sleep(3.5)  # more than twice the ttl: only the heartbeat keeps it
    live.check()
    other = lease("/cache/other", ttl_s=1.5)
    with pytest.raises(StorageError, match="another mmsearch writer holds"):
        other.acquire(wait_s=0.5)
    live.release()


def test_a_late_heartbeat_is_made_up_before_a_write(s3, monkeypatch) -> None:
    busy = lease("/cache/busy", ttl_s=2)
    busy.acquire()
    busy._stop.set()  # the heartbeat thread starved (a busy process): no renewals
    time.sleep(1.1)  # past half the lease
    busy.check()  # renews now, under the store's condition, and goes ahead
    monkeypatch.setattr(
        busy, "_put", lambda **kw: (_ for _ in ()).throw(StorageError("cannot reach it"))
    )
    time.sleep(1.1)
    with pytest.raises(StorageError, match="cannot renew the writer lease .*cannot reach it"):
        busy.check()  # the store does not answer: it stops before anyone may take over


def test_a_writer_that_lost_its_lease_is_stopped(s3) -> None:
    frozen = lease("/cache/frozen", ttl_s=2)
    frozen.acquire()
    frozen._stop.set()  # frozen (a suspended VM, SIGSTOP): no heartbeats
    heir = lease("/cache/heir", ttl_s=2)
    heir.acquire(wait_s=20)  # once the frozen lease expired
    with pytest.raises(StorageError, match="lost the writer lease .* /cache/heir"):
        frozen.check()  # it wakes up: its conditional renewal fails, it writes nothing
    frozen.release()  # does not touch the heir's lease
    heir.check()
    heir.release()


def test_session_fences_table_writes_and_publish(s3) -> None:
    with writer_session(URI) as session:
        assert session.lease is not None
        with write_guard(session.local_dir):
            pass  # held: writes go ahead
        session.lease._stop.set()
        with session.lease._lock:
            session.lease._lost = "pid 1 on elsewhere"
        with pytest.raises(StorageError, match="lost the writer lease"):
            with write_guard(session.local_dir):
                raise AssertionError("a fenced write must not start")
        with pytest.raises(StorageError, match="lost the writer lease"):
            session.publish()


def test_a_refused_command_says_so_in_one_line(s3) -> None:
    from typer.testing import CliRunner

    from mmsearch.cli import app

    holder = lease("/cache/elsewhere")
    holder.acquire()
    try:
        result = CliRunner().invoke(app, ["build-index", "--index", URI, "--no-progress"])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith("error: another mmsearch writer holds") and URI in lines[0]
        assert "/cache/elsewhere" in lines[0]
    finally:
        holder.release()
