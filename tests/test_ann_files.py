"""VectorIndex persistence: round trip, manifest checks, corruption, SIGKILL while saving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mmsearch.ann import VectorIndex
from mmsearch.errors import IndexCorruptError, IndexNotFoundError, ModelMismatchError

REPO = Path(__file__).resolve().parents[1]
D = 32


def vectors(n: int, *, seed: int) -> np.ndarray:
    rs = np.random.default_rng(seed)
    z = rs.normal(size=(n, 6))
    x = np.sin(z @ np.random.default_rng(0).normal(size=(6, D))) + 0.1 * rs.normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(params=["ivfpq", "flat"])
def saved(request, tmp_path: Path) -> tuple[Path, VectorIndex, np.ndarray, np.ndarray]:
    x = vectors(3000, seed=1)
    ids = np.arange(3000, dtype=np.int64) * 2 + 1
    index = VectorIndex.build(x, ids, index_type=request.param, seed=0)
    index.save(tmp_path / "ix", table_version=4, model_key="mmsearch-tiny@v1")
    return tmp_path / "ix", index, x, ids


def data_file(directory: Path, role: str) -> Path:
    return directory / json.loads((directory / "manifest.json").read_text())["files"][role]["name"]


def test_round_trip_same_results_and_memory_mapped(saved) -> None:
    directory, index, x, _ = saved
    loaded = VectorIndex.load(
        directory, expect_table_version=4, expect_model_key="mmsearch-tiny@v1"
    )
    q = vectors(40, seed=9)
    for kwargs in ({}, {"exact": True}, {"nprobe": 3, "refine": 2}):
        a, b = index.search(q, 10, **kwargs), loaded.search(q, 10, **kwargs)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    info = loaded.info
    assert info["refine_vectors_memory_mapped"] is True
    assert {k: info[k] for k in ("type", "n", "nprobe", "refine", "recall_at_10")} == {
        k: index.info[k] for k in ("type", "n", "nprobe", "refine", "recall_at_10")
    }


def test_model_mismatch_names_both_models(saved) -> None:
    directory = saved[0]
    with pytest.raises(ModelMismatchError) as err:
        VectorIndex.load(directory, expect_model_key="other-model@v2")
    assert "mmsearch-tiny@v1" in str(err.value) and "other-model@v2" in str(err.value)


def test_table_version_mismatch_is_stale(saved) -> None:
    with pytest.raises(IndexCorruptError, match="table version 4 .* version 5"):
        VectorIndex.load(saved[0], expect_table_version=5)


@pytest.mark.parametrize("role", ["vectors", "ids", "index"])
def test_truncated_file_detected_with_rebuild_hint(saved, role: str) -> None:
    directory, index = saved[0], saved[1]
    if role == "index" and index.info["type"] == "flat":
        pytest.skip("flat indexes have no FAISS file")
    path = data_file(directory, role)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(IndexCorruptError, match="truncated.*mmsearch build-index"):
        VectorIndex.load(directory)


def test_flipped_bytes_fail_checksum(saved) -> None:
    directory = saved[0]
    path = data_file(directory, "vectors")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="SHA-256"):
        VectorIndex.load(directory)


def test_garbage_faiss_file_without_checksum_is_still_an_index_error(tmp_path: Path) -> None:
    x, ids = vectors(3000, seed=1), np.arange(3000, dtype=np.int64)
    VectorIndex.build(x, ids, index_type="ivfpq").save(tmp_path, table_version=1, model_key="m")
    path = data_file(tmp_path, "index")
    path.write_bytes(b"\0" * path.stat().st_size)
    with pytest.raises(IndexCorruptError, match="mmsearch build-index"):
        VectorIndex.load(tmp_path, verify_checksums=False)


def test_missing_and_broken_manifest(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError):
        VectorIndex.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(tmp_path)


def test_incremental_save_after_load_and_garbage_collection(saved) -> None:
    directory, _, x, ids = saved
    index = VectorIndex.load(directory)
    first_files = set(os.listdir(directory))
    new_x, new_ids = vectors(200, seed=5), np.arange(10**6, 10**6 + 200, dtype=np.int64)
    index.add(new_x, new_ids, retrain=False)  # the mmapped FAISS index becomes writable
    index.remove(ids[:100])
    index.save(directory, table_version=5, model_key="mmsearch-tiny@v1")
    reloaded = VectorIndex.load(directory, expect_table_version=5)
    assert len(reloaded) == 3000 - 100 + 200
    _, found = reloaded.search(new_x[:20], 1, exact=True)
    np.testing.assert_array_equal(found[:, 0], new_ids[:20])
    assert not np.isin(reloaded.search(x[:100], 10)[1], ids[:100]).any()
    assert not np.isin(reloaded.search(x[:100], 10, exact=True)[1], ids[:100]).any()
    # old generation files are gone, only the new manifest's files (and the lock) remain
    manifest = json.loads((directory / "manifest.json").read_text())
    names = {e["name"] for e in manifest["files"].values()}
    assert set(os.listdir(directory)) == names | {"manifest.json", ".lock"}
    assert manifest["generation"] == 2
    # append-only: the first segment is kept as it was, only the 200 new rows are written
    # (one new segment) and the 100 removals become a tombstone file
    files = manifest["files"]
    assert files["vectors"]["name"] in first_files and files["ids"]["name"] in first_files
    assert files["vectors.1"]["size"] == 200 * D * 4 and files["ids.1"]["name"] not in first_files
    assert files["tombstones"]["size"] == 100 * 8 and manifest["segments"] == [3000, 200]
    assert not ({files[r]["name"] for r in ("vectors.1", "ids.1", "tombstones")} & first_files)


def test_save_without_changes_reuses_files(saved) -> None:
    directory = saved[0]
    index = VectorIndex.load(directory)
    before = json.loads((directory / "manifest.json").read_text())["files"]
    index.save(directory, table_version=6, model_key="mmsearch-tiny@v1")
    after = json.loads((directory / "manifest.json").read_text())
    assert after["files"] == before and after["table_version"] == 6


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    import mmsearch.ann.files as files
    import mmsearch.ann.store as store
    from mmsearch.ann import VectorIndex

    directory, mode, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    DIM = int(sys.argv[5])

    def hang(*args, **kwargs):
        marker.write_text("ready")
        time.sleep(600)

    if mode == "before-manifest":
        files.write_manifest = hang
    elif mode == "mid-vectors":
        real_iter = store.VectorStore.iter_delta
        def iter_then_hang(self, chunk=65536):
            for i, item in enumerate(real_iter(self, 64)):
                yield item
                if i == 2:
                    hang()
        store.VectorStore.iter_delta = iter_then_hang

    index = VectorIndex.load(directory)
    rng = np.random.default_rng(int(sys.argv[4]))
    next_id = 10**9 + int(sys.argv[4]) * 10**7  # fresh ids per child
    while True:
        x = rng.normal(size=(300, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        index.add(x, np.arange(next_id, next_id + 300, dtype=np.int64), retrain=False)
        next_id += 300
        index.save(directory, table_version=next_id, model_key="m")
        if mode != "loop":
            break
    """
)


def run_child(directory: Path, mode: str, tmp_path: Path, seed: int) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(directory),
            mode,
            str(tmp_path / "marker"),
            str(seed),
            str(D),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def assert_consistent(directory: Path) -> VectorIndex:
    index = VectorIndex.load(directory)  # full checksum verification
    manifest = json.loads((directory / "manifest.json").read_text())
    assert len(index) == manifest["n"]
    x, ids = vectors(50, seed=1), np.arange(50, dtype=np.int64) * 2 + 1
    np.testing.assert_array_equal(index.search(x, 1, exact=True)[1][:, 0], ids)
    return index


@pytest.mark.parametrize("mode", ["before-manifest", "mid-vectors"])
def test_sigkill_at_fixed_points_leaves_previous_index(tmp_path: Path, mode: str) -> None:
    directory = tmp_path / "ix"
    x, ids = vectors(3000, seed=1), np.arange(3000, dtype=np.int64) * 2 + 1
    VectorIndex.build(x, ids, index_type="ivfpq").save(directory, table_version=1, model_key="m")
    before = json.loads((directory / "manifest.json").read_text())
    child = run_child(directory, mode, tmp_path, seed=0)
    deadline = time.monotonic() + 60
    while not (tmp_path / "marker").exists():
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        assert time.monotonic() < deadline, "child never reached the kill point"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert json.loads((directory / "manifest.json").read_text()) == before
    index = assert_consistent(directory)
    assert len(index) == 3000
    # the next save cleans up what the killed writer left behind
    index.save(directory, table_version=2, model_key="m")
    assert not [n for n in os.listdir(directory) if ".tmp-" in n]


def test_sigkill_at_random_times_always_leaves_a_committed_index(tmp_path: Path) -> None:
    directory = tmp_path / "ix"
    x, ids = vectors(3000, seed=1), np.arange(3000, dtype=np.int64) * 2 + 1
    VectorIndex.build(x, ids, index_type="ivfpq").save(directory, table_version=1, model_key="m")
    delays = np.random.default_rng(42).uniform(0.8, 2.5, size=4)
    sizes = set()
    for trial, delay in enumerate(delays):
        child = run_child(directory, "loop", tmp_path, seed=trial)
        time.sleep(float(delay))
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait()
        index = assert_consistent(directory)
        assert (len(index) - 3000) % 300 == 0  # a whole number of committed batches
        sizes.add(len(index))
    assert max(sizes) > 3000  # the children did commit saves between kills
