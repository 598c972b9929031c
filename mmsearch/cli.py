"""The ``mmsearch`` command line: the only place (with the server) that talks to people.

Exit status: 0 success; 1 items failed (every item of an indexing run, or any one
with ``--strict``); 2 an error (:class:`mmsearch.errors.MMSearchError`, one red line);
3 a query found no results (``EXIT_NO_RESULTS``); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mmsearch.cli_help import use_clean_help
from mmsearch.errors import IndexingFailedError, MMSearchError
from mmsearch.models.spec import DEFAULT_MODEL_NAME, ModelSpec
from mmsearch.search.limits import DEFAULT_KIND, MAX_K, MAX_OFFSET

#: Exit status of a query that found nothing (scripts can tell it from an error).
EXIT_NO_RESULTS = 3
#: Exit status of an indexing run whose items failed (all of them, or any with --strict).
EXIT_ITEMS_FAILED = 1

app = typer.Typer(
    name="mmsearch",
    help="Cross-modal semantic search: index image folders and text collections with CLIP, then query them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
# soft_wrap: an error line is never broken inside a path or a suggested command.
err_console = Console(stderr=True, soft_wrap=True)

IndexDirOpt = Annotated[
    Path | None,
    typer.Option("--index", "-i", help="Index directory or object-store URI such as s3://bucket/prefix (default: $MMSEARCH_INDEX or ./.mmsearch)."),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="Torch device: cuda, cuda:1, cpu (default: auto).")]
BackendOpt = Annotated[str, typer.Option("--backend", help="Model runtime: torch, onnx (ONNX Runtime, CPU) or auto (onnx on a CPU when installed).")]
QuantizeOpt = Annotated[str | None, typer.Option("--quantize", help="int8: dynamically quantised ONNX graphs (ONNX backend only).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings and errors (no progress bar, no summary).")]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="No progress bar (for logs and CI).")]


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


@app.command("index")
def index_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image folders (recursive) and/or text collections (.csv .tsv .jsonl .parquet).")],
    index: IndexDirOpt = None,
    model: Annotated[str, typer.Option("--model", "-m", help="open_clip architecture, or mmsearch-tiny (the bundled demo model).")] = DEFAULT_MODEL_NAME,
    pretrained: Annotated[str | None, typer.Option("--pretrained", help="open_clip tag, or a local checkpoint file (.safetensors preferred).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass (default: 64 on a CPU; fitted to free memory on a GPU). Texts: at least 256.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Image decode worker processes (default: CPU count, at most 8).")] = None,
    device: DeviceOpt = None,
    backend: BackendOpt = "auto",
    quantize: QuantizeOpt = None,
    text_column: Annotated[str | None, typer.Option("--text-column", help="Column holding the text of a text collection (default: auto: caption, text, title, ...).")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="Column holding row ids of a text collection (default: auto: id, ...).")] = None,
    metadata: Annotated[Path | None, typer.Option("--metadata", help="CSV/JSONL/Parquet describing the images: a file column (see --file-column) plus metadata columns.")] = None,
    file_column: Annotated[str, typer.Option("--file-column", help="Column of --metadata holding image paths, relative to the metadata file.")] = "file",
    index_type: Annotated[str, typer.Option("--index-type", help="ANN index: auto, flat or ivfpq.")] = "auto",
    no_ann: Annotated[bool, typer.Option("--no-ann", help="Only write the table; build the ANN index later with build-index.")] = False,
    ray: Annotated[str | None, typer.Option("--ray", metavar="ADDRESS", help="Decode and embed on Ray Data: local (a cluster on this machine), auto (the cluster of `ray start`) or ray://HOST:10001.")] = None,
    refine_dtype: Annotated[str, typer.Option("--refine-dtype", help="ANN refine vectors: float32, or float16 (half the disk and page cache).")] = "float32",
    gpu_decode: Annotated[bool | None, typer.Option("--gpu-decode/--no-gpu-decode", help="Decode JPEGs on the GPU in batches (default: on when the model runs on CUDA).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with status 1 when any item failed.")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="Never contact the model hub: weights must be bundled, local or cached (also: HF_HUB_OFFLINE=1).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
    quiet: QuietOpt = False,
    no_progress: NoProgressOpt = False,
    reembed: Annotated[bool, typer.Option("--reembed", help="First re-embed every item already in the index with --model/--pretrained (e.g. a fine-tuned checkpoint), then index PATHS.")] = False,
    rerank_model: Annotated[str | None, typer.Option("--rerank-model", help="Record this ITM model as the index's re-ranking model (used by query --rerank and serve).")] = None,
) -> None:
    """Index image folders and text collections (incremental: unchanged files are skipped).

    Exit status 1 when every item failed (or any, with --strict), 2 on an error.
    """
    if offline:  # before anything imports huggingface_hub, which reads it once
        os.environ["HF_HUB_OFFLINE"] = "1"
    from mmsearch.indexer.pipeline import IndexOptions, run_index

    spec = ModelSpec.parse(model, pretrained)
    if reembed:
        from mmsearch.commands.reembed import reembed_then_index

        reembed_then_index(_index_dir(index), spec, list(paths), batch_size, workers, device, json_out, strict)
        return
    options = IndexOptions(
        batch_size=batch_size,
        workers=workers,
        device=device,
        backend=backend,
        quantize=quantize,
        text_column=text_column,
        id_column=id_column,
        build_index=not no_ann,
        index_type=index_type,
        image_metadata=metadata,
        file_column=file_column,
        offline=offline,
        ray=ray,
        refine_dtype=refine_dtype,
        gpu_decode=gpu_decode,
    )
    from mmsearch.progress import RichProgress, progress_bar
    from mmsearch.render import print_failures, print_summary

    with _errors():
        try:
            with progress_bar(err_console, not (quiet or no_progress)) as bar:
                report = run_index(paths, _index_dir(index), spec, options=options, progress=RichProgress(bar))
        except IndexingFailedError as exc:  # every item failed: show which, then one line
            print_failures(exc.report, err_console)
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(EXIT_ITEMS_FAILED) from None
        if rerank_model:
            from mmsearch.rerank.config import record_rerank_model

            record_rerank_model(_index_dir(index), rerank_model)
    if json_out:
        console.print_json(json.dumps(report.to_dict(), default=str))
    elif quiet:
        print_failures(report, err_console)
    else:
        print_summary(report, console, err_console)
    if strict and (report.failed or report.sweep_aborted):
        raise typer.Exit(EXIT_ITEMS_FAILED)


@app.command("query")
def query_cmd(
    query: Annotated[str, typer.Argument(help='Text, an image path, or a mix: \'"2:red dress" + ./ref.jpg - "stripes"\'.')],
    index: IndexDirOpt = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, max=MAX_K, help="Number of results.")] = 10,
    offset: Annotated[int, typer.Option("--offset", min=0, max=MAX_OFFSET, help="Skip this many results (paging).")] = 0,
    kind: Annotated[str, typer.Option("--kind", help="Result kind: image, text or any (any ranks each kind fairly).")] = DEFAULT_KIND,
    mode: Annotated[str | None, typer.Option("--mode", help="vector, lexical or hybrid (default: hybrid when the index has a full-text index and the query has text).")] = None,
    fusion: Annotated[str, typer.Option("--fusion", help="How hybrid merges its legs: rrf (reciprocal rank) or weighted.")] = "rrf",
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Weight of the vector leg with --fusion weighted.")] = 0.7,
    literal: Annotated[bool, typer.Option("--literal", help="Take the whole argument as one text term (no + / - / path parsing).")] = False,
    group_by: Annotated[str | None, typer.Option("--group-by", help="Best hit per value of this metadata key (e.g. sku).")] = None,
    dedup: Annotated[float | None, typer.Option("--dedup", min=0.0, max=1.0, help="Fold hits within this cosine of a better hit (e.g. 0.97).")] = None,
    min_score: Annotated[float | None, typer.Option("--min-score", help="Drop hits whose cosine similarity (BM25 score in lexical mode) is below this.")] = None,
    cutoff: Annotated[bool, typer.Option("--cutoff", help="Hybrid: print 'no good match' when no hit beats the index's chance level and no word matched.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print results as a JSON list.")] = False,
    paths_only: Annotated[bool, typer.Option("--paths-only", "-f", help="Print only the uri (or text) of each hit, one per line.")] = False,
    exact: Annotated[bool, typer.Option("--exact", help="Exact search: bypass the ANN index.")] = False,
    nprobe: Annotated[int | None, typer.Option("--nprobe", min=1, help="IVF lists probed (default: tuned at build).")] = None,
    refine: Annotated[int | None, typer.Option("--refine", min=1, help="Candidates re-scored exactly, as a multiple of --top.")] = None,
    where: Annotated[list[str] | None, typer.Option("--where", "-w", help="Metadata filter 'column op value' (op: = != < <= > >= in contains); repeatable, ANDed.")] = None,
    preview: Annotated[bool, typer.Option("--preview", "-p", help="Show image hits inline (kitty, iTerm2, WezTerm; MMSEARCH_PREVIEW=kitty|iterm|none overrides).")] = False,
    device: DeviceOpt = None,
    backend: BackendOpt = "auto",
    quantize: QuantizeOpt = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="Re-rank the first stage's best candidates with a BLIP image-text-matching model.")] = False,
    rerank_depth: Annotated[int, typer.Option("--rerank-depth", min=1, max=10000, help="Candidates re-ranked.")] = 50,
    min_match: Annotated[float | None, typer.Option("--min-match", min=0.0, max=1.0, help="Lowest match probability kept (with --rerank); none above it gives an empty answer.")] = None,
    rerank_blend: Annotated[float | None, typer.Option("--rerank-blend", min=0.0, max=1.0, help="Weight of the match probability against the first-stage score (default: the rerank model's own, else 1).")] = None,
    rerank_model: Annotated[str | None, typer.Option("--rerank-model", help="ITM model: mmsearch-tiny-itm, a local folder or a Hugging Face id (default: the one recorded with index --rerank-model, else Salesforce/blip-itm-base-coco).")] = None,
) -> None:
    """Search an index with text, an image, or a weighted mix of both.

    Exit status 3 when nothing matched ("no results (reason)" on stderr), 2 on an error.
    """
    from mmsearch.engine import SearchIndex

    empty_reason = None
    with _errors():
        idx = SearchIndex(_index_dir(index), device=device, backend=backend, quantize=quantize)
        spec = None
        if rerank:
            from mmsearch.rerank import attach_reranker
            from mmsearch.search.types import RerankSpec

            attach_reranker(idx, rerank_model, device=device)
            spec = RerankSpec(depth=rerank_depth, min_match=min_match, blend=rerank_blend)
        results = idx.search(
            query, k=top, offset=offset, kind=kind, mode=mode, fusion=fusion, alpha=alpha, literal=literal,  # type: ignore[arg-type]
            group_by=group_by, dedup=dedup, min_score=min_score, cutoff=cutoff, exact=exact, nprobe=nprobe, refine=refine, where=where,
            rerank=spec or False,
        )  # fmt: skip
        if spec is not None:
            for gone in idx.reranker.dropped:
                err_console.print(f"[yellow]skipped:[/] {escape(gone.uri)}: {escape(gone.reason)}")
            if not results and min_match is not None:
                empty_reason = f"no good match: no candidate reached match probability {min_match:.2f}"
        stale = idx.stale
        kinds = list(idx.info()["ann"]) if not results else []
    from mmsearch.render import no_results_reason, paths_only_line, print_previews, result_table

    if json_out:
        sys.stdout.write(json.dumps([r.to_dict() for r in results], ensure_ascii=False) + "\n")
    elif paths_only:
        for hit in results:
            sys.stdout.write(paths_only_line(hit) + "\n")
    elif preview and results:
        print_previews(results, console, err_console)
    elif results:
        console.print(result_table(results))
    if stale:
        err_console.print("[yellow]note:[/] the index has changes newer than its search index; run mmsearch build-index")
    if not results:
        reason = empty_reason or no_results_reason(results, kinds=kinds, kind=kind, where=where)
        err_console.print(f"no results ({escape(reason)})")
        raise typer.Exit(EXIT_NO_RESULTS)


@app.command("build-index")
def build_index_cmd(
    index: IndexDirOpt = None,
    index_type: Annotated[str, typer.Option("--index-type", help="auto, flat or ivfpq.")] = "auto",
    target_recall: Annotated[float, typer.Option("--target-recall", min=0.1, max=1.0, help="recall@10 the tuner aims for.")] = 0.95,
    retrain: Annotated[bool, typer.Option("--retrain", help="Retrain the IVF-PQ quantizers from scratch.")] = False,
    quiet: QuietOpt = False,
    no_progress: NoProgressOpt = False,
) -> None:
    """(Re)build the ANN index of an index directory from its table."""
    from mmsearch.indexer.ann_build import build_ann
    from mmsearch.objectstore import remote_index
    from mmsearch.progress import RichProgress, progress_bar
    from mmsearch.storage import ItemStore, index_write_lock

    with _errors():
        remote = remote_index(_index_dir(index))  # s3://...: build in the local cache, then publish
        store = ItemStore.open(remote.pull("writer") if remote else _index_dir(index))
        with index_write_lock(store.index_dir), progress_bar(err_console, not (quiet or no_progress)) as bar:
            infos = build_ann(
                store, store.model_spec, index_type=index_type, target_recall=target_recall,
                retrain=retrain, progress=RichProgress(bar),
            )
            if remote is not None:
                remote.publish()
    if not quiet:
        for kind, info in infos.items():
            console.print(f"[green]built[/] {kind}: {escape(json.dumps(info, default=str))}")


@app.command("info")
def info_cmd(
    index: IndexDirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show an index: rows, model, ANN parameters, sources, disk use and the last run."""
    from mmsearch.indexinfo import index_info
    from mmsearch.inventory import disk_usage, indexed_sources, last_run

    index_dir = _index_dir(index)
    with _errors():
        info = index_info(index_dir)
        info["sources"] = indexed_sources(index_dir)
    info["disk_bytes"] = disk_usage(index_dir)
    info["last_run"] = last_run(index_dir)
    if json_out:
        sys.stdout.write(json.dumps(info, default=str) + "\n")
        return
    from mmsearch.render import info_table

    console.print(info_table(info))


@app.command("remove")
def remove_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Image files, folders (everything under them) or text collections to drop from the index.")],
    index: IndexDirOpt = None,
) -> None:
    """Remove items from an index, then update its ANN index (files stay on disk)."""
    from mmsearch.indexer.remove import remove_paths
    from mmsearch.render import display_path

    with _errors():
        report = remove_paths(paths, _index_dir(index))
    for path, count in report.removed.items():
        console.print(f"removed {count} item(s) under {escape(display_path(path))}")


@app.command("serve")
def serve_cmd(
    index: IndexDirOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (anything but loopback needs a token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    image_root: Annotated[list[Path] | None, typer.Option("--image-root", help="Folders query image paths may come from (repeatable; default: none).")] = None,
    allow_urls: Annotated[bool, typer.Option("--allow-urls", help="Allow image-URL queries (public http(s) addresses only).")] = False,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.1, help="Largest accepted upload.")] = 10.0,
    device: DeviceOpt = None,
    backend: BackendOpt = "auto",
    quantize: QuantizeOpt = None,
    token: Annotated[str | None, typer.Option("--token", envvar="MMSEARCH_TOKEN", show_default=False, help="Access token required on every route but /healthz (Authorization: Bearer; the gallery asks once). Prefer the MMSEARCH_TOKEN variable.")] = None,
    insecure_no_auth: Annotated[bool, typer.Option("--insecure-no-auth", help="Serve a non-loopback address without a token (only behind a proxy that authenticates).")] = False,
    allowed_host: Annotated[list[str] | None, typer.Option("--allowed-host", help="Host header value clients use, besides loopback names and --host (repeatable; *.example.com; * = any).")] = None,
    expose_paths: Annotated[bool, typer.Option("--expose-paths", help="Show absolute server paths in results (default: relative to the indexed folder).")] = False,
    no_docs: Annotated[bool, typer.Option("--no-docs", help="Do not serve /docs and /openapi.json.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes serving the index (ANN files are memory-mapped and shared).")] = 1,
    proxy_headers: Annotated[bool, typer.Option("--proxy-headers", help="Trust X-Forwarded-For/-Proto from --forwarded-allow-ips (behind a reverse proxy).")] = False,
    forwarded_allow_ips: Annotated[str, typer.Option("--forwarded-allow-ips", help="Comma-separated proxy addresses whose X-Forwarded-* headers are trusted.")] = "127.0.0.1",
    log_format: Annotated[str, typer.Option("--log-format", help="Access log on stderr: text, json or none.")] = "text",
    log_queries: Annotated[bool, typer.Option("--log-queries", help="Include query strings in the access log.")] = False,
    drain_seconds: Annotated[float, typer.Option("--drain-seconds", min=0.0, help="On SIGTERM, answer 503 this long (load balancers notice) before shutting down.")] = 2.0,
    rerank_model: Annotated[str | None, typer.Option("--rerank-model", help="ITM model for rerank=true requests: mmsearch-tiny-itm, a local folder or a Hugging Face id (default: the index's recorded one, else Salesforce/blip-itm-base-coco).")] = None,
    http: Annotated[str, typer.Option("--http", help="HTTP parser: auto (httptools when installed), httptools or h11.")] = "auto",
    loop: Annotated[str, typer.Option("--loop", help="Event loop: auto (uvloop when installed), uvloop or asyncio.")] = "auto",
    search_concurrency: Annotated[int, typer.Option("--search-concurrency", min=1, max=256, help="Searches each worker runs at once; more wait their turn in arrival order.")] = 2,
) -> None:
    """Serve the HTTP API and the web gallery for an index."""
    from mmsearch.serve.lifecycle import bind_socket, prepare_workers, run
    from mmsearch.serve.security import check_bind_policy, is_loopback
    from mmsearch.server import ServerConfig

    if log_format not in ("text", "json", "none"):
        err_console.print("[bold red]error:[/] --log-format must be text, json or none")
        raise typer.Exit(2)
    if http not in ("auto", "httptools", "h11") or loop not in ("auto", "uvloop", "asyncio"):
        err_console.print("[bold red]error:[/] --http must be auto, httptools or h11; --loop auto, uvloop or asyncio")
        raise typer.Exit(2)
    with _errors():
        check_bind_policy(host, token, insecure_no_auth)
        sock = bind_socket(host, port)  # a busy port fails here, before the model loads
    if not token and not is_loopback(host):
        err_console.print(f"[bold yellow]WARNING:[/] serving {escape(host)} WITHOUT authentication (--insecure-no-auth)")
    config = ServerConfig(
        index_dir=_index_dir(index),
        device=device,
        image_roots=list(image_root or []),
        allow_urls=allow_urls,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        host=host,
        allowed_hosts=list(allowed_host or []),
        token=token or None,
        docs=not no_docs,
        expose_paths=expose_paths,
        log_format=log_format,
        log_queries=log_queries,
        drain_s=drain_seconds,
        rerank_model=rerank_model,
        backend=backend,
        quantize=quantize,
        search_concurrency=search_concurrency,
    )
    with _errors():
        from mmsearch.serve.lifecycle import apply_thread_policy, check_servable

        apply_thread_policy()  # one math thread per request, before faiss / torch / onnxruntime load

        # Fail fast with one clear line. One worker loads the model now and reuses it;
        # several workers each load their own (/readyz answers 503 until they have), and
        # the supervisor stays small: it only checks that a snapshot exists.
        config.encoder = check_servable(
            config.index_dir, device=device, load_model=workers == 1, backend=backend, quantize=quantize
        )
    shown = f"[{host}]" if ":" in host else host
    extra = f" with {workers} workers" if workers > 1 else ""
    auth = "token required" if token else "no token"
    err_console.print(f"serving {escape(str(config.index_dir))} on http://{escape(shown)}:{port}{extra} ({auth})")
    with prepare_workers(workers):
        run(config, sock, workers=workers, proxy_headers=proxy_headers,
            forwarded_allow_ips=forwarded_allow_ips, log_format=log_format, http=http, loop=loop)  # fmt: skip


@app.command("check")
def check_cmd(
    index: IndexDirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the changed items as JSON.")] = False,
) -> None:
    """Verify an index: ANN file checksums and ids against the table, then list indexed
    images the server would refuse (changed, moved, replaced by links, or gone)."""
    from mmsearch.indexinfo import check_index
    from mmsearch.serve.files import check_index_files

    with _errors():
        verified = check_index(_index_dir(index))
        checked, changed = check_index_files(_index_dir(index))
    if json_out:
        rows = [{"id": c.id, "path": c.path, "reason": c.reason} for c in changed]
        sys.stdout.write(json.dumps({"verified": verified, "checked": checked, "changed": rows}, ensure_ascii=False) + "\n")
    else:
        for kind, rows_checked in verified.items():
            console.print(f"[green]ok[/] {kind}: {rows_checked} rows; ANN files match their checksums and the table")
        for item in changed:
            console.print(f"[yellow]changed[/] {item.id}  {escape(item.path)}: {escape(item.reason)}")
        style = "green" if not changed else "yellow"
        console.print(f"[{style}]{checked} image(s) checked, {len(changed)} changed since indexing[/]"
                      + ("; re-run mmsearch index on their folders" if changed else ""))  # fmt: skip
    if changed:
        raise typer.Exit(1)


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
    no_progress: NoProgressOpt = False,
) -> None:
    """Generate a sample catalog, index it with mmsearch-tiny, run queries, write an HTML gallery."""
    from mmsearch.demo import run_demo
    from mmsearch.progress import RichProgress, progress_bar
    from mmsearch.render import print_summary, result_table

    with _errors():
        with progress_bar(err_console, not no_progress) as bar:
            demo = run_demo(out, n=n, device=device, progress=RichProgress(bar))
    print_summary(demo.report, console, err_console)
    for query, kind, results in demo.queries:
        console.rule(f"[bold]{escape(query)}[/] → {kind}")
        console.print(result_table(results))
    console.print(f"[green]gallery:[/] {escape(str(demo.html_path))}")


# Commands whose bodies live in mmsearch/commands/ (each imports its heavy parts lazily).
from mmsearch.commands.evaluate import eval_cmd  # noqa: E402
from mmsearch.commands.finetune import finetune_cmd  # noqa: E402
from mmsearch.commands.label import label_cmd  # noqa: E402

app.command("eval")(eval_cmd)
app.command("label")(label_cmd)
app.command("finetune")(finetune_cmd)

use_clean_help(app)  # after the last command: PATHS... and untyped flags in --help


#: Commands that finish in one shot: once their output is flushed, the process ends
#: with os._exit, skipping an interpreter teardown that can take a second with torch,
#: ONNX Runtime and LanceDB loaded. Nothing is left to clean up: results are written,
#: indexes were only read.
ONE_SHOT_COMMANDS = frozenset({"query", "info", "check"})


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    one_shot = len(sys.argv) > 1 and (sys.argv[1] in ONE_SHOT_COMMANDS or sys.argv[1] in ("--help", "-h"))
    if not one_shot:
        app()
        return
    if sys.argv[1] == "query":  # one query, then exit: no pre-packing, no pandas (see faststart)
        from mmsearch.faststart import prepare_one_shot_query

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
