"""``mmsearch eval``: retrieval quality of an index (query set) or a model (captioned collection)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Captioned mode: open_clip architecture (default: ViT-B-32, or the --index's model).",
    ),
]


def is_query_set(path: Path) -> bool:
    """A JSONL file whose first object has ``query`` and ``relevant``."""
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    return isinstance(obj, dict) and "relevant" in obj and "query" in obj
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return False


def eval_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            help="Query set (.jsonl with query + relevant), or a captioned collection (COCO/Flickr30k Karpathy .json, .csv/.jsonl of image,caption)."
        ),
    ],
    index: Annotated[
        Path | None,
        typer.Option(
            "--index",
            "-i",
            help="Index to evaluate (query sets; default: $MMSEARCH_INDEX or ./.mmsearch).",
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Captioned mode: folder the image paths are relative to (default: the file's folder).",
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            "--split", help="Captioned mode: Karpathy split to use ('all' for every image)."
        ),
    ] = "test",
    model: ModelOpt = None,
    pretrained: Annotated[
        str | None,
        typer.Option("--pretrained", help="Captioned mode: open_clip tag or checkpoint file."),
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir",
            help="Captioned mode: keep the index built for the run here (default: temporary).",
        ),
    ] = None,
    depth: Annotated[
        int,
        typer.Option(
            "--depth",
            min=10,
            max=1000,
            help="Results retrieved per query (MRR and the recall@K curve go this deep).",
        ),
    ] = 50,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            "--variant", help="Only these variants (exact, ann, +rerank, +hybrid); repeatable."
        ),
    ] = None,
    worst: Annotated[
        int, typer.Option("--worst", min=0, help="Worst queries shown in the HTML report.")
    ] = 8,
    html_out: Annotated[
        Path | None,
        typer.Option(
            "--html", help="Write an HTML report (recall@K plot, worst queries with thumbnails)."
        ),
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print the figures as JSON (overall, variants, per query)."),
    ] = False,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", "-b", min=1, help="Captioned mode: items embedded per forward pass."
        ),
    ] = 64,
    device: Annotated[
        str | None, typer.Option("--device", help="Torch device: cuda, cpu (default: auto).")
    ] = None,
) -> None:
    """Measure retrieval quality: recall@1/5/10, MRR, nDCG@10 — exact vs ANN side by side."""
    from mmsearch.cli.common import console, err_console, reported_errors, resolve_index_dir
    from mmsearch.cli.progress import RichProgress, progress_bar

    with reported_errors():
        with progress_bar(err_console) as bar:
            progress = RichProgress(bar)
            progress.LABELS = {**progress.LABELS, "queries": "evaluating queries"}
            if is_query_set(source):
                report = _run_queries(
                    source, resolve_index_dir(index), depth, variant, worst, device, progress
                )
            else:
                report = _run_captioned(
                    source,
                    images,
                    split,
                    model,
                    pretrained,
                    index,
                    work_dir,
                    variant,
                    worst,
                    batch_size,
                    device,
                    progress,
                )
        if html_out is not None:
            from mmsearch.evaluation.report_html import write_html_report

            write_html_report(report, html_out, title=f"mmsearch eval: {source.name}")
    if json_out:
        sys.stdout.write(json.dumps(report.to_dict(), ensure_ascii=False) + "\n")
    else:
        console.print(figures_table(report))
        if report.classes:
            console.print(classes_table(report))
    for line in report.skipped[:10]:
        err_console.print(f"[yellow]skipped[/] {line}", markup=True, highlight=False)
    if len(report.skipped) > 10:
        err_console.print(f"  ... and {len(report.skipped) - 10} more")
    if html_out is not None:
        err_console.print(f"[green]report:[/] {html_out}")


def _run_queries(
    source: Path, index_dir: Path, depth: int, variant: Any, worst: int, device: Any, progress: Any
) -> Any:
    from mmsearch.engine import SearchIndex
    from mmsearch.evaluation.inputs import read_queries
    from mmsearch.evaluation.runner import evaluate_queries

    queries = read_queries(source)
    idx = SearchIndex(index_dir, device=device)
    return evaluate_queries(
        idx, queries, depth=depth, variants=variant, worst=worst, progress=progress
    )


def _run_captioned(
    source: Path,
    images: Any,
    split: str,
    model: Any,
    pretrained: Any,
    index: Path | None,
    work_dir: Any,
    variant: Any,
    worst: int,
    batch_size: int,
    device: Any,
    progress: Any,
) -> Any:
    from mmsearch.evaluation.inputs import read_captioned
    from mmsearch.maintenance.evaluate import evaluate_captioned
    from mmsearch.models.spec import ModelSpec

    if model is None and index is not None:
        from mmsearch.storage.objectstore import local_view
        from mmsearch.storage.table import ItemStore

        spec = ItemStore.open(local_view(index)).model_spec
    else:
        spec = ModelSpec.parse(model, pretrained)
    data = read_captioned(source, images, split=None if split == "all" else split)
    return evaluate_captioned(
        data,
        spec,
        device=device,
        work_dir=work_dir,
        variants=variant,
        worst=worst,
        batch_size=batch_size,
        progress=progress,
    )


def figures_table(report: Any) -> Any:
    """A rich table: one row per variant, one column per metric."""
    from rich.table import Table

    metrics = list(next(iter(report.figures.values()))) if report.figures else []
    table = Table(title=f"{report.model} · {report.n_queries} queries · {report.n_items} items")
    table.add_column("variant")
    for name in metrics:
        table.add_column(name.replace("_recall", " R"), justify="right")
    for name, values in report.figures.items():
        table.add_row(name, *(f"{values[m]:.4f}" for m in metrics))
    return table


def classes_table(report: Any) -> Any:
    """A rich table: per class of query, one row per variant (recall@10, MRR, hit@1, only@5)."""
    from rich.table import Table

    table = Table(title="per class of query")
    for name in ("class", "queries", "variant"):
        table.add_column(name, justify="right" if name == "queries" else "left")
    metrics = ("recall@10", "mrr", "hit@1", "only@5")
    for name in metrics:
        table.add_column(name, justify="right")
    for group, figures in report.classes.items():
        for i, (variant, values) in enumerate(figures.items()):
            table.add_row(
                group if i == 0 else "",
                str(report.class_sizes[group]) if i == 0 else "",
                variant,
                *(f"{values[m]:.4f}" for m in metrics),
                end_section=i == len(figures) - 1,
            )
    return table
