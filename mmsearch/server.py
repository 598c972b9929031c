"""``mmsearch serve``: an HTTP API and a web gallery over one index (FastAPI).

Endpoints
    GET  /                      the gallery page
    GET  /api/search?q=&k=&kind=&where=&mode=&offset=&group_by=&dedup=&min_score=&url=
                                text / query-language / image-URL search
    POST /api/search            the same as JSON with structured terms (see mmsearch.search.http)
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
from mmsearch.query import QueryTerm
from mmsearch.search.http import SearchRequest
from mmsearch.search.types import DEFAULT_KIND, MAX_K, MAX_OFFSET

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
        self.fetch_url: Any = None  # set by create_app when image URLs are allowed

    def _open(self, encoder: Any | None) -> Any:
        from mmsearch.engine import SearchIndex

        return SearchIndex(
            self.config.index_dir,
            device=self.config.device,
            image_roots=self.config.image_roots,
            encoder=encoder,
            fetch_url=self.fetch_url,
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
    """Refuses an image-path term of ``query`` that resolves outside ``image_roots``.

    Checked whether or not the file exists, so the answer never tells a caller which
    files exist outside the roots. Quote a term to search for it as text: ``"holiday.jpg"``.
    """
    from mmsearch.query import parse_query
    from mmsearch.search.encode import check_image_path

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
    holder = _IndexHolder(config)
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

    holder.fetch_url = _fetch_url_image if config.allow_urls else None

    def _answer(query: Any, shown: str | None) -> dict[str, Any]:
        from mmsearch.search.types import STAGES

        results = holder.get().run(query)
        return {
            "query": shown,
            "mode": results.mode,
            "results": _results(results),
            "reason": results.reason,
            "timings": {stage: round(results.timings.get(stage, 0.0), 6) for stage in STAGES},
        }

    @app.get("/api/search")
    def search(
        q: Annotated[str | None, Query(max_length=2000)] = None,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
        kind: Annotated[str, Query(pattern="^(any|image|text)$")] = DEFAULT_KIND,
        where: Annotated[list[str] | None, Query()] = None,
        exact: bool = False,
        url: Annotated[str | None, Query(max_length=2048)] = None,
        mode: Annotated[str | None, Query(pattern="^(vector|lexical|hybrid)$")] = None,
        fusion: Annotated[str, Query(pattern="^(rrf|weighted)$")] = "rrf",
        alpha: Annotated[float, Query(ge=0, le=1)] = 0.7,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        group_by: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        dedup: Annotated[float | None, Query(gt=0, le=1)] = None,
        min_score: float | None = None,
        cutoff: bool = False,
        literal: bool = False,
    ) -> dict[str, Any]:
        from mmsearch.search.http import build_query

        terms = []
        if url:
            if not config.allow_urls:
                raise BadQueryError(
                    "image URLs are disabled on this server (start it with --allow-urls)"
                )
            terms.append(QueryTerm(1.0, "url", url))
        query = build_query(
            q=None if url else q, literal=literal, terms=terms, where=where, kind=kind, mode=mode, fusion=fusion,
            alpha=alpha, k=k, offset=offset, group_by=group_by, dedup=dedup, min_score=min_score, cutoff=cutoff, exact=exact,
        )  # fmt: skip
        return _answer(query, q if not url else url)

    @app.post("/api/search")
    def search_json(body: SearchRequest) -> dict[str, Any]:
        """The same search as GET, as a JSON body with structured terms (no parsing)."""
        return _answer(body.to_query(), body.q)

    def _search_upload(data: bytes, k: int, kind: str, where: list[str]) -> list[dict[str, Any]]:
        from mmsearch.imageio import load_image
        from mmsearch.search.http import build_query

        image = load_image(data, max_pixels=config.max_pixels)
        query = build_query(
            q=None, terms=[QueryTerm(1.0, "image", image)], where=where, kind=kind, k=k
        )
        return _results(holder.get().run(query))

    @app.post("/api/search/image")
    async def search_image(
        file: Annotated[UploadFile, File()],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 20,
        kind: Annotated[str, Query(pattern="^(any|image|text)$")] = DEFAULT_KIND,
        where: Annotated[list[str] | None, Query()] = None,
    ) -> dict[str, Any]:
        data = await file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {config.max_upload_bytes} bytes")
        if not data:
            raise BadQueryError("the uploaded file is empty")
        # Decoding and encoding are CPU work: keep them off the event loop.
        results = await run_in_threadpool(_search_upload, data, k, kind, where or [])
        return {"query": file.filename, "results": results}

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
