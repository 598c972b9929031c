"""``mmsearch index``: index image folders and text collections."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mmsearch.cli import common
from mmsearch.cli.common import (
    EXIT_ITEMS_FAILED,
    BackendOpt,
    DeviceOpt,
    IndexDirOpt,
    NoProgressOpt,
    QuantizeOpt,
    QuietOpt,
    WaitOpt,
    console,
    err_console,
    print_warnings,
    reported_errors,
    resolve_index_dir,
)
from mmsearch.errors import IndexingFailedError
from mmsearch.models.spec import DEFAULT_MODEL_NAME, ModelSpec


def index_cmd(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Image folders (recursive), text collections and product feeds (.csv .tsv .jsonl .parquet)."
        ),
    ],
    index: IndexDirOpt = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="open_clip architecture, or mmsearch-tiny (the bundled demo model).",
        ),
    ] = DEFAULT_MODEL_NAME,
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            help="open_clip tag, or a local checkpoint file (.safetensors preferred).",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            "-b",
            min=1,
            help="Images per forward pass (default: 64 on a CPU; fitted to free memory on a GPU). Texts: at least 256.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Image decode worker processes (default: CPU count, at most 8).",
        ),
    ] = None,
    device: DeviceOpt = None,
    backend: BackendOpt = "auto",
    quantize: QuantizeOpt = None,
    text_column: Annotated[
        str | None,
        typer.Option(
            "--text-column",
            help="Column holding the text of a text collection (default: auto: caption, text, title, ...).",
        ),
    ] = None,
    id_column: Annotated[
        str | None,
        typer.Option(
            "--id-column",
            help="Column holding row ids of a text collection (default: auto: id, ...).",
        ),
    ] = None,
    image_column: Annotated[
        str | None,
        typer.Option(
            "--image-column",
            help="Product feed: column holding the main image URL (default: auto: image_link, image, image_url, images).",
        ),
    ] = None,
    allow_private_urls: Annotated[
        bool,
        typer.Option(
            "--allow-private-urls",
            help="Product feed: fetch images from private, loopback and link-local hosts too (an internal image host).",
        ),
    ] = False,
    metadata: Annotated[
        Path | None,
        typer.Option(
            "--metadata",
            help="CSV/JSONL/Parquet describing the images: a file column (see --file-column) plus metadata columns.",
        ),
    ] = None,
    file_column: Annotated[
        str,
        typer.Option(
            "--file-column",
            help="Column of --metadata holding image paths, relative to the metadata file.",
        ),
    ] = "file",
    index_type: Annotated[
        str, typer.Option("--index-type", help="ANN index: auto, flat or ivfpq.")
    ] = "auto",
    no_ann: Annotated[
        bool,
        typer.Option(
            "--no-ann", help="Only write the table; build the ANN index later with build-index."
        ),
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Decode and embed on Ray Data: local (a cluster on this machine), auto (the cluster of `ray start`) or ray://HOST:10001.",
        ),
    ] = None,
    refine_dtype: Annotated[
        str,
        typer.Option(
            "--refine-dtype",
            help="ANN refine vectors: float32, or float16 (half the disk and page cache).",
        ),
    ] = "float32",
    gpu_decode: Annotated[
        bool | None,
        typer.Option(
            "--gpu-decode/--no-gpu-decode",
            help="Decode JPEGs on the GPU in batches (default: on when the model runs on CUDA).",
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit with status 1 when any item failed.")
    ] = False,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="Never contact the model hub: weights must be bundled, local or cached (also: HF_HUB_OFFLINE=1).",
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the run summary as JSON.")
    ] = False,
    quiet: QuietOpt = False,
    no_progress: NoProgressOpt = False,
    reembed: Annotated[
        bool,
        typer.Option(
            "--reembed",
            help="First re-embed every item already in the index with --model/--pretrained (e.g. a fine-tuned checkpoint), then index PATHS.",
        ),
    ] = False,
    rerank_model: Annotated[
        str | None,
        typer.Option(
            "--rerank-model",
            help="Record this ITM model as the index's re-ranking model (used by query --rerank and serve).",
        ),
    ] = None,
    wait: WaitOpt = 0.0,
) -> None:
    """Index image folders, text collections and product feeds (incremental: unchanged items are skipped).

    A .csv/.tsv/.jsonl/.parquet file with an image column is a product feed: one record
    per row (id, title/description as text, image_link + additional_image_link, the other
    columns as metadata); a later run adds new ids, updates changed rows and removes ids
    the feed no longer has.

    Exit status 1 when every item failed (or any, with --strict), 2 on an error.
    """
    if offline:  # before anything imports huggingface_hub, which reads it once
        os.environ["HF_HUB_OFFLINE"] = "1"
    from mmsearch.indexer.options import index_options
    from mmsearch.indexer.pipeline import run_index

    spec = ModelSpec.parse(model, pretrained)
    if reembed:
        from mmsearch.cli.reembed import reembed_then_index

        reembed_then_index(
            resolve_index_dir(index), spec, list(paths), batch_size, workers, device, json_out, strict,
            quiet=quiet, show_progress=not (quiet or no_progress),
        )  # fmt: skip
        return
    options = index_options(
        batch_size=batch_size, workers=workers, device=device, backend=backend, quantize=quantize,
        text_column=text_column, id_column=id_column, image_column=image_column,
        allow_private_urls=allow_private_urls, metadata=metadata, file_column=file_column,
        build_index=not no_ann, index_type=index_type, refine_dtype=refine_dtype, ray=ray,
        gpu_decode=gpu_decode, offline=offline, lock_wait_s=wait,
    )  # fmt: skip
    options.retain = common.kept_until_exit  # main() ends the run with os._exit: no teardown
    if ray is None:  # Ray Data speaks pandas; nothing else an index run does needs it
        from mmsearch.cli.faststart import arrow_without_pandas

        arrow_without_pandas()
    from mmsearch.cli.progress import RichProgress, progress_bar
    from mmsearch.cli.render import print_failures, print_summary

    with reported_errors():
        try:
            with progress_bar(err_console, not (quiet or no_progress)) as bar:
                report = run_index(
                    paths,
                    resolve_index_dir(index),
                    spec,
                    options=options,
                    progress=RichProgress(bar),
                )
        except IndexingFailedError as exc:  # every item failed: show which, then one line
            print_failures(exc.report, err_console)
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(EXIT_ITEMS_FAILED) from None
        if rerank_model:
            from mmsearch.rerank.config import record_rerank_model

            record_rerank_model(resolve_index_dir(index), rerank_model)
    if json_out:
        console.print_json(json.dumps(report.to_dict(), default=str))
    elif quiet:
        print_failures(report, err_console)
    else:
        print_summary(report, console, err_console)
    print_warnings(report.warnings)
    if strict and (report.failed or report.sweep_aborted):
        raise typer.Exit(EXIT_ITEMS_FAILED)
