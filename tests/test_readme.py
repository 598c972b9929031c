"""Every command of the README's "Command line" block, run in order on the sample catalog.

The commands run as written (through the CLI in-process), from a folder that also
holds what the README takes from the user: ``./photos`` (a few images) and ``./ref.png``.
Two substitutions keep this fast: the catalog has 60 items instead of 400, and
``serve`` listens on a free port instead of 8000. ``index ./photos`` names the default
model, whose weights are not shipped: here it must fail at once with one line (no
cache, offline); with weights it would index. The Python example is run by
``tests/test_python_example.py``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmsearch.cli import EXIT_NO_RESULTS, app

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


def readme_commands() -> list[list[str]]:
    """The ``mmsearch ...`` lines of the README's Command line block, as argv lists."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"^## Command line\n+```bash\n(.*?)```", text, re.S | re.M)
    assert block, "README has no ## Command line block"
    return [
        shlex.split(line, comments=True)
        for line in block.group(1).splitlines()
        if line.startswith("mmsearch ")
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(argv: list[str], cwd: Path) -> None:
    port = _free_port()
    argv = [a if a != "8000" else str(port) for a in argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmsearch.cli", *argv[1:]], cwd=cwd, env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/search?q=red+circle&k=3", timeout=5
                ) as resp:
                    hits = json.loads(resp.read())
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "serve did not answer"
                time.sleep(0.5)
        results = hits["results"] if isinstance(hits, dict) else hits
        assert len(results) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    return tmp_path


def test_every_readme_command_runs(workdir):
    commands = readme_commands()
    assert len(commands) >= 12
    seen: set[str] = set()
    for argv in commands:
        assert argv[0] == "mmsearch"
        if argv[1] == "serve":
            _serve(argv, workdir)
            seen.add("serve")
            continue
        args = ["60" if a == "400" else a for a in argv[1:]]
        result = runner.invoke(app, args, env={"COLUMNS": "160"})
        line = " ".join(argv)
        if argv[1] == "sample-data":  # what the README takes from the user
            (workdir / "photos").mkdir()
            for src in sorted((workdir / "catalog" / "images").rglob("*.jpg"))[:3]:
                shutil.copy(src, workdir / "photos" / src.name)
            shutil.copy(next((workdir / "catalog" / "images").rglob("*.png")), workdir / "ref.png")
        if (
            argv[1:2] == ["index"] and "./photos" in argv
        ):  # the default model: not shipped, offline here
            assert result.exit_code == 2, (line, result.output)
            assert "not in the local Hugging Face cache" in result.output
            assert not (workdir / ".mmsearch").exists()
        elif "mauve" in line:
            assert result.exit_code == EXIT_NO_RESULTS, (line, result.output)
            assert result.output.startswith("no results (")
        else:
            assert result.exit_code == 0, (line, result.output)
        if "--json" in argv and argv[1] == "query":
            assert [h["rank"] for h in json.loads(result.stdout)] == list(range(1, 11))
        if "-f" in argv:
            assert all(
                Path(p).is_file() or not p.endswith((".jpg", ".png"))
                for p in result.stdout.splitlines()
            )
        seen.add(argv[1])
    assert {"sample-data", "index", "query", "remove", "info", "build-index", "serve"} <= seen
