"""``mmsearch build-index``, ``info``, ``remove``, ``check`` and ``repair``: look after an index.

Each takes ``--index`` as a folder or an object-store URI (``s3://bucket/prefix``).
"""

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
    WaitOpt,
    console,
    err_console,
    print_warnings,
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
    wait: WaitOpt = 0.0,
) -> None:
    """(Re)build the ANN index of an index directory from its table."""
    from mmsearch.cli.progress import RichProgress, progress_bar
    from mmsearch.indexer.ann_build import rebuild_ann

    warnings: list[str] = []
    with reported_errors(), progress_bar(err_console, not (quiet or no_progress)) as bar:
        infos = rebuild_ann(
            resolve_index_dir(index), index_type=index_type, target_recall=target_recall,
            retrain=retrain, progress=RichProgress(bar), wait_s=wait, warnings=warnings,
        )  # fmt: skip
    print_warnings(warnings)
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

    with reported_errors():
        info = index_info(resolve_index_dir(index))
        local = info.pop("local_dir")  # an object-store index: its reader cache
        info["sources"] = indexed_sources(local)
    info["disk_bytes"] = disk_usage(local)
    info["last_run"] = last_run(local)
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
    wait: WaitOpt = 0.0,
) -> None:
    """Remove items from an index, then update its ANN index (files stay on disk)."""
    from mmsearch.cli.render import display_path
    from mmsearch.indexer.remove import remove_paths

    with reported_errors():
        report = remove_paths(paths, resolve_index_dir(index), wait_s=wait)
    for path, count in report.removed.items():
        console.print(f"removed {count} item(s) under {escape(display_path(path))}")
    print_warnings(report.warnings)


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
    from mmsearch.storage.objectstore import local_view

    with reported_errors():
        local = local_view(resolve_index_dir(index))  # an object-store index: its reader cache
        verified = check_index(local)
        checked, changed = check_index_files(local)
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


def repair_cmd(
    index: IndexDirOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report what is wrong; change nothing.")
    ] = False,
    quiet: QuietOpt = False,
    no_progress: NoProgressOpt = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Mend an index: drop duplicate rows of one item, give fresh ids to items that share
    one, and rebuild the ANN index from the table (nothing is embedded again)."""
    from mmsearch.cli.progress import RichProgress, progress_bar
    from mmsearch.maintenance.repair import repair_index

    with reported_errors(), progress_bar(err_console, not (quiet or no_progress)) as bar:
        report = repair_index(
            resolve_index_dir(index), dry_run=dry_run, wait_s=wait, progress=RichProgress(bar)
        )
    if quiet:
        print_warnings(report.warnings)
        return
    found = [
        f"{report.duplicate_uris} duplicate row(s) of one item",
        f"{report.duplicate_ids} item(s) sharing another's id",
        f"ANN index: {report.ann_problem or 'in step with the table'}",
    ]
    console.print(f"{report.rows} rows checked: " + "; ".join(escape(f) for f in found))
    if report.healthy:
        console.print("[green]nothing to repair[/]")
    elif dry_run:
        console.print("[yellow]not repaired (--dry-run)[/]")
    else:
        done = "table rewritten (one commit), " if report.rewritten else ""
        console.print(f"[green]repaired:[/] {done}ANN index rebuilt from the table and published")
    print_warnings(report.warnings)
