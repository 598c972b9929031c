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

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from mmsearch.errors import BadQueryError
from mmsearch.imageio import DEFAULT_MAX_PIXELS
from mmsearch.serve.config import ServerConfig
from mmsearch.serve.contract import install_openapi
from mmsearch.serve.failures import install_error_handlers
from mmsearch.serve.holder import IndexHolder
from mmsearch.serve.limits import BodyLimitMiddleware
from mmsearch.serve.methods import MethodsMiddleware, SecurityHeadersMiddleware, allowed_methods
from mmsearch.serve.observe import Metrics, ObserveMiddleware

if TYPE_CHECKING:
    from mmsearch.engine import SearchIndex

# Multipart framing (boundaries, part headers, other small fields) on top of the file.
_MULTIPART_SLACK = 64 * 1024


def create_app(config: ServerConfig) -> FastAPI:
    """Builds the FastAPI application for ``config``."""
    from mmsearch.serve import auth, security
    from mmsearch.serve.drain import DrainMiddleware, ServeState
    from mmsearch.serve.reranker import RerankerHolder
    from mmsearch.serve.routes import add_ops_routes
    from mmsearch.serve.search_routes import add_search_routes

    if config.token is not None:
        security.check_token(config.token)
    metrics = Metrics()

    def on_open(index: SearchIndex) -> None:
        items = {kind: int(ann.get("n", 0)) for kind, ann in index.info()["ann"].items()}
        metrics.set_snapshot(index.snapshot, items)

    holder = IndexHolder(config, on_open=on_open, metrics=metrics)
    state = ServeState(drain_s=config.drain_s)
    rerankers = RerankerHolder(config.rerank_model, Path(config.index_dir), config.device)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import asyncio
        import threading

        state.install_drain_handler(asyncio.get_running_loop())
        state.start_warming(app.state.warm)
        if config.rerank_model:  # named at start-up: load it now, in the background
            threading.Thread(
                target=rerankers.load_quietly, name="mmsearch-rerank-load", daemon=True
            ).start()
        yield

    app = FastAPI(
        title="mmsearch",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served from the installed Swagger UI files (mmsearch.serve.docs)
        redoc_url=None,
        openapi_url="/openapi.json" if config.docs else None,
    )
    # add_middleware wraps: the last added runs first.
    app.add_middleware(MethodsMiddleware, router=app.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_upload_bytes + _MULTIPART_SLACK)
    app.add_middleware(security.OriginCheckMiddleware)
    if config.token:
        sessions = auth.SessionKeeper(config.token, state_dir=config.state_dir)
        throttle = auth.FailureThrottle(config.auth_failures_per_minute)
        app.add_middleware(
            auth.TokenAuthMiddleware, token=config.token, sessions=sessions, throttle=throttle
        )
        auth.add_login_routes(app, config.token, sessions, throttle)
    app.add_middleware(DrainMiddleware, state=state)
    hosts = (
        None
        if "*" in config.allowed_hosts
        else security.allowed_hosts(config.host, list(config.allowed_hosts))
    )
    app.add_middleware(security.HostCheckMiddleware, allowed=hosts)
    app.add_middleware(
        ObserveMiddleware,
        metrics=metrics,
        log_format=config.log_format,
        log_queries=config.log_queries,
        router=app.router,
    )
    app.add_middleware(SecurityHeadersMiddleware)
    app.state.serve_state = state
    install_error_handlers(app, lambda scope: allowed_methods(app.router, scope))
    add_ops_routes(app, config, holder, state, metrics)
    if config.docs:
        from mmsearch.serve.docs import add_docs_route

        add_docs_route(app)

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
    add_search_routes(app, config, holder, rerankers)
    install_openapi(app, allow_urls=config.allow_urls, token_required=bool(config.token))
    app.state.rerankers = rerankers
    app.state.config = config
    return app


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "BodyLimitMiddleware",
    "ServerConfig",
    "create_app",
]
