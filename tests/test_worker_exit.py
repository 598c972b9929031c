"""Worker processes never outlive their run: a SIGKILLed indexer leaves no decode
worker and no multiprocessing resource tracker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Two decode workers busy on files that hang (one mid-decode, one waiting for work),
# as in an indexing run killed while it decodes.
CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from mmsearch.indexer.decode import DecodePool
    from tests.hang_decoder import decode_or_hang

    if __name__ == "__main__":
        paths = [str(Path({folder!r}) / f"hang-{{i}}.png") for i in range(2)]
        with DecodePool(32, workers=2, timeout_s=600, chunk_size=1, decode=decode_or_hang) as pool:
            results = pool.decode(enumerate(paths))
            Path({marker!r}).write_text("started")
            next(results)
    """
)


def _children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.add(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (it waits for its new parent to reap it)


def test_sigkilled_parent_leaves_no_worker_or_resource_tracker(tmp_path) -> None:
    marker = tmp_path / "marker"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), folder=str(tmp_path), marker=str(marker)))
    child = subprocess.Popen(
        [sys.executable, str(script)], env=dict(os.environ, PYTHONPATH=str(REPO))
    )
    spawned: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or len(_children(child.pid)) < 3:  # 2 workers + the tracker
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # the workers are inside the hanging decode
        spawned = _children(child.pid)
        assert all(_alive(pid) for pid in spawned)
        os.kill(child.pid, signal.SIGKILL)  # the parent only: no clean-up runs
        child.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in spawned) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in spawned if _alive(pid)]
        assert not left, f"still running after the parent was killed: {left}"
    finally:
        if child.poll() is None:
            spawned |= _children(child.pid)
            child.kill()
        for pid in spawned:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
