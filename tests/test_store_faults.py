"""A store that refuses connections, cuts them or never answers, at the start of a
command or in the middle of its commit, uploads, snapshot PUT or clean-up (a proxy in
front of moto's S3 server breaks the connection on cue): the command ends with one
line naming the URI and exit status 2 within the configured bounds; a failure after
the new snapshot is live does not fail the run; open readers keep the snapshot they
serve; a re-run completes the work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index
from mmsearch.indexer.remove import remove_paths

from mmsearch.engine import SearchIndex
from mmsearch.errors import StorageError
from mmsearch.maintenance.info import check_index
from mmsearch.storage.s3 import StoreLimits
from tests.faultproxy import FaultProxy
from tests.s3server import BUCKET

REPO = Path(__file__).resolve().parents[1]
URI = f"s3://{BUCKET}/faults"
PREFIX = f"/{BUCKET}/faults"
#: Short bounds, so that a dead store is noticed in about a second per request.
LIMITS = {
    "MMSEARCH_S3_CONNECT_TIMEOUT_S": "1",
    "MMSEARCH_S3_TIMEOUT_S": "1",
    "MMSEARCH_S3_ATTEMPTS": "1",
}
#: A Python process with the CLI's imports takes seconds to start on a loaded machine.
STARTUP_SLACK_S = 40
#: The request that starts each phase of a run (request lines as the proxy sees them).
PHASES = {
    "commit": rb"^PUT %s/db/items\.lance/_versions/" % PREFIX.encode(),
    "upload": rb"^(HEAD|PUT) %s/ann/objects/" % PREFIX.encode(),
    "snapshot": rb"^PUT %s/snapshot\.json" % PREFIX.encode(),
    "cleanup": rb"^GET /%s\?list-type=2&prefix=faults%%2Fann%%2Fobjects" % BUCKET.encode(),
}


@pytest.fixture
def store(s3, s3_server, tmp_path, fake_encoder, monkeypatch):
    """An index of 20 images at URI, reached through a :class:`FaultProxy`."""
    from mmsearch.datasets.synthetic import generate_catalog

    proxy = FaultProxy(s3_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    for key, value in LIMITS.items():
        monkeypatch.setenv(key, value)
    cat = generate_catalog(tmp_path / "catalog", n=30, seed=9)
    images = sorted(p for p in (cat.root / "images").rglob("*") if p.is_file())
    base = tmp_path / "base"
    base.mkdir()
    for i, path in enumerate(images[:20]):
        shutil.copy(path, base / f"{i:02d}{path.suffix}")
    run_index([base], URI, fake_encoder.spec, options=IndexOptions(workers=1), encoder=fake_encoder)
    proxy.spare = images[20:]  # type: ignore[attr-defined]
    yield proxy
    proxy.close()


def cli(*args: str, tmp_path: Path, cache: str = "cache-writer") -> tuple[int, list[str], float]:
    """Runs ``mmsearch ARGS`` as a person would; (exit status, stderr lines, seconds)."""
    env = dict(
        os.environ, PYTHONPATH=str(REPO), MMSEARCH_CACHE=str(tmp_path / cache), COLUMNS="300"
    )
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "mmsearch.cli", *args], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    return out.returncode, out.stderr.strip().splitlines(), time.monotonic() - started


def assert_one_line(rc: int, lines: list[str], seconds: float) -> None:
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and URI in lines[0], lines
    assert "Traceback" not in lines[0]
    assert seconds < StoreLimits.from_env().run_bound_s() + STARTUP_SLACK_S


def add_folder(proxy: FaultProxy, tmp_path: Path, name: str, encoder) -> Path:
    """Two more images, indexed and published (something for ``remove`` to take out)."""
    folder = tmp_path / name
    folder.mkdir()
    for i in range(2):
        shutil.copy(proxy.spare.pop(), folder / f"{i}.png")  # type: ignore[attr-defined]
    run_index([folder], URI, encoder.spec, options=IndexOptions(workers=1), encoder=encoder)
    return folder


def reader(tmp_path: Path, encoder, monkeypatch) -> SearchIndex:
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-reader"))
    try:
        return SearchIndex(URI, encoder=encoder)
    finally:
        monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-writer"))


@pytest.mark.parametrize("fault", ["refuse", "cut", "hang"])
def test_commands_end_in_one_line_when_the_store_is_unreachable(store, tmp_path, fault) -> None:
    store.set_mode(fault)
    folder = tmp_path / "more"
    folder.mkdir()
    shutil.copy(store.spare[0], folder / "0.png")
    commands = [
        ("index", str(folder), "--model", "mmsearch-tiny", "--backend", "torch", "--index", URI),
        ("query", "a red circle", "--index", URI),
        ("info", "--index", URI),
        ("build-index", "--index", URI),
    ]
    for args in commands if fault == "refuse" else commands[:2]:
        assert_one_line(*cli(*args, tmp_path=tmp_path, cache=f"cache-{args[0]}"))


@pytest.mark.parametrize(
    ("phase", "fault"),
    [
        ("commit", "hang"),
        ("commit", "cut"),
        ("upload", "hang"),
        ("upload", "cut"),
        ("snapshot", "hang"),
        ("snapshot", "cut"),
    ],
)
def test_a_run_cut_off_mid_way_ends_in_one_line_and_a_rerun_completes(
    store, tmp_path, fake_encoder, monkeypatch, phase, fault
) -> None:
    folder = add_folder(store, tmp_path, "gone", fake_encoder)
    served = reader(tmp_path, fake_encoder, monkeypatch)
    before = len(served)
    probe = served.store.scan(["vector"]).column("vector").to_pylist()[0]
    store.fail_at(PHASES[phase], fault)
    assert_one_line(*cli("remove", str(folder), "--index", URI, tmp_path=tmp_path))
    assert store.mode == fault  # the fault hit this phase

    # readers keep the snapshot they serve, and say why they cannot move on
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-reader"))
    started = time.monotonic()
    with pytest.raises(StorageError, match=URI):
        served.reload()
    assert time.monotonic() - started < StoreLimits.from_env().request_bound_s + 5
    assert (
        len(served) == before and len(served.search_vector(np.asarray(probe, np.float32), k=1)) == 1
    )

    store.restore()
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-writer"))
    remove_paths([folder], URI)  # the re-run, on the same machine, completes the removal
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-reader"))
    assert served.reload() and len(served) == before - 2
    assert check_index(URI) == {"image": before - 2}


def test_a_failed_cleanup_after_publishing_does_not_fail_the_run(
    store, tmp_path, fake_encoder, monkeypatch
) -> None:
    folder = add_folder(store, tmp_path, "gone", fake_encoder)
    served = reader(tmp_path, fake_encoder, monkeypatch)
    before = len(served)
    store.fail_at(PHASES["cleanup"], "cut")
    rc, lines, _ = cli("remove", str(folder), "--index", URI, tmp_path=tmp_path)
    assert store.mode == "cut"
    assert rc == 0 and any(line.startswith("warning: ") and "clean up" in line for line in lines), (
        lines
    )
    store.restore()
    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache-reader"))
    assert served.reload() and len(served) == before - 2  # the new snapshot is live
