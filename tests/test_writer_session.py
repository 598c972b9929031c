"""The writer session: one writer at a time (waiting up to a limit), no folder left by a failed first run."""

from __future__ import annotations

import threading
import time

import pytest
from mmsearch.indexer.ann_build import rebuild_ann
from mmsearch.indexer.session import writer_session

from mmsearch.errors import IndexNotFoundError, StorageError
from mmsearch.storage.locks import WRITE_LOCK_NAME, index_write_lock


def test_second_writer_waits_for_the_first(tmp_path):
    idx = tmp_path / "idx"
    held = threading.Event()

    def first_writer() -> None:
        with index_write_lock(idx):
            held.set()
            time.sleep(0.4)

    thread = threading.Thread(target=first_writer)
    thread.start()
    held.wait(5)
    started = time.monotonic()
    with writer_session(idx, wait_s=10) as session:
        waited = time.monotonic() - started
        assert session.local_dir == idx and session.remote is None
    thread.join()
    assert 0.2 < waited < 5


def test_second_writer_gives_up_after_its_wait(tmp_path):
    idx = tmp_path / "idx"
    with index_write_lock(idx):
        started = time.monotonic()
        with pytest.raises(
            StorageError, match=r"another mmsearch process is writing .*waited 0\.3 s"
        ):
            with writer_session(idx, wait_s=0.3):
                pass
        assert time.monotonic() - started >= 0.3


def test_failed_first_session_leaves_no_folder(tmp_path):
    idx = tmp_path / "never-indexed"
    with pytest.raises(IndexNotFoundError):
        rebuild_ann(idx)
    assert not idx.exists()


def test_session_keeps_an_existing_folder_after_a_failure(tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        with writer_session(idx):
            raise RuntimeError("work failed")
    assert (idx / "notes.txt").read_text() == "mine" and (idx / WRITE_LOCK_NAME).exists()
