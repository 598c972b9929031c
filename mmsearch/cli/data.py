"""``mmsearch sample-data`` and ``mmsearch demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mmsearch.cli.common import (
    DeviceOpt,
    NoProgressOpt,
    console,
    err_console,
    reported_errors,
)


def sample_data_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the catalog into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of items.")] = 400,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same bytes).")] = 0,
    corrupt: Annotated[
        int, typer.Option("--corrupt", min=0, help="Also write this many corrupt image files.")
    ] = 0,
    scenes: Annotated[
        str,
        typer.Option(
            "--scenes", help="single (one object), pairs (two objects side by side) or mixed."
        ),
    ] = "single",
) -> None:
    """Generate the synthetic product catalog (images + catalog.jsonl/csv)."""
    from mmsearch.datasets.synthetic import SCENES, generate_catalog

    if scenes not in SCENES:
        raise typer.BadParameter(f"choose one of {', '.join(SCENES)}", param_hint="--scenes")
    info = generate_catalog(out, n=n, seed=seed, corrupt=corrupt, scenes=scenes)
    console.print(
        f"wrote {info.n} items to {escape(str(out))} ({escape(str(info.jsonl_path))}, {escape(str(info.csv_path))})"
    )


def demo_cmd(
    out: Annotated[
        Path, typer.Argument(help="Working folder for the demo catalog, index and HTML page.")
    ] = Path("demo-out"),
    n: Annotated[int, typer.Option("--n", min=10, help="Catalog size.")] = 400,
    device: DeviceOpt = None,
    no_progress: NoProgressOpt = False,
) -> None:
    """Generate a sample catalog, index it with mmsearch-tiny, run queries, write an HTML gallery."""
    from mmsearch.cli.demo import run_demo
    from mmsearch.cli.progress import RichProgress, progress_bar
    from mmsearch.cli.render import print_summary, result_table

    with reported_errors():
        with progress_bar(err_console, not no_progress) as bar:
            demo = run_demo(out, n=n, device=device, progress=RichProgress(bar))
    print_summary(demo.report, console, err_console)
    for query, kind, results in demo.queries:
        console.rule(f"[bold]{escape(query)}[/] → {kind}")
        console.print(result_table(results, width=console.width))
    console.print(f"[green]gallery:[/] {escape(str(demo.html_path))}")
