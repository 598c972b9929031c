"""scripts/setup.sh (run by demo.sh and test.sh) installs once: a second run reinstalls
nothing; the demo installs no torch and its job runs without torch or open_clip."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import tomllib

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
    shutil.copy(
        REPO / "scripts" / "demo-requirements.txt", root / "scripts" / "demo-requirements.txt"
    )
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
    assert "setup.sh demo" in demo and "setup.sh dev" not in demo
    assert "setup.sh dev" in (REPO / "scripts" / "test.sh").read_text()
    root = _repo_copy(tmp_path)
    first = _setup(root, "demo")
    assert any("-r scripts/demo-requirements.txt" in line for line in first)
    assert any("--no-deps" in line and line.endswith(" -e .") for line in first)
    assert not any("torch" in line or "[" in line for line in first)  # no torch, no extras
    assert _setup(root, "demo") == []
    assert any("-e .[dev]" in line for line in _setup(root, "dev"))
    assert _setup(root, "demo") == []  # an environment set up for the tests runs the demo too
    assert any("-e .[heif]" in line for line in _setup(root, "heif"))  # not part of dev
    other = _repo_copy(tmp_path / "other")
    _setup(other, "demo")
    requirements = other / "scripts" / "demo-requirements.txt"
    requirements.write_text(requirements.read_text() + "rich>=13\n")
    assert _setup(other, "demo")  # the demo list changed: install


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_demo_requirements_are_the_products_and_leave_torch_out():
    """Each line of the demo's list is a requirement of the product (same specifier) or of
    its onnx extra; torch, open_clip and the export tools stay with the full installation."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    product = {
        _name(r): r for r in project["dependencies"] + project["optional-dependencies"]["onnx"]
    }
    lines = (REPO / "scripts" / "demo-requirements.txt").read_text().splitlines()
    demo = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert demo and all(product.get(_name(r)) == r for r in demo), demo
    names = {_name(r) for r in demo}
    assert names.isdisjoint({"torch", "torchvision", "open-clip-torch", "onnx", "onnxscript"})
    assert {"onnxruntime", "tokenizers", "lancedb", "faiss-cpu"} <= names


def test_setup_shows_its_steps(tmp_path):
    root = _repo_copy(tmp_path)
    done = subprocess.run(
        ["bash", "scripts/setup.sh", "onnx"], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stderr.splitlines() if line.startswith("==> [")]
    assert len(steps) >= 3 and "torch" in steps[0] and "mmsearch[onnx]" in steps[1]
    demo = _repo_copy(tmp_path / "demo")
    done = subprocess.run(
        ["bash", "scripts/setup.sh", "demo"], cwd=demo, capture_output=True, text=True, timeout=60
    )
    steps = [line for line in done.stderr.splitlines() if line.startswith("==> [")]
    assert done.returncode == 0 and len(steps) >= 3 and "no torch" in steps[0]


# Stands in for a package the demo's installation lacks: importing it is logged (with
# where from) and fails as a missing package does. Spawned decode workers inherit it.
_ABSENT = """import os, traceback
with open(os.environ["MMSEARCH_TEST_ABSENT_LOG"], "a", encoding="utf-8") as log:
    log.write(__name__ + "\\n" + "".join(traceback.format_stack(limit=8)) + "\\n")
raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)
"""
ABSENT = ("torch", "torchvision", "open_clip", "transformers")


def test_demo_job_imports_no_torch(tmp_path):
    """The demo (index the sample catalog with mmsearch-tiny, query it, write the gallery)
    runs where torch, torchvision, open_clip and transformers cannot be imported, and never
    tries to: the ONNX export ships with mmsearch; decode workers, tokenizer, labels, ANN and
    full-text index need none of them."""
    shadow = tmp_path / "absent"
    for name in ABSENT:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(_ABSENT)
    log = tmp_path / "imports.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")]),
        "MMSEARCH_TEST_ABSENT_LOG": str(log),
        "MMSEARCH_CACHE": str(tmp_path / "cache"),
    }
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "mmsearch.cli", "demo", str(out), "--n", "24", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not log.exists(), log.read_text()[:3000]
    summary = json.loads((out / "index" / "reports" / "last-run.json").read_text())
    assert summary["added"] == 48 and summary["failed"] == 0  # 24 images + 24 captions
    assert (out / "results.html").is_file() and "gallery:" in done.stdout
