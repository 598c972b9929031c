"""Storage faults: a full disk mid-run leaves a state that a re-run completes."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index

from mmsearch.errors import StorageError
from tests.conftest import FakeEncoder
from tests.kill_harness import reference_vectors, verify


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount rights; skipped with the reason otherwise)."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_then_rerun_completes(tmp_path, small_disk):
    from mmsearch.datasets.synthetic import generate_catalog

    enc = FakeEncoder(dim=512)  # big vectors, so 600 rows do not fit in 1 MiB
    cat = generate_catalog(tmp_path / "cat", n=600, seed=1)
    index_dir = small_disk / "idx"
    opts = IndexOptions(workers=2, commit_every=64)
    with pytest.raises(StorageError, match="No space left on device"):
        run_index([cat.root], index_dir, enc.spec, options=opts, encoder=enc)
    from mmsearch.storage.table import ItemStore

    committed = ItemStore.open(index_dir).count()
    assert 0 < committed < 600  # some batches made it before the disk filled
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    report = run_index([cat.root], index_dir, enc.spec, options=opts, encoder=enc)
    assert report.failed == 0
    assert report.embedded == 600 - committed  # committed rows are not embedded again
    problems = verify(index_dir, enc, reference_vectors(cat.root, enc))
    assert problems == []
