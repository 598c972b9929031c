"""What the command line prints, compared with committed snapshots (as rclip's end-to-end
tests do): ``--help`` of the main commands, and the results table of a fixed query on
the README's sample catalog.

Scores are masked (their last digits vary with the CPU's float kernels); everything
else must match. After an intended change, rewrite the snapshots with
``MMSEARCH_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_cli_snapshots.py`` and review
the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmsearch.cli import app

SNAPSHOTS = Path(__file__).with_name("snapshots")
ENV = {"COLUMNS": "100", "TERMINAL_WIDTH": "100", "NO_COLOR": "1", "TERM": "dumb"}
runner = CliRunner()


def _normalised(text: str) -> str:
    text = re.sub(r"\d\.\d{4}\b", "#.####", text)  # scores
    return "\n".join(line.rstrip() for line in text.splitlines()).strip() + "\n"


def _matches_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    got = _normalised(text)
    if os.environ.get("MMSEARCH_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(got, encoding="utf-8")
    assert path.is_file(), f"no snapshot {path.name}: run with MMSEARCH_UPDATE_SNAPSHOTS=1"
    assert got == path.read_text(encoding="utf-8"), f"{name} differs from {path}"


@pytest.mark.parametrize("command", ["index", "query", "serve", "info", "eval"])
def test_help_matches_snapshot(command):
    result = runner.invoke(app, [command, "--help"], env=ENV, prog_name="mmsearch")
    assert result.exit_code == 0, result.output
    _matches_snapshot(f"help-{command}", result.output)


def test_results_table_matches_snapshot(readme_cli, monkeypatch):
    """The README's image-metadata index (``./shop``): relative paths, metadata, ranks."""
    monkeypatch.chdir(readme_cli.root)
    args = ["query", "red circle", "--index", "./shop", "--kind", "image", "--top", "5"]
    result = runner.invoke(app, [*args, "--mode", "vector", "--exact"], env=ENV)
    assert result.exit_code == 0, result.output
    _matches_snapshot("query-red-circle-shop", result.stdout)
