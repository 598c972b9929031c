"""``mmsearch serve``: the HTTP API and web gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mmsearch.cli.common import (
    BackendOpt,
    DeviceOpt,
    IndexDirOpt,
    QuantizeOpt,
    err_console,
    reported_errors,
    resolve_index_dir,
)


def serve_cmd(
    index: IndexDirOpt = None,
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on (anything but loopback needs a token)."),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")
    ] = 8000,
    image_root: Annotated[
        list[Path] | None,
        typer.Option(
            "--image-root",
            help="Folders query image paths may come from (repeatable; default: none).",
        ),
    ] = None,
    allow_urls: Annotated[
        bool,
        typer.Option(
            "--allow-urls", help="Allow image-URL queries (public http(s) addresses only)."
        ),
    ] = False,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.1, help="Largest accepted upload.")
    ] = 10.0,
    device: DeviceOpt = None,
    backend: BackendOpt = "auto",
    quantize: QuantizeOpt = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="MMSEARCH_TOKEN",
            show_default=False,
            help="Access token required on every route but /healthz (Authorization: Bearer; the gallery asks once). Prefer the MMSEARCH_TOKEN variable.",
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Serve a non-loopback address without a token (only behind a proxy that authenticates).",
        ),
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Host header value clients use, besides loopback names and --host (repeatable; *.example.com; * = any).",
        ),
    ] = None,
    expose_paths: Annotated[
        bool,
        typer.Option(
            "--expose-paths",
            help="Show absolute server paths in results (default: relative to the indexed folder).",
        ),
    ] = False,
    no_docs: Annotated[
        bool, typer.Option("--no-docs", help="Do not serve /docs and /openapi.json.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Worker processes serving the index (ANN files are memory-mapped and shared).",
        ),
    ] = 1,
    proxy_headers: Annotated[
        bool,
        typer.Option(
            "--proxy-headers",
            help="Trust X-Forwarded-For/-Proto from --forwarded-allow-ips (behind a reverse proxy).",
        ),
    ] = False,
    forwarded_allow_ips: Annotated[
        str,
        typer.Option(
            "--forwarded-allow-ips",
            help="Comma-separated proxy addresses whose X-Forwarded-* headers are trusted.",
        ),
    ] = "127.0.0.1",
    log_format: Annotated[
        str, typer.Option("--log-format", help="Access log on stderr: text, json or none.")
    ] = "text",
    log_queries: Annotated[
        bool, typer.Option("--log-queries", help="Include query strings in the access log.")
    ] = False,
    drain_seconds: Annotated[
        float,
        typer.Option(
            "--drain-seconds",
            min=0.0,
            help="On SIGTERM, answer 503 this long (load balancers notice) before shutting down.",
        ),
    ] = 2.0,
    rerank_model: Annotated[
        str | None,
        typer.Option(
            "--rerank-model",
            help="ITM model for rerank=true requests: mmsearch-tiny-itm, a local folder or a Hugging Face id (default: the index's recorded one, else Salesforce/blip-itm-base-coco).",
        ),
    ] = None,
    http: Annotated[
        str,
        typer.Option(
            "--http", help="HTTP parser: auto (httptools when installed), httptools or h11."
        ),
    ] = "auto",
    loop: Annotated[
        str,
        typer.Option("--loop", help="Event loop: auto (uvloop when installed), uvloop or asyncio."),
    ] = "auto",
    search_concurrency: Annotated[
        int,
        typer.Option(
            "--search-concurrency",
            min=1,
            max=256,
            help="Searches each worker runs at once; more wait their turn in arrival order.",
        ),
    ] = 2,
    max_header_kb: Annotated[
        float,
        typer.Option(
            "--max-header-kb",
            min=1.0,
            max=1024.0,
            help="Largest request line + headers; more gets 431.",
        ),
    ] = 16.0,
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout",
            min=0.5,
            max=600.0,
            help="Seconds a connection has to send complete request headers (from opening, or from its last answer).",
        ),
    ] = 10.0,
    keepalive_timeout: Annotated[
        float,
        typer.Option(
            "--keepalive-timeout",
            min=1.0,
            max=600.0,
            help="Seconds an idle connection is kept open after an answer.",
        ),
    ] = 5.0,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections",
            min=1,
            max=1_000_000,
            help="Open connections per worker (at most half the open-file limit); more get 503.",
        ),
    ] = 1000,
) -> None:
    """Serve the HTTP API and the web gallery for an index."""
    from mmsearch.serve.app import ServerConfig
    from mmsearch.serve.connections import ConnectionLimits
    from mmsearch.serve.lifecycle import bind_socket, prepare_workers, run
    from mmsearch.serve.security import check_bind_policy, check_token, is_loopback

    if log_format not in ("text", "json", "none"):
        err_console.print("[bold red]error:[/] --log-format must be text, json or none")
        raise typer.Exit(2)
    if http not in ("auto", "httptools", "h11") or loop not in ("auto", "uvloop", "asyncio"):
        err_console.print(
            "[bold red]error:[/] --http must be auto, httptools or h11; --loop auto, uvloop or asyncio"
        )
        raise typer.Exit(2)
    with reported_errors():
        if token:
            check_token(token)
        check_bind_policy(host, token, insecure_no_auth)
        sock = bind_socket(host, port)  # a busy port fails here, before the model loads
    if not token and not is_loopback(host):
        err_console.print(
            f"[bold yellow]WARNING:[/] serving {escape(host)} WITHOUT authentication (--insecure-no-auth)"
        )
    config = ServerConfig(
        index_dir=resolve_index_dir(index),
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
    with reported_errors():
        from mmsearch.serve.lifecycle import apply_thread_policy, check_servable

        apply_thread_policy()  # one math thread per request, before faiss / torch / onnxruntime load

        # Fail fast with one clear line. One worker loads the model now and reuses it;
        # several workers each load their own (/readyz answers 503 until they have), and
        # the supervisor stays small: it only checks that a snapshot exists.
        config.encoder = check_servable(
            config.index_dir,
            device=device,
            load_model=workers == 1,
            backend=backend,
            quantize=quantize,
        )
    shown = f"[{host}]" if ":" in host else host
    extra = f" with {workers} workers" if workers > 1 else ""
    auth = "token required" if token else "no token"
    err_console.print(
        f"serving {escape(str(config.index_dir))} on http://{escape(shown)}:{port}{extra} ({auth})"
    )
    limits = ConnectionLimits(
        max_header_bytes=int(max_header_kb * 1024), header_timeout_s=header_timeout,
        keepalive_s=keepalive_timeout, max_connections=max_connections,
    )  # fmt: skip
    with prepare_workers(workers, config):
        run(config, sock, workers=workers, proxy_headers=proxy_headers,
            forwarded_allow_ips=forwarded_allow_ips, log_format=log_format, http=http, loop=loop,
            limits=limits)  # fmt: skip
