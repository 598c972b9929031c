"""Runs several ``mmsearch`` command lines in one process, in order, as the console script would.

Usage: ``python readme_cli_batch.py COMMANDS.json RESULTS.json``. COMMANDS.json is a list
of argv lists (``["mmsearch", "query", ...]``); RESULTS.json gets, per command, its exit
status and what it printed on stdout and stderr. One interpreter start for many
commands keeps the README tests fast; each command still goes through the full
command line (option parsing, output, exit status).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys


def run(argv: list[str]) -> dict[str, object]:
    """One command line through the ``mmsearch`` Typer app; its exit status and output."""
    from mmsearch.cli import app

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app(args=argv[1:], prog_name="mmsearch", standalone_mode=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return {"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with open(sys.argv[1], encoding="utf-8") as f:
        argvs = json.load(f)
    results = [run(argv) for argv in argvs]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
