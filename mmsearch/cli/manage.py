"""``mmsearch build-index``, ``info``, ``remove`` and ``check``: look after an index."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mmsearch.cli.common import (
    IndexDirOpt,
    NoProgressOpt,
    QuietOpt,
    console,
    err_console,
    reported_errors,
    resolve_index_dir,
)


def build_index_cmd(
    index: IndexDirOpt = None,
    index_type: Annotated[str, typer.Option("--index-type", help="auto, flat or ivfpq.")] = "auto",
    target_recall: Annotated[
        float,
        typer.Option("--target-recall", min=0.1, max=1.0, help="recall@10 the tuner aims for."),
    ] = 0.95,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Retrain the IVF-PQ quantizers from scratch.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print each kind's ANN index description as JSON.")
    ] = False,
    quiet: QuietOpt = False,
    no_progress: NoProgressOpt = False,
) -> None:
    """(Re)build the ANN index of an index directory from its table."""
    from mmsearch.cli.progress import RichProgress, progress_bar
    from mmsearch.indexer.ann_build import rebuild_ann

    with reported_errors(), progress_bar(err_console, not (quiet or no_progress)) as bar:
        infos = rebuild_ann(
            resolve_index_dir(index), index_type=index_type, target_recall=target_recall,
            retrain=retrain, progress=RichProgress(bar),
        )  # fmt: skip
    if json_out:
        sys.stdout.write(json.dumps(infos, default=str) + "\n")
    elif not quiet:
        from mmsearch.cli.render import ann_summary

        for kind, info in infos.items():
            console.print(f"[green]{escape(kind)}[/]: {escape(ann_summary(info))}")


def info_cmd(
    index: IndexDirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show an index: rows, model, ANN parameters, sources, disk use and the last run."""
    from mmsearch.maintenance.info import index_info
    from mmsearch.maintenance.usage import disk_usage, indexed_sources, last_run

    index_dir = resolve_index_dir(index)
    with reported_errors():
        info = index_info(index_dir)
        info["sources"] = indexed_sources(index_dir)
    info["disk_bytes"] = disk_usage(index_dir)
    info["last_run"] = last_run(index_dir)
    if json_out:
        sys.stdout.write(json.dumps(info, default=str) + "\n")
        return
    from mmsearch.cli.render import info_table

    console.print(info_table(info))


def remove_cmd(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Image files, folders (everything under them) or text collections to drop from the index."
        ),
    ],
    index: IndexDirOpt = None,
) -> None:
    """Remove items from an index, then update its ANN index (files stay on disk)."""
    from mmsearch.cli.render import display_path
    from mmsearch.indexer.remove import remove_paths

    with reported_errors():
        report = remove_paths(paths, resolve_index_dir(index))
    for path, count in report.removed.items():
        console.print(f"removed {count} item(s) under {escape(display_path(path))}")


def check_cmd(
    index: IndexDirOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the changed items as JSON.")
    ] = False,
) -> None:
    """Verify an index: ANN file checksums and ids against the table, then list indexed
    images the server would refuse (changed, moved, replaced by links, or gone)."""
    from mmsearch.maintenance.info import check_index
    from mmsearch.serve.files import check_index_files

    with reported_errors():
        verified = check_index(resolve_index_dir(index))
        checked, changed = check_index_files(resolve_index_dir(index))
    if json_out:
        rows = [{"id": c.id, "path": c.path, "reason": c.reason} for c in changed]
        sys.stdout.write(
            json.dumps(
                {"verified": verified, "checked": checked, "changed": rows}, ensure_ascii=False
            )
            + "\n"
        )
    else:
        for kind, rows_checked in verified.items():
            console.print(
                f"[green]ok[/] {kind}: {rows_checked} rows; ANN files match their checksums and the table"
            )
        for item in changed:
            console.print(
                f"[yellow]changed since indexing:[/] {escape(item.path)}: {escape(item.reason)} (item id {item.id})"
            )
        style = "green" if not changed else "yellow"
        console.print(f"[{style}]{checked} image(s) checked, {len(changed)} changed since indexing[/]"
                      + ("; re-run mmsearch index on their folders" if changed else ""))  # fmt: skip
    if changed:
        raise typer.Exit(1)
