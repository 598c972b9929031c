"""``mmsearch index --reembed``: re-embed an index with another model, then index any new paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmsearch.models.spec import ModelSpec


def reembed_then_index(
    index_dir: Path,
    spec: ModelSpec,
    paths: list[Path],
    batch_size: int | None,
    workers: int | None,
    device: str | None,
    json_out: bool,
    strict: bool,
    *,
    quiet: bool = False,
    show_progress: bool = True,
) -> None:
    """Runs the re-embedding with a progress bar; then an incremental run over ``paths``.

    The summary counts rows of the index: ``updated`` every row re-embedded, ``added`` and
    ``deleted`` what the run over ``paths`` found new or gone. Files that run finds
    unchanged were re-embedded moments before, so they are not counted a second time.
    """
    import typer

    from mmsearch.cli.common import console, err_console, reported_errors
    from mmsearch.cli.progress import RichProgress, progress_bar
    from mmsearch.cli.render import print_failures, print_summary
    from mmsearch.indexer.options import index_options
    from mmsearch.indexer.pipeline import run_index
    from mmsearch.indexer.reembed import reembed_index
    from mmsearch.models import load_encoder

    with reported_errors():
        encoder = load_encoder(spec, device=device)  # type: ignore[arg-type]
        with progress_bar(err_console, show_progress) as bar:
            report = reembed_index(
                index_dir,
                spec,
                encoder=encoder,
                batch_size=batch_size,
                workers=workers,  # type: ignore[arg-type]
                progress=RichProgress(bar),
            )
            if paths:
                more = run_index(
                    paths,
                    index_dir,
                    spec,
                    options=index_options(batch_size=batch_size, workers=workers, device=device),
                    progress=RichProgress(bar),
                    encoder=encoder,
                )
                report.added, report.deleted = more.added, more.deleted
                report.failures += more.failures
                if any(info.get("mode") != "unchanged" for info in more.ann.values()):
                    report.ann = more.ann  # else keep the retrained indexes' figures
    if json_out:
        console.print_json(json.dumps(report.to_dict(), default=str))
    elif quiet:
        print_failures(report, err_console)
    else:
        print_summary(report, console, err_console)
    if strict and report.failed:
        raise typer.Exit(1)
