"""``mmsearch serve``: an HTTP API and a web gallery over one index (FastAPI).

Endpoints
    GET  /                      the gallery page
    GET  /api/search?q=&k=&kind=&where=&exact=   text / query-language search
    POST /api/search/image      multipart upload (field ``file``) → image search
    GET  /api/info              index info
    GET  /media/{id}            the image file of an indexed item (by id, never by path)

Uploads are capped in bytes (413) and pixels, sniffed by content; image paths in
queries must resolve under the allowed roots; image URLs are off unless enabled.
Every request serves the latest published snapshot (readers never see a
half-written index).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch.errors import BadQueryError, IndexNotFoundError, MMSearchError, UnsafePathError
from mmsearch.imageio import DEFAULT_MAX_PIXELS

WEB_DIR = Path(__file__).parent / "web"


@dataclass
class ServerConfig:
    index_dir: Path
    device: str | None = None
    image_roots: list[Path] = field(default_factory=list)  # query image paths must be under one
    allow_urls: bool = False
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    url_allow_private: bool = False  # tests only


class _IndexHolder:
    """Holds the open index and switches to newer snapshots between requests."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._index: Any = None

    def get(self) -> Any:
        from mmsearch.engine import SearchIndex

        with self._lock:
            if self._index is None:
                self._index = SearchIndex(
                    self.config.index_dir, device=self.config.device, image_roots=self.config.image_roots
                )
            else:
                self._index.reload()
            return self._index


def create_app(config: ServerConfig) -> Any:
    """Builds the FastAPI application for ``config``."""
    from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    holder = _IndexHolder(config)
    app = FastAPI(title="mmsearch", version="0.1.0")

    @app.exception_handler(MMSearchError)
    async def _mmsearch_error(request: Request, exc: MMSearchError) -> JSONResponse:
        status = 404 if isinstance(exc, IndexNotFoundError) else 403 if isinstance(exc, UnsafePathError) else 400
        if not isinstance(exc, (BadQueryError, IndexNotFoundError)):
            status = 422 if exc.__class__.__name__ == "ImageDecodeError" else 500
        return JSONResponse({"error": str(exc), "type": type(exc).__name__}, status_code=status)

    def _results(hits: list[Any]) -> list[dict[str, Any]]:
        out = []
        for hit in hits:
            item = hit.to_dict()
            item["media"] = f"/media/{hit.id}" if hit.kind == "image" else None
            out.append(item)
        return out

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> str:
        return (WEB_DIR / "index.html").read_text(encoding="utf-8")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return holder.get().info()

    @app.get("/api/search")
    def search(
        q: str = Query(..., max_length=2000),
        k: int = Query(20, ge=1, le=1000),
        kind: str = Query("any", pattern="^(any|image|text)$"),
        where: list[str] = Query(default_factory=list),
        exact: bool = False,
        url: str | None = Query(None, max_length=2048),
    ) -> dict[str, Any]:
        idx = holder.get()
        if url:
            if not config.allow_urls:
                raise BadQueryError("image URLs are disabled on this server (start it with --allow-urls)")
            from mmsearch.imageio import load_image
            from mmsearch.urlfetch import FetchPolicy, fetch_image_bytes

            data = fetch_image_bytes(
                url, FetchPolicy(max_bytes=config.max_upload_bytes, allow_private=config.url_allow_private)
            )
            query: Any = load_image(data, max_pixels=config.max_pixels)
        else:
            query = q
        hits = idx.search(query, k=k, kind=kind, where=where or None, exact=exact)
        return {"query": q, "results": _results(hits)}

    @app.post("/api/search/image")
    async def search_image(
        request: Request,
        file: UploadFile = File(...),
        k: int = Query(20, ge=1, le=1000),
        kind: str = Query("any", pattern="^(any|image|text)$"),
    ) -> dict[str, Any]:
        from mmsearch.imageio import load_image

        data = await file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {config.max_upload_bytes} bytes")
        image = load_image(data, max_pixels=config.max_pixels)
        hits = holder.get().search(image, k=k, kind=kind)
        return {"query": file.filename, "results": _results(hits)}

    @app.get("/media/{item_id}")
    def media(item_id: int) -> FileResponse:
        idx = holder.get()
        path = idx.image_path(item_id)
        if path is None or not os.path.isfile(path):
            raise HTTPException(404, "no image with that id")
        return FileResponse(path)

    @app.middleware("http")
    async def _cap_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > config.max_upload_bytes + 64 * 1024:
            return JSONResponse({"error": "request body too large"}, status_code=413)
        return await call_next(request)

    return app


__all__ = ["DEFAULT_MAX_PIXELS", "ServerConfig", "create_app"]
