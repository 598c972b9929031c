"""The ``mmsearch`` command line: the only place (with the server) that talks to people.

Commands live one module per concern in this package; this module assembles the
typer app and the console-script entry point (see :mod:`.common` for exit statuses).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from mmsearch.cli.data import demo_cmd, sample_data_cmd
from mmsearch.cli.evaluate import eval_cmd
from mmsearch.cli.finetune import finetune_cmd
from mmsearch.cli.help import CleanHelpGroup, use_clean_help
from mmsearch.cli.index import index_cmd
from mmsearch.cli.label import label_cmd
from mmsearch.cli.manage import build_index_cmd, check_cmd, info_cmd, remove_cmd, repair_cmd
from mmsearch.cli.query import query_cmd
from mmsearch.cli.serve import serve_cmd

app = typer.Typer(
    name="mmsearch",
    help="Cross-modal semantic search: index image folders and text collections with CLIP, then query them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=CleanHelpGroup,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"mmsearch {version('mmsearch')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("mmsearch (not installed)")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Cross-modal semantic search: index image folders and text collections with CLIP, then query them."""


app.command("index")(index_cmd)
app.command("query")(query_cmd)
app.command("build-index")(build_index_cmd)
app.command("info")(info_cmd)
app.command("remove")(remove_cmd)
app.command("serve")(serve_cmd)
app.command("check")(check_cmd)
app.command("repair")(repair_cmd)
app.command("sample-data")(sample_data_cmd)
app.command("demo")(demo_cmd)
app.command("eval")(eval_cmd)
app.command("label")(label_cmd)
app.command("finetune")(finetune_cmd)

use_clean_help(app)  # after the last command: PATHS... and untyped flags in --help


#: Commands that finish in one shot: once their output is flushed, the process ends
#: with os._exit, skipping an interpreter teardown that can take a second with torch,
#: ONNX Runtime and LanceDB loaded. Nothing is left to clean up: results are written,
#: indexes were only read, or (index) every commit is made, the snapshot published and
#: the writer lock released before the summary prints. ``index --ray`` keeps the normal
#: exit, which stops the local Ray cluster it started.
ONE_SHOT_COMMANDS = frozenset({"query", "info", "check", "index"})


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # LanceDB's native log lines (a commit it could not verify, ...) would come on top of
    # the one-line error that says what happened; LANCEDB_LOG=warn brings them back.
    os.environ.setdefault("LANCEDB_LOG", "error")
    one_shot = len(sys.argv) > 1 and (
        sys.argv[1] in ONE_SHOT_COMMANDS or sys.argv[1] in ("--help", "-h", "--version")
    )
    if "--ray" in sys.argv or any(arg.startswith("--ray=") for arg in sys.argv):
        one_shot = False
    if not one_shot:
        app()
        return
    from mmsearch.cli import common

    common.kept_until_exit = []  # released by os._exit below, never torn down one by one
    if sys.argv[1] == "query":  # one query, then exit: no pre-packing, no pandas (see faststart)
        from mmsearch.cli.faststart import prepare_one_shot_query

        prepare_one_shot_query()
    try:
        app(standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
