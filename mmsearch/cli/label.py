"""``mmsearch label``: zero-shot labels for the images of an index."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def label_cmd(
    labels: Annotated[
        str, typer.Option("--labels", "-l", help='Comma-separated label names: "shirt,dress,shoe".')
    ],
    index: Annotated[
        Path | None,
        typer.Option(
            "--index", "-i", help="Index directory (default: $MMSEARCH_INDEX or ./.mmsearch)."
        ),
    ] = None,
    template: Annotated[
        list[str] | None,
        typer.Option(
            "--template",
            "-t",
            help='Prompt template with {} for the label; repeatable, averaged (default: 8 "a photo of a {}." variants).',
        ),
    ] = None,
    column: Annotated[
        str,
        typer.Option(
            "--column",
            "-c",
            help="Metadata column for the best label (its probability goes to <column>_prob).",
        ),
    ] = "category_zs",
    device: Annotated[
        str | None, typer.Option("--device", help="Torch device: cuda, cpu (default: auto).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the label counts as JSON.")
    ] = False,
) -> None:
    """Zero-shot classify every indexed image; new images are labelled on later index runs."""
    from rich.table import Table

    from mmsearch.cli.common import console, err_console, reported_errors, resolve_index_dir
    from mmsearch.cli.progress import RichProgress, progress_bar
    from mmsearch.indexer.labels import label_index
    from mmsearch.labels import DEFAULT_TEMPLATES, LabelSet

    with reported_errors():
        label_set = LabelSet(column, tuple(labels.split(",")), tuple(template or DEFAULT_TEMPLATES))
        with progress_bar(err_console) as bar:
            progress = RichProgress(bar)
            progress.LABELS = {**progress.LABELS, "labels": "labelling images"}
            report = label_index(
                resolve_index_dir(index), label_set, device=device, progress=progress
            )
    if json_out:
        sys.stdout.write(
            json.dumps(
                {"column": report.column, "labelled": report.labelled, "counts": report.counts}
            )
            + "\n"
        )
        return
    table = Table(title=f"{report.labelled} images labelled in {column}")
    table.add_column("label")
    table.add_column("images", justify="right")
    for name in label_set.labels:
        table.add_row(name, str(report.counts.get(name, 0)))
    console.print(table)
