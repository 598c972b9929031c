"""``mmsearch serve``: an HTTP API and a web gallery over one index (FastAPI).

Endpoints
    GET  /                      the gallery page
    GET  /api/search?q=&k=&kind=&where=&mode=&offset=&group_by=&dedup=&min_score=&url=
                                text / query-language / image-URL search
    POST /api/search            the same as JSON with structured terms (see mmsearch.serve.schemas)
    POST /api/search/image      multipart upload (field ``file``) → image search
    GET  /api/info              index info
    GET  /media/{id}            the image file of an indexed item (by id, never by path)
    GET  /healthz, /readyz, /metrics, POST /login   operations (see mmsearch.serve.routes)

Uploads are capped in bytes (413, counted as the body streams in, chunked or not) and
in pixels (from the header, before decoding), and sniffed by content; image paths in
queries must resolve under the allowed roots; image URLs are off unless enabled.
Errors are JSON ``{"error": message, ...}`` with a 4xx status for bad input.
Around the routes (outermost first): metrics and access logs, the Host allowlist,
the drain gate, token auth, the body cap (see :mod:`mmsearch.serve`). Result paths are
relative to their indexed root unless ``expose_paths``; ``/media`` serves a file only
while it is still the one that was indexed.
Every request serves the latest published snapshot (readers never see a
half-written index): a newer snapshot is opened beside the current one and swapped
in, so requests in flight finish on the snapshot they started with.

>>> app = create_app(ServerConfig(index_dir=Path("./idx")))   # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8000)              # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmsearch.errors import (
    BadQueryError,
    ImageDecodeError,
    IndexCorruptError,
    IndexNotFoundError,
    MMSearchError,
    ModelLoadError,
    ModelMismatchError,
    UnsafePathError,
)
from mmsearch.imageio import DEFAULT_MAX_PIXELS
from mmsearch.models.base import Encoder
from mmsearch.search.limits import DEFAULT_KIND, MAX_K
from mmsearch.serve.holder import IndexHolder
from mmsearch.serve.jsonbody import json_response
from mmsearch.serve.limits import BodyLimitMiddleware, validation_error_body
from mmsearch.serve.observe import Metrics, ObserveMiddleware, record_results
from mmsearch.serve.schemas import SearchParams, SearchRequest

# Multipart framing (boundaries, part headers, other small fields) on top of the file.
_MULTIPART_SLACK = 64 * 1024


@dataclass
class ServerConfig:
    index_dir: Path
    device: str | None = None
    image_roots: list[Path] = field(default_factory=list)  # query image paths must be under one
    allow_urls: bool = False
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    url_allow_private: bool = False  # tests only
    url_timeout_s: float = 10.0
    # An encoder to use instead of loading the index's model: `mmsearch serve` passes the
    # one it loaded at start-up; tests pass a fake one.
    encoder: Encoder | None = None
    host: str = "127.0.0.1"  # the bound address: accepted as a Host header
    allowed_hosts: list[str] = field(default_factory=list)  # more Host values ("*" = any)
    token: str | None = None  # required on every route but /healthz when set
    docs: bool = True  # /docs and /openapi.json (behind the token like every route)
    expose_paths: bool = False  # absolute server paths in results and /api/info
    log_format: str = "text"  # access log: text, json or none
    log_queries: bool = False  # query strings in the access log
    drain_s: float = 2.0  # after SIGTERM: answer 503 this long, then shut down
    # ITM model for requests with rerank=true (registered name, folder or HF id; None:
    # the index's recorded one, else Salesforce/blip-itm-base-coco); loaded on first use.
    rerank_model: str | None = None
    backend: str = "torch"  # model runtime of each worker: torch, onnx or auto
    quantize: str | None = None  # int8: quantised ONNX graphs
    # Searches one worker runs at once; the rest wait in arrival order (FIFO). Searches
    # are CPU-bound: running many at once in one process only interleaves them on the
    # GIL, which stretches the slowest answers (p99) without adding throughput.
    search_concurrency: int = 2


def check_query_paths(query: str, image_roots: list[Path]) -> None:
    """Refuses an image-path term of ``query`` that resolves outside ``image_roots``.

    Checked whether or not the file exists, so the answer never tells a caller which
    files exist outside the roots. Quote a term to search for it as text: ``"holiday.jpg"``.
    The engine applies the same check to every image term it opens.
    """
    from mmsearch.search.encode import check_image_path
    from mmsearch.search.language import parse_query

    roots = [Path(os.path.realpath(r)) for r in image_roots]
    for term in parse_query(query):
        if term.kind == "image":
            try:
                check_image_path(term.value, roots)
            except UnsafePathError:
                raise
            except BadQueryError:
                continue  # inside the roots but missing: the search says so


def _status_of(exc: MMSearchError) -> int:
    if isinstance(exc, UnsafePathError):
        return 403
    if isinstance(exc, BadQueryError):
        return 400
    if isinstance(exc, ImageDecodeError):
        return 422
    if isinstance(exc, (IndexNotFoundError, IndexCorruptError, ModelLoadError, ModelMismatchError)):
        return 503  # the server cannot answer until its index or model is fixed
    return 500


def create_app(config: ServerConfig) -> FastAPI:
    """Builds the FastAPI application for ``config``."""
    from mmsearch.serve import security
    from mmsearch.serve.lifecycle import DrainMiddleware, ServeState
    from mmsearch.serve.routes import add_ops_routes

    metrics = Metrics()

    def on_open(index: Any) -> None:
        items = {kind: int(ann.get("n", 0)) for kind, ann in index.info()["ann"].items()}
        metrics.set_snapshot(index.snapshot, items)

    holder = IndexHolder(config, on_open=on_open)
    state = ServeState(drain_s=config.drain_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import asyncio

        state.install_drain_handler(asyncio.get_running_loop())
        state.start_warming(app.state.warm)
        yield

    docs = {} if config.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="mmsearch", version="0.1.0", lifespan=lifespan, **docs)
    # add_middleware wraps: the last added runs first.
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_upload_bytes + _MULTIPART_SLACK)
    if config.token:
        app.add_middleware(security.TokenAuthMiddleware, token=config.token)
        security.add_login_route(app, config.token)
    app.add_middleware(DrainMiddleware, state=state)
    if "*" not in config.allowed_hosts:
        hosts = security.allowed_hosts(config.host, list(config.allowed_hosts))
        app.add_middleware(security.HostCheckMiddleware, allowed=hosts)
    app.add_middleware(
        ObserveMiddleware,
        metrics=metrics,
        log_format=config.log_format,
        log_queries=config.log_queries,
        router=app.router,
    )
    app.state.serve_state = state

    @app.exception_handler(MMSearchError)
    async def _mmsearch_error(request: Request, exc: MMSearchError) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc), "type": type(exc).__name__}, status_code=_status_of(exc)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"error": str(exc.detail), "detail": exc.detail}
        return JSONResponse(
            body, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_error_body(list(exc.errors())), status_code=422)

    def _results(hits: list[Any]) -> list[dict[str, Any]]:
        record_results(hits)
        catalog = None if config.expose_paths else holder.catalog(holder.current)
        out = []
        for hit in hits:
            item = hit.to_dict()
            item["media"] = f"/media/{hit.id}" if hit.kind == "image" else None
            if catalog is not None:
                item["uri"] = catalog.relative_uri(item["uri"])
            out.append(item)
        return out

    add_ops_routes(app, config, holder, state, metrics)

    def _fetch_url_image(url: str) -> Any:
        if not config.allow_urls:
            raise BadQueryError(
                "image URLs are disabled on this server (start it with --allow-urls)"
            )
        import httpx

        from mmsearch.imageio import load_image
        from mmsearch.urlfetch import FetchPolicy, fetch_image_bytes

        policy = FetchPolicy(
            max_bytes=config.max_upload_bytes,
            timeout_s=config.url_timeout_s,
            allow_private=config.url_allow_private,
        )
        try:
            data = fetch_image_bytes(url, policy)
        except httpx.HTTPError as exc:
            raise BadQueryError(f"could not fetch the image URL ({type(exc).__name__})") from exc
        return load_image(data, max_pixels=config.max_pixels)

    holder.fetch_url = _fetch_url_image if config.allow_urls else None

    from mmsearch.serve.reranker import RerankerHolder

    rerankers = RerankerHolder(config.rerank_model, Path(config.index_dir), config.device)

    def _run(query: Any) -> tuple[Any, list[dict[str, Any]]]:
        """Runs ``query``; with re-ranking, also the candidates dropped (vanished/changed files)."""
        index = holder.get()
        if query.rerank is None:
            return index.run(query), []
        stage = rerankers.attach(index)
        results = index.run(query)
        return results, [{"id": d.id, "reason": d.reason} for d in getattr(stage, "dropped", [])]

    def _with_rerank(
        query: Any, rerank: bool, depth: int, min_match: float | None, blend: float | None = None
    ) -> Any:
        from dataclasses import replace

        from mmsearch.search.types import RerankSpec

        spec = RerankSpec(depth=depth, min_match=min_match, blend=blend)
        return replace(query, rerank=spec) if rerank else query

    def _answer(query: Any, shown: str | None) -> dict[str, Any]:
        from mmsearch.search.types import STAGES

        results, dropped = _run(query)
        out = {
            "query": shown,
            "mode": results.mode,
            "score_kind": results.score_kind,
            "results": _results(results),
            "reason": results.reason,
            "timings": {stage: round(results.timings.get(stage, 0.0), 6) for stage in STAGES},
        }
        if query.rerank is not None:
            out["dropped"] = dropped
        return out

    gate: list[Any] = []  # the worker's anyio.CapacityLimiter, made inside its event loop

    async def _gated(fn: Any, *args: Any) -> Any:
        """Runs ``fn(*args)`` on a worker thread once one of the worker's
        ``search_concurrency`` search slots is free; waiting requests get slots in
        arrival order (anyio's limiter is FIFO)."""
        import anyio

        if not gate:
            gate.append(anyio.CapacityLimiter(max(1, config.search_concurrency)))
        return await anyio.to_thread.run_sync(fn, *args, limiter=gate[0])

    @app.get("/api/search")
    async def search(params: Annotated[SearchParams, Query()]) -> Response:
        return json_response(await _gated(_get_search, params))

    @app.post("/api/search")
    async def search_json(body: SearchRequest) -> Response:
        """The same search as GET, as a JSON body with structured terms (no parsing)."""
        return json_response(await _gated(lambda: _answer(body.to_query(), body.q)))

    def _get_search(params: SearchParams) -> dict[str, Any]:
        from mmsearch.search.language import QueryTerm
        from mmsearch.serve.schemas import build_query

        p = params
        terms = []
        if p.url:
            if not config.allow_urls:
                raise BadQueryError(
                    "image URLs are disabled on this server (start it with --allow-urls)"
                )
            terms.append(QueryTerm(1.0, "url", p.url))
        query = build_query(
            q=None if p.url else p.q, literal=p.literal, terms=terms, where=p.where, kind=p.kind,
            mode=p.mode, fusion=p.fusion, alpha=p.alpha, k=p.k, offset=p.offset,
            group_by=p.group_by, dedup=p.dedup, min_score=p.min_score, cutoff=p.cutoff,
            exact=p.exact,
        )  # fmt: skip
        query = _with_rerank(query, p.rerank, p.rerank_depth, p.min_match, p.rerank_blend)
        return _answer(query, p.q if not p.url else p.url)

    def _search_upload(
        data: bytes,
        k: int,
        kind: str,
        where: list[str],
        rerank: tuple[int, float | None, float | None] | None,
    ) -> dict[str, Any]:
        from mmsearch.imageio import load_image
        from mmsearch.search.language import QueryTerm
        from mmsearch.serve.schemas import build_query

        image = load_image(data, max_pixels=config.max_pixels)
        query = build_query(
            q=None, terms=[QueryTerm(1.0, "image", image)], where=where, kind=kind, k=k
        )
        if rerank is not None:
            query = _with_rerank(query, True, *rerank)
        results, dropped = _run(query)
        out: dict[str, Any] = {
            "mode": results.mode,
            "score_kind": results.score_kind,
            "results": _results(results),
            "reason": results.reason,
        }
        if rerank is not None:
            out["dropped"] = dropped
        return out

    @app.post("/api/search/image")
    async def search_image(
        file: Annotated[UploadFile, File()],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
        kind: Annotated[str, Query(pattern="^(any|image|text)$")] = DEFAULT_KIND,
        where: Annotated[list[str] | None, Query()] = None,
        rerank: bool = False,
        rerank_depth: Annotated[int, Query(ge=1, le=MAX_K)] = 50,
        min_match: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
        rerank_blend: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    ) -> Response:
        data = await file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {config.max_upload_bytes} bytes")
        if not data:
            raise BadQueryError("the uploaded file is empty")
        # Decoding and encoding are CPU work: keep them off the event loop.
        options = (rerank_depth, min_match, rerank_blend) if rerank else None
        out = await _gated(_search_upload, data, k, kind, where or [], options)
        return json_response({**out, "query": file.filename})

    return app


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "BodyLimitMiddleware",
    "ServerConfig",
    "check_query_paths",
    "create_app",
]
