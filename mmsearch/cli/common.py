"""What every command shares: consoles, the error-to-exit-status rule, common options.

Exit status: 0 success; 1 items failed (every item of an indexing run, or any one
with ``--strict``); 2 an error (:class:`mmsearch.errors.MMSearchError`, one red line);
3 a query found no results (``EXIT_NO_RESULTS``); 130 interrupted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from mmsearch.errors import MMSearchError

#: Exit status of a query that found nothing (scripts can tell it from an error).
EXIT_NO_RESULTS = 3
#: Exit status of an indexing run whose items failed (all of them, or any with --strict).
EXIT_ITEMS_FAILED = 1


#: Objects kept until the process ends: ``main`` makes this a list for the one-shot
#: commands it ends with ``os._exit``, whose model and table then need no teardown.
kept_until_exit: list[Any] | None = None
console = Console()
# soft_wrap: an error line is never broken inside a path or a suggested command.
err_console = Console(stderr=True, soft_wrap=True)
IndexDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--index",
        "-i",
        help="Index directory or object-store URI such as s3://bucket/prefix (default: $MMSEARCH_INDEX or ./.mmsearch).",
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="Torch device: cuda, cuda:1, cpu (default: auto).")
]
BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        help="Model runtime: torch, onnx (ONNX Runtime, CPU) or auto (onnx on a CPU when installed).",
    ),
]
QuantizeOpt = Annotated[
    str | None,
    typer.Option("--quantize", help="int8: dynamically quantised ONNX graphs (ONNX backend only)."),
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="Print only warnings and errors (no progress bar, no summary)."
    ),
]
NoProgressOpt = Annotated[
    bool, typer.Option("--no-progress", help="No progress bar (for logs and CI).")
]
WaitOpt = Annotated[
    float,
    typer.Option(
        "--wait",
        min=0,
        metavar="SECONDS",
        show_default=False,
        help="When another writer holds the index, wait up to this long for it to finish (default: stop at once).",
    ),
]


def print_warnings(warnings: list[str]) -> None:
    """Warnings of a command that succeeded (e.g. old files of a published index left behind)."""
    for line in warnings:
        err_console.print(f"[yellow]warning:[/] {escape(line)}")


def resolve_index_dir(value: Path | None) -> Path:
    """The ``--index`` given, else ``$MMSEARCH_INDEX`` or ``./.mmsearch``."""
    from mmsearch.storage.table import default_index_dir

    return value if value is not None else default_index_dir()


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turns library errors into one actionable line and exit status 2."""
    try:
        yield
    except MMSearchError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; committed work is kept, re-run to finish")
        raise typer.Exit(130) from None
