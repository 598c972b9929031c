"""Two writers from separate caches (two machines) racing on one object-store URI, on
moto's S3 server on loopback, in every order the test can force: started together,
one stopped before its first commit or in the middle of its uploads while the other
waits, one refused at once, one killed while it holds the lease (a dead lease), one
frozen until its lease is taken over (a lost lease). 20 rounds; after each, the table
holds every item once, every id once, and the published ANN index matches the table;
every run either completed or was refused in one line.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mmsearch.indexer.pipeline import IndexOptions, run_index

from mmsearch.maintenance.info import check_index
from mmsearch.storage.objectstore import RemoteIndex
from mmsearch.storage.snapshot import read_snapshot
from mmsearch.storage.table import ItemStore
from tests.race_writer import POINTS
from tests.s3server import BUCKET

REPO = Path(__file__).resolve().parents[1]
URI = f"s3://{BUCKET}/tw"
ROUNDS = 20
SCENARIOS = ("together", "wait-commit", "wait-upload", "refused", "dead", "lost")
LEASE_TTL_S = 3  # a dead or frozen writer's lease expires in seconds, not a minute


class Machine:
    """A writer process with its own cache (tests/race_writer.py)."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name = name
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            MMSEARCH_CACHE=str(tmp_path / f"cache-{name}"),
            MMSEARCH_LEASE_TTL_S=str(LEASE_TTL_S),
        )
        self.stderr = open(tmp_path / f"{name}.stderr", "a")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.race_writer"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env=env, cwd=REPO,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.expect("ready", 120) == ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("<exited>")

    def send(self, folder: Path, *, wait: float = 60, pause: str | None = None) -> None:
        job = {"folder": str(folder), "uri": URI, "wait": wait, "pause": pause}
        self._write(json.dumps(job))

    def go(self) -> None:
        self._write("")

    def _write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 120) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.name}: no answer within {timeout} s") from None

    def expect(self, word: str, timeout: float = 120) -> str:
        line = self.answer(timeout)
        assert line.split(" ", 1)[0] == word, f"{self.name}: expected {word}, got {line!r}"
        return line.split(" ", 1)[1] if " " in line else ""

    def quiet(self, seconds: float) -> bool:
        """True when nothing was answered for ``seconds``."""
        try:
            line = self.lines.get(timeout=seconds)
        except queue.Empty:
            return True
        self.lines.put(line)
        return False

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()


def _folders(tmp_path: Path) -> tuple[Path, list[tuple[Path, Path]]]:
    """30 images to start with, and per round two folders of 3 more (one per machine)."""
    from mmsearch.datasets.synthetic import generate_catalog

    n = 30 + ROUNDS * 6
    cat = generate_catalog(tmp_path / "catalog", n=n, seed=27)
    images = sorted(p for p in (cat.root / "images").rglob("*") if p.is_file())[:n]
    assert len(images) == n

    def folder(name: str, part: list[Path]) -> Path:
        out = tmp_path / name
        out.mkdir()
        for i, path in enumerate(part):
            shutil.copy(path, out / f"{i:02d}{path.suffix}")
        return out

    base = folder("base", images[:30])
    rounds = [
        (
            folder(f"a{r}", images[30 + 6 * r : 33 + 6 * r]),
            folder(f"b{r}", images[33 + 6 * r : 36 + 6 * r]),
        )
        for r in range(ROUNDS)
    ]
    return base, rounds


def _uris_of(folder: Path) -> set[str]:
    from mmsearch.uris import path_to_uri

    return {path_to_uri(os.path.abspath(p)) for p in folder.iterdir()}


def _assert_consistent(expected: set[str]) -> None:
    """Each uri once, each id once, every expected item there; the published snapshot is
    the table's latest version and its ANN files hold exactly the table's ids."""
    store = ItemStore.open(RemoteIndex(URI).local_dir("writer"))
    tbl = store.scan(["id", "uri"])
    uris, ids = tbl.column("uri").to_pylist(), tbl.column("id").to_pylist()
    assert len(uris) == len(set(uris)), "an item is held twice"
    assert len(ids) == len(set(ids)), "an id is given to two items"
    assert set(uris) == expected
    assert check_index(URI) == {"image": len(expected)}  # pulls the published snapshot
    reader = RemoteIndex(URI).local_dir("reader")
    assert read_snapshot(reader).table_version == store.version  # nothing left unpublished


def _refusal(line: str) -> str:
    text = json.loads(line)
    assert "\n" not in text and URI in text
    return text


@pytest.mark.slow
def test_two_writers_race_on_one_uri(s3, tmp_path, fake_encoder, monkeypatch) -> None:
    monkeypatch.setenv("MMSEARCH_LEASE_TTL_S", str(LEASE_TTL_S))
    base, rounds = _folders(tmp_path)
    run_index([base], URI, fake_encoder.spec, options=IndexOptions(workers=1), encoder=fake_encoder)
    expected = _uris_of(base)
    rng = random.Random(27)
    a, b = Machine("A", tmp_path), Machine("B", tmp_path)
    try:
        for r, (fa, fb) in enumerate(rounds):
            scenario = SCENARIOS[r % len(SCENARIOS)]
            point = rng.choice(POINTS)
            if scenario == "together":  # both start at once; one waits for the other
                a.send(fa)
                b.send(fb)
                a.expect("done")
                b.expect("done")
            elif scenario.startswith("wait-"):  # A stopped holding the lease: B must wait
                a.send(fa, pause=scenario.split("-", 1)[1])
                a.expect("paused")
                b.send(fb)
                assert b.quiet(1.0), "B went ahead while A held the lease"
                assert not (
                    _uris_of(fb)
                    & set(
                        ItemStore.open(RemoteIndex(URI).local_dir("writer"))
                        .scan(["uri"])
                        .column("uri")
                        .to_pylist()
                    )
                )
                a.go()
                a.expect("done")
                b.expect("done")
            elif scenario == "refused":  # B does not wait: one line naming the URI and A
                a.send(fa, pause=point)
                a.expect("paused")
                b.send(fb, wait=0)
                text = _refusal(b.expect("refused"))
                assert f"pid {a.proc.pid} on " in text and "cache-A" in text
                a.go()
                a.expect("done")
                b.send(fb)
                b.expect("done")
            elif scenario == "dead":  # A killed holding the lease: B takes over when it expires
                a.send(fa, pause=point)
                a.expect("paused")
                a.signal(signal.SIGKILL)
                a.close()
                started = time.monotonic()
                b.send(fb)
                b.expect("done")
                assert time.monotonic() - started >= LEASE_TTL_S - 1  # it waited for the expiry
                a = Machine("A", tmp_path)  # the same machine, restarted: its re-run completes
                a.send(fa)
                a.expect("done")
            else:  # "lost": A frozen past its lease; B takes over; A, woken, writes nothing
                a.send(fa, pause=point)
                a.expect("paused")
                a.signal(signal.SIGSTOP)
                b.send(fb)
                b.expect("done")
                a.signal(signal.SIGCONT)
                a.go()
                text = _refusal(a.expect("refused"))
                assert (
                    "lost the writer lease" in text
                    or "cannot renew" in text
                    or "another writer published" in text
                )
                _assert_consistent(
                    expected
                    | _uris_of(fb)
                    | (
                        set(
                            ItemStore.open(RemoteIndex(URI).local_dir("writer"))
                            .scan(["uri"])
                            .column("uri")
                            .to_pylist()
                        )
                        & _uris_of(fa)
                    )
                )
                a.send(fa)  # its re-run completes
                a.expect("done")
            expected |= _uris_of(fa) | _uris_of(fb)
            _assert_consistent(expected)
    finally:
        a.close()
        b.close()
