"""``mmsearch serve``: an HTTP API and a web gallery over one index (FastAPI).

Endpoints
    GET  /                      the gallery page
    GET  /api/search?q=&k=&kind=&where=&exact=&url=   text / query-language / image-URL search
    POST /api/search/image      multipart upload (field ``file``) → image search
    GET  /api/info              index info
    GET  /media/{id}            the image file of an indexed item (by id, never by path)

Uploads are capped in bytes (413, counted as the body streams in, chunked or not) and
in pixels (from the header, before decoding), and sniffed by content; image paths in
queries must resolve under the allowed roots; image URLs are off unless enabled.
Errors are JSON ``{"error": message, ...}`` with a 4xx status for bad input.
Every request serves the latest published snapshot (readers never see a
half-written index): a newer snapshot is opened beside the current one and swapped
in, so requests in flight finish on the snapshot they started with.

>>> app = create_app(ServerConfig(index_dir=Path("./idx")))   # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8000)              # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
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

WEB_DIR = Path(__file__).parent / "web"

# Multipart framing (boundaries, part headers, other small fields) on top of the file.
_MULTIPART_SLACK = 64 * 1024
_MAX_ITEM_ID = 2**63 - 1
_PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


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
    encoder: Any | None = None
    # ITM model for requests with rerank=true (registered name, folder or HF id; None:
    # the index's recorded one, else Salesforce/blip-itm-base-coco); loaded on first use.
    rerank_model: str | None = None


class _IndexHolder:
    """Holds the open index; opens a newer published snapshot beside it and swaps it in.

    A request takes the current :class:`SearchIndex` once and uses only that object,
    so a swap never changes the rows or ANN indexes under a request in flight. One
    thread opens a new snapshot at a time; others keep serving the current one
    meanwhile. A snapshot that fails to open is not retried until a newer one is
    published; the old one stays in service and ``reload_error`` says why.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._open_lock = threading.Lock()
        self._index: Any = None
        self._failed: Any = None  # the snapshot that last failed to open
        self.reload_error: str | None = None

    def _open(self, encoder: Any | None) -> Any:
        from mmsearch.engine import SearchIndex

        return SearchIndex(
            self.config.index_dir,
            device=self.config.device,
            image_roots=self.config.image_roots,
            encoder=encoder,
        )

    def get(self) -> Any:
        from mmsearch.snapshot import read_snapshot

        current = self._index
        if current is None:
            with self._open_lock:
                if self._index is None:
                    self._index = self._open(self.config.encoder)
                return self._index
        try:
            latest = read_snapshot(Path(self.config.index_dir))
        except IndexCorruptError as exc:
            self.reload_error = str(exc)
            return current
        if latest is None or latest == current.snapshot or latest == self._failed:
            return current
        if not self._open_lock.acquire(blocking=False):
            return current  # another request is opening it; serve the current snapshot meanwhile
        try:
            current = self._index
            if latest != current.snapshot:
                encoder = self.config.encoder
                if encoder is None and latest.model_key == current.spec.key:
                    encoder = current.encoder  # same model: reuse the loaded weights
                try:
                    self._index = self._open(encoder)
                    self._failed, self.reload_error = None, None
                except MMSearchError as exc:
                    self._failed, self.reload_error = latest, f"{type(exc).__name__}: {exc}"
            return self._index
        finally:
            self._open_lock.release()


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """ASGI middleware: answers 413 once a request body passes ``max_bytes``.

    A declared Content-Length over the cap is refused before any byte is read. A
    chunked (or understated) body is counted as it streams in; past the cap the app's
    next ``receive`` fails, and whatever response the app then tries to send is
    replaced by the 413, so the body is never buffered or spooled beyond the cap.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._send_413(send)
                return
        state = {"received": 0, "too_large": False, "started": False}

        async def counted_receive() -> dict[str, Any]:
            if state["too_large"]:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["too_large"] = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["too_large"]:
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._send_413(send)
                return  # drop the app's own (error) response
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            if not state["started"]:
                state["started"] = True
                await self._send_413(send)

    async def _send_413(self, send: Any) -> None:
        import json

        body = json.dumps(
            {"error": f"request body larger than {self.max_bytes} bytes", "type": "PayloadTooLarge"}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


def check_query_paths(query: str, image_roots: list[Path]) -> None:
    """Refuses an unquoted image-path term of ``query`` that resolves outside ``image_roots``.

    Checked whether or not the file exists, so the answer never tells a caller which
    files exist outside the roots (the query parser only treats *existing* files as
    images). Quote a term to search for it as text: ``"holiday.jpg"``.
    """
    from mmsearch.query import _WEIGHT, _split, looks_like_image_path

    roots = [Path(os.path.realpath(r)) for r in image_roots]
    for _sign, raw in _split(query):
        term = raw.strip()
        if not term or term[0] in "\"'":
            continue
        match = _WEIGHT.match(term)
        body = match.group(2).strip() if match else term
        if not looks_like_image_path(body):
            continue
        try:
            real = Path(os.path.realpath(body))
        except (OSError, ValueError) as exc:
            raise UnsafePathError(f"image path {body!r} cannot be resolved") from exc
        if not any(real.is_relative_to(root) for root in roots):
            raise UnsafePathError(
                f"image path {body!r} is outside the folders this server allows "
                "(quote the term to search for it as text)"
            )


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


class _RerankerHolder:
    """Loads the ITM scorer once, on the first request that asks for re-ranking."""

    def __init__(self, model: str | None, index_dir: Path) -> None:
        self.model = model
        self.index_dir = index_dir
        self._lock = threading.Lock()
        self._scorer: Any = None

    def reranker(self, depth: int, min_match: float | None, device: str | None) -> Any:
        from mmsearch.rerank import ItmReranker
        from mmsearch.rerank.config import rerank_model_for
        from mmsearch.rerank.itm import ItmScorer

        with self._lock:
            if self._scorer is None:
                self._scorer = ItmScorer.load(
                    rerank_model_for(self.index_dir, self.model), device=device
                )
        return ItmReranker(self._scorer, depth=depth, min_match=min_match)


def create_app(config: ServerConfig) -> FastAPI:
    """Builds the FastAPI application for ``config``."""
    holder = _IndexHolder(config)
    rerankers = _RerankerHolder(config.rerank_model, Path(config.index_dir))
    app = FastAPI(title="mmsearch", version="0.1.0")
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_upload_bytes + _MULTIPART_SLACK)

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
        errors = exc.errors()
        summary = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
            for e in errors[:5]
        )
        body = {"error": f"invalid request: {summary}", "detail": jsonable_encoder(errors)}
        return JSONResponse(body, status_code=422)

    def _results(hits: list[Any]) -> list[dict[str, Any]]:
        out = []
        for hit in hits:
            item = hit.to_dict()
            item["media"] = f"/media/{hit.id}" if hit.kind == "image" else None
            out.append(item)
        return out

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> HTMLResponse:
        html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(
            html,
            headers={"Content-Security-Policy": _PAGE_CSP, "X-Content-Type-Options": "nosniff"},
        )

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        out = holder.get().info()
        out["reload_error"] = holder.reload_error
        return out

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

    @app.get("/api/search")
    def search(
        q: Annotated[str | None, Query(max_length=2000)] = None,
        k: Annotated[int, Query(ge=1, le=1000)] = 20,
        kind: Annotated[str, Query(pattern="^(any|image|text)$")] = "any",
        where: Annotated[list[str] | None, Query()] = None,
        exact: bool = False,
        url: Annotated[str | None, Query(max_length=2048)] = None,
        rerank: bool = False,
        rerank_depth: Annotated[int, Query(ge=1, le=1000)] = 50,
        min_match: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    ) -> dict[str, Any]:
        if url:
            query: Any = _fetch_url_image(url)
        elif q and q.strip():
            check_query_paths(q, config.image_roots)
            query = q
        else:
            raise BadQueryError(
                "give a query: q=TEXT (or url=IMAGE_URL where image URLs are enabled)"
            )
        label = q if not url else url
        if rerank:
            return _reranked(
                label, query, k, kind, where or [], rerank_depth, min_match, exact=exact
            )
        hits = holder.get().search(query, k=k, kind=kind, where=where or None, exact=exact)
        return {"query": label, "results": _results(hits)}

    def _reranked(
        label: str | None,
        query: Any,
        k: int,
        kind: str,
        where: list[str],
        depth: int,
        min_match: float | None,
        **options: Any,
    ) -> dict[str, Any]:
        from mmsearch.rerank.search import rerank_search

        reranker = rerankers.reranker(depth, min_match, config.device)
        out = rerank_search(
            holder.get(), query, reranker, k=k, kind=kind, where=where or None, **options
        )
        return {
            "query": label,
            "results": _results(out.results),
            "reranked": True,
            "empty_reason": out.empty_reason,
            "dropped": [{"id": d.id, "uri": d.uri, "reason": d.reason} for d in out.dropped],
        }

    def _search_upload(
        data: bytes, k: int, kind: str, where: list[str], rerank: tuple[int, float | None] | None
    ) -> dict[str, Any]:
        from mmsearch.imageio import load_image

        image = load_image(data, max_pixels=config.max_pixels)
        if rerank is not None:
            return _reranked(None, image, k, kind, where, *rerank)
        return {
            "results": _results(holder.get().search(image, k=k, kind=kind, where=where or None))
        }

    @app.post("/api/search/image")
    async def search_image(
        file: Annotated[UploadFile, File()],
        k: Annotated[int, Query(ge=1, le=1000)] = 20,
        kind: Annotated[str, Query(pattern="^(any|image|text)$")] = "any",
        where: Annotated[list[str] | None, Query()] = None,
        rerank: bool = False,
        rerank_depth: Annotated[int, Query(ge=1, le=1000)] = 50,
        min_match: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    ) -> dict[str, Any]:
        data = await file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {config.max_upload_bytes} bytes")
        if not data:
            raise BadQueryError("the uploaded file is empty")
        # Decoding and encoding are CPU work: keep them off the event loop.
        options = (rerank_depth, min_match) if rerank else None
        out = await run_in_threadpool(_search_upload, data, k, kind, where or [], options)
        return {**out, "query": file.filename}

    @app.get("/media/{item_id}")
    def media(item_id: Annotated[int, PathParam(ge=0, le=_MAX_ITEM_ID)]) -> FileResponse:
        path = holder.get().image_path(item_id)
        if path is None or not os.path.isfile(path):
            raise HTTPException(404, "no image with that id")
        return FileResponse(
            path,
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=60"},
        )

    return app


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "BodyLimitMiddleware",
    "ServerConfig",
    "check_query_paths",
    "create_app",
]
