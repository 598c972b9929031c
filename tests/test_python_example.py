"""The README's Python example, pasted as-is into a script without a ``__main__`` guard.

Decode workers must never import the caller's ``__main__``: an unguarded script would
otherwise re-run itself in every worker, and ``python -`` (stdin) would fail outright.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch.datasets.synthetic import generate_catalog

README = Path(__file__).resolve().parents[1] / "README.md"
N_IMAGES = 16
N_CORRUPT = 2


def readme_python_example() -> str:
    """The code block under the README's ``## Python`` heading, verbatim."""
    match = re.search(
        r"^## Python\n.*?```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S | re.M
    )
    assert match, "README has no ## Python example"
    return match.group(1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """What the example names: ./catalog as `mmsearch sample-data` makes it (plus bad files)."""
    root = tmp_path_factory.mktemp("readme-python")
    generate_catalog(root / "catalog", n=N_IMAGES, seed=5, corrupt=N_CORRUPT)
    return root


def _run(cwd: Path, via: str) -> subprocess.CompletedProcess[str]:
    """Runs the example as ``python example.py`` (via="script") or ``python -`` (via="stdin")."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    shutil.rmtree(cwd / "idx", ignore_errors=True)
    code = readme_python_example() + "\nprint('REPORT', report.added, report.failed)\n"
    if via == "script":
        (cwd / "example.py").write_text(code, encoding="utf-8")
        return subprocess.run(
            [sys.executable, "example.py"],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    return subprocess.run(
        [sys.executable, "-"],
        cwd=cwd,
        input=code,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _check(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # every good image and every caption indexed; the bad files reported
    assert f"REPORT {2 * N_IMAGES} {N_CORRUPT}" in done.stdout, done.stdout
    hits = [line for line in done.stdout.splitlines() if line[:1].isdigit()]
    assert len(hits) == 5  # the example prints the top 5 image hits
    captions = [line for line in done.stdout.splitlines() if line.startswith("caption: a ")]
    assert len(captions) == 3  # image → text finds captions (the index holds texts)


def test_unguarded_script_indexes_every_good_image(workdir):
    _check(_run(workdir, "script"))


def test_python_stdin_indexes_every_good_image(workdir):
    _check(_run(workdir, "stdin"))
