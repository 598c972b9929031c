"""scripts/setup.sh (run by demo.sh and test.sh) installs once: a second run reinstalls nothing."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A stand-in interpreter for the venv: records every pip call, imports succeed.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "pip $*" >> "$(dirname "$0")/../pip-calls"; fi
exit 0
"""


def _repo_copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return root


def _setup(root: Path, extras: str = "dev") -> list[str]:
    done = subprocess.run(
        ["bash", "scripts/setup.sh", extras],
        cwd=root,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    calls = root / ".venv" / "pip-calls"
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return lines


def test_second_setup_run_installs_nothing(tmp_path):
    root = _repo_copy(tmp_path)
    first = _setup(root)
    assert any("-e .[dev]" in line for line in first)
    assert _setup(root) == []  # same pyproject, same extras: nothing reinstalled
    assert any("-e .[heif]" in line for line in _setup(root, "heif"))  # other extras: install
    (root / "pyproject.toml").write_text((root / "pyproject.toml").read_text() + "\n# changed\n")
    assert any(
        "-e .[server]" in line for line in _setup(root, "server")
    )  # pyproject changed: install
    assert _setup(root, "server") == []


def test_demo_installs_the_main_job_only_and_dev_covers_it(tmp_path):
    demo = (REPO / "scripts" / "demo.sh").read_text()
    assert "setup.sh onnx" in demo and "setup.sh dev" not in demo
    assert "setup.sh dev" in (REPO / "scripts" / "test.sh").read_text()
    root = _repo_copy(tmp_path)
    first = _setup(root, "onnx")
    assert any("-e .[onnx]" in line for line in first) and not any("[dev]" in x for x in first)
    assert _setup(root, "onnx") == []
    assert any("-e .[dev]" in line for line in _setup(root, "dev"))
    assert _setup(root, "onnx") == []  # an environment set up for the tests runs the demo too
    assert any("-e .[heif]" in line for line in _setup(root, "heif"))  # not part of dev


def test_setup_shows_its_steps(tmp_path):
    root = _repo_copy(tmp_path)
    done = subprocess.run(
        ["bash", "scripts/setup.sh", "onnx"], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stderr.splitlines() if line.startswith("==> [")]
    assert len(steps) >= 3 and "torch" in steps[0] and "mmsearch[onnx]" in steps[1]
