"""``--help`` reads like a well-kept command line: no Python types on flags or arguments."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mmsearch.cli import app

runner = CliRunner()
COMMANDS = [c.name for c in app.registered_commands]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_python_types(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for noise in ("<bool>", "<list["):
        assert noise not in result.output, (command, noise)
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage


def test_arguments_read_upper_case():
    usage = runner.invoke(app, ["index", "--help"], env={"COLUMNS": "200"}).output
    assert "Usage: mmsearch index [OPTIONS] PATHS..." in usage
    assert "PATHS..." in usage.split("Arguments", 1)[1]
    assert "Usage: mmsearch demo [OPTIONS] [OUT]" in runner.invoke(app, ["demo", "--help"]).output
