"""The ``mmsearch`` command line: the only place (with the server) that talks to people.

Library errors (:class:`mmsearch.errors.MMSearchError`) become one red line and exit
status 2; ``--strict`` indexing exits 1 when any item failed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from mmsearch.errors import MMSearchError
from mmsearch.models.spec import DEFAULT_MODEL_NAME, ModelSpec

app = typer.Typer(
    name="mmsearch",
    help="Cross-modal semantic search: index image folders and text collections with CLIP, then query them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

IndexDirOpt = Annotated[
    Path | None,
    typer.Option("--index", "-i", help="Index directory (default: $MMSEARCH_INDEX or ./.mmsearch)."),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="Torch device: cuda, cuda:1, cpu (default: auto).")]


def _index_dir(value: Path | None) -> Path:
    from mmsearch.storage import default_index_dir

    return value if value is not None else default_index_dir()


@contextmanager
def _errors() -> Iterator[None]:
    """Turns library errors into one actionable line and exit status 2."""
    try:
        yield
    except MMSearchError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; committed work is kept, re-run to finish")
        raise typer.Exit(130) from None


class _RichProgress:
    """Maps the pipeline's progress callbacks onto rich tasks (rate + ETA)."""

    LABELS = {"scan": "scanning", "images": "embedding images", "texts": "embedding texts", "ann": "building ANN index"}

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def __call__(self, stage: str, advance: int, more_total: int | None) -> None:
        task = self.tasks.get(stage)
        if task is None:
            task = self.progress.add_task(self.LABELS.get(stage, stage), total=more_total or 0)
            self.tasks[stage] = task
        elif more_total:
            current = self.progress.tasks[task].total or 0
            self.progress.update(task, total=current + more_total)
        if advance:
            self.progress.advance(task, advance)


class _RateColumn(ProgressColumn):
    """Items per second of a task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f}/s" if speed else "   -/s", style="cyan")


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
    )


@app.command("index")
def index_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image folders (recursive) and/or text collections (.csv .tsv .jsonl .parquet).")],
    index: IndexDirOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", help="open_clip architecture, or mmsearch-tiny (the bundled demo model).")] = DEFAULT_MODEL_NAME,
    pretrained: Annotated[str | None, typer.Option("--pretrained", help="open_clip tag, or a local checkpoint file (.safetensors preferred).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Items embedded per forward pass.")] = 64,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Image decode worker processes (default: CPU count, at most 8).")] = None,
    device: DeviceOpt = None,
    text_column: Annotated[str | None, typer.Option("--text-column", help="Column holding the text of a text collection (default: auto: caption, text, title, ...).")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="Column holding row ids of a text collection (default: auto: id, ...).")] = None,
    metadata: Annotated[Path | None, typer.Option("--metadata", help="CSV/JSONL/Parquet describing the images: a file column (see --file-column) plus metadata columns.")] = None,
    file_column: Annotated[str, typer.Option("--file-column", help="Column of --metadata holding image paths, relative to the metadata file.")] = "file",
    index_type: Annotated[str, typer.Option("--index-type", help="ANN index: auto, flat or ivfpq.")] = "auto",
    no_ann: Annotated[bool, typer.Option("--no-ann", help="Only write the table; build the ANN index later with build-index.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with status 1 when any item failed.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
    rerank_model: Annotated[str | None, typer.Option("--rerank-model", help="Record this ITM model as the index's re-ranking model (used by query --rerank and serve).")] = None,
) -> None:
    """Index image folders and text collections (incremental: unchanged files are skipped)."""
    from indexer.pipeline import IndexOptions, run_index

    spec = ModelSpec.parse(model, pretrained)
    options = IndexOptions(
        batch_size=batch_size,
        workers=workers,
        device=device,
        text_column=text_column,
        id_column=id_column,
        build_index=not no_ann,
        index_type=index_type,
        image_metadata=metadata,
        file_column=file_column,
    )
    with _errors():
        with _progress_bar() as bar:
            report = run_index(paths, _index_dir(index), spec, options=options, progress=_RichProgress(bar))
        if rerank_model:
            from mmsearch.rerank.config import record_rerank_model

            record_rerank_model(_index_dir(index), rerank_model)
    if json_out:
        console.print_json(json.dumps(report.to_dict(), default=str))
    else:
        _print_summary(report)
    if strict and (report.failed or report.sweep_aborted):
        raise typer.Exit(1)


def _print_summary(report: Any) -> None:
    table = Table(title="index summary", show_header=False, box=None)
    for label, name in (("added", "added"), ("updated", "updated"), ("deleted", "deleted"),
                        ("skipped (unchanged)", "unchanged"), ("failed", "failed")):
        table.add_row(label, str(getattr(report, name)))
    table.add_row("embedded", f"{report.embedded} ({report.items_per_s:.1f} items/s over {report.elapsed_s:.1f}s)")
    for kind, info in report.ann.items():
        table.add_row(escape(f"ann[{kind}]"), f"{info.get('type')} n={info.get('n')} ({info.get('mode', '')})")
    console.print(table)
    if report.failures:
        err_console.print(f"[yellow]{report.failed} item(s) skipped[/]; details: {escape(str(report.report_path))}")
        for failure in report.failures[:10]:
            where = failure.path + (f" row {failure.row_number}" if failure.row_number else "")
            err_console.print(f"  [yellow]skip[/] {escape(where)}: {escape(failure.reason)} ({failure.exc_class})")
        if report.failed > 10:
            err_console.print(f"  ... and {report.failed - 10} more")
    for root in report.sweep_aborted:
        err_console.print(
            f"[yellow]warning:[/] {escape(root)} could not be fully read; deleted files were NOT removed from the index"
        )


def _result_table(results: list[Any]) -> Table:
    table = Table(show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("kind")
    table.add_column("uri / text", overflow="fold")
    table.add_column("metadata", overflow="fold")
    for hit in results:
        shown = hit.text if hit.kind == "text" and hit.text else hit.uri
        meta = {k: v for k, v in hit.metadata.items() if k not in ("filename",)}
        keys = ("sku", "category", "colour", "shape", "position", "price")
        brief = ", ".join(f"{k}={meta[k]}" for k in keys if k in meta) or ", ".join(
            f"{k}={v}" for k, v in list(meta.items())[:4]
        )
        table.add_row(str(hit.rank), f"{hit.score:.4f}", hit.kind, escape(str(shown)), escape(brief))
    return table


@app.command("query")
def query_cmd(
    query: Annotated[str, typer.Argument(help='Text, an image path, or a mix: \'"2:red dress" + ./ref.jpg - "stripes"\'.')],
    index: IndexDirOpt = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, max=10000, help="Number of results.")] = 10,
    kind: Annotated[str, typer.Option("--kind", help="Result kind: image, text or any.")] = "any",
    json_out: Annotated[bool, typer.Option("--json", help="Print results as a JSON list.")] = False,
    paths_only: Annotated[bool, typer.Option("--paths-only", "-f", help="Print only the uri (or text) of each hit, one per line.")] = False,
    exact: Annotated[bool, typer.Option("--exact", help="Exact search: bypass the ANN index.")] = False,
    nprobe: Annotated[int | None, typer.Option("--nprobe", min=1, help="IVF lists probed (default: tuned at build).")] = None,
    refine: Annotated[int | None, typer.Option("--refine", min=1, help="Candidates re-scored exactly, as a multiple of --top.")] = None,
    where: Annotated[list[str] | None, typer.Option("--where", "-w", help="Metadata filter 'column op value' (op: = != < <= > >= in contains); repeatable, ANDed.")] = None,
    device: DeviceOpt = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="Re-rank the first stage's best candidates with a BLIP image-text-matching model.")] = False,
    rerank_depth: Annotated[int, typer.Option("--rerank-depth", min=1, max=10000, help="Candidates re-ranked.")] = 50,
    min_match: Annotated[float | None, typer.Option("--min-match", min=0.0, max=1.0, help="Lowest match probability kept (with --rerank); none above it gives an empty answer.")] = None,
    rerank_model: Annotated[str | None, typer.Option("--rerank-model", help="ITM model: mmsearch-tiny-itm, a local folder or a Hugging Face id (default: the one recorded with index --rerank-model, else Salesforce/blip-itm-base-coco).")] = None,
) -> None:
    """Search an index with text, an image, or a weighted mix of both."""
    from mmsearch.engine import SearchIndex

    empty_reason = None
    with _errors():
        idx = SearchIndex(_index_dir(index), device=device)
        if rerank:
            from mmsearch.rerank import load_reranker
            from mmsearch.rerank.config import rerank_model_for
            from mmsearch.rerank.search import rerank_search

            model_name = rerank_model_for(idx.index_dir, rerank_model)
            reranker = load_reranker(model_name, depth=rerank_depth, min_match=min_match, device=device)
            outcome = rerank_search(idx, query, reranker, k=top, kind=kind, where=where, exact=exact, nprobe=nprobe, refine=refine)
            results, empty_reason = outcome.results, outcome.empty_reason
            for gone in outcome.dropped:
                err_console.print(f"[yellow]skipped:[/] {escape(gone.uri)}: {escape(gone.reason)}")
        else:
            results = idx.search(query, k=top, kind=kind, exact=exact, nprobe=nprobe, refine=refine, where=where)  # type: ignore[arg-type]
        stale = idx.stale
    if empty_reason and not json_out:
        err_console.print(f"[yellow]{escape(empty_reason)}[/]")
    if json_out:
        sys.stdout.write(json.dumps([r.to_dict() for r in results], ensure_ascii=False) + "\n")
    elif paths_only:
        for hit in results:
            sys.stdout.write(f"{hit.text if hit.kind == 'text' else hit.uri}\n")
    else:
        console.print(_result_table(results))
    if stale:
        err_console.print("[yellow]note:[/] the index has changes newer than its search index; run mmsearch build-index")


@app.command("build-index")
def build_index_cmd(
    index: IndexDirOpt = None,
    index_type: Annotated[str, typer.Option("--index-type", help="auto, flat or ivfpq.")] = "auto",
    target_recall: Annotated[float, typer.Option("--target-recall", min=0.1, max=1.0, help="recall@10 the tuner aims for.")] = 0.95,
    retrain: Annotated[bool, typer.Option("--retrain", help="Retrain the IVF-PQ quantizers from scratch.")] = False,
) -> None:
    """(Re)build the ANN index of an index directory from its table."""
    from indexer.ann_build import build_ann
    from mmsearch.storage import ItemStore, index_write_lock

    with _errors():
        store = ItemStore.open(_index_dir(index))
        with index_write_lock(store.index_dir), _progress_bar() as bar:
            infos = build_ann(
                store, store.model_spec, index_type=index_type, target_recall=target_recall,
                retrain=retrain, progress=_RichProgress(bar),
            )
    for kind, info in infos.items():
        console.print(f"[green]built[/] {kind}: {escape(json.dumps(info, default=str))}")


@app.command("info")
def info_cmd(
    index: IndexDirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show an index: rows, model, ANN type and parameters, tuned nprobe, measured recall."""
    from mmsearch.engine import SearchIndex

    with _errors():
        info = SearchIndex(_index_dir(index)).info()
    if json_out:
        sys.stdout.write(json.dumps(info, default=str) + "\n")
        return
    table = Table(show_header=False, box=None)
    for key, value in info.items():
        if key != "ann":
            table.add_row(key, str(value))
    for kind, ann in info["ann"].items():
        for key, value in ann.items():
            table.add_row(f"ann[{kind}].{key}", escape(str(value)))
    console.print(table)


@app.command("serve")
def serve_cmd(
    index: IndexDirOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    image_root: Annotated[list[Path] | None, typer.Option("--image-root", help="Folders query image paths may come from (repeatable; default: none).")] = None,
    allow_urls: Annotated[bool, typer.Option("--allow-urls", help="Allow image-URL queries (public http(s) addresses only).")] = False,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.1, help="Largest accepted upload.")] = 10.0,
    device: DeviceOpt = None,
    rerank_model: Annotated[str | None, typer.Option("--rerank-model", help="ITM model for rerank=true requests: mmsearch-tiny-itm, a local folder or a Hugging Face id (default Salesforce/blip-itm-base-coco).")] = None,
) -> None:
    """Serve the HTTP API and the web gallery for an index."""
    import uvicorn

    from mmsearch.server import ServerConfig, create_app

    config = ServerConfig(
        index_dir=_index_dir(index),
        device=device,
        image_roots=list(image_root or []),
        allow_urls=allow_urls,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        rerank_model=rerank_model,
    )
    with _errors():
        from mmsearch.engine import SearchIndex

        # Fail fast with one clear line, and load the model now rather than on the
        # first request; the server reuses this encoder.
        config.encoder = SearchIndex(config.index_dir, device=device).encoder
    err_console.print(f"serving {escape(str(config.index_dir))} on http://{host}:{port}")
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")


@app.command("sample-data")
def sample_data_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the catalog into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of items.")] = 400,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same bytes).")] = 0,
    corrupt: Annotated[int, typer.Option("--corrupt", min=0, help="Also write this many corrupt image files.")] = 0,
    scenes: Annotated[str, typer.Option("--scenes", help="single (one object), pairs (two objects side by side) or mixed.")] = "single",
) -> None:
    """Generate the synthetic product catalog (images + catalog.jsonl/csv)."""
    from mmsearch.datasets.synthetic import SCENES, generate_catalog

    if scenes not in SCENES:
        raise typer.BadParameter(f"choose one of {', '.join(SCENES)}", param_hint="--scenes")
    info = generate_catalog(out, n=n, seed=seed, corrupt=corrupt, scenes=scenes)
    console.print(f"wrote {info.n} items to {escape(str(out))} ({escape(str(info.jsonl_path))}, {escape(str(info.csv_path))})")


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Argument(help="Working folder for the demo catalog, index and HTML page.")] = Path("demo-out"),
    n: Annotated[int, typer.Option("--n", min=10, help="Catalog size.")] = 400,
    device: DeviceOpt = None,
) -> None:
    """Generate a sample catalog, index it with mmsearch-tiny, run queries, write an HTML gallery."""
    from mmsearch.demo import run_demo

    with _errors():
        with _progress_bar() as bar:
            demo = run_demo(out, n=n, device=device, progress=_RichProgress(bar))
    _print_summary(demo.report)
    for query, kind, results in demo.queries:
        console.rule(f"[bold]{escape(query)}[/] → {kind}")
        console.print(_result_table(results))
    console.print(f"[green]gallery:[/] {escape(str(demo.html_path))}")


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
