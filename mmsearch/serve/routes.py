"""The server's non-search routes: gallery page, index info, media, health, readiness, metrics.

GET /            the gallery page (strict CSP)
GET /api/info    index info (server paths only with ``expose_paths``)
GET /media/{id}  an indexed image, only while it is still what was indexed
GET /healthz     200 while the process runs (no token, no Host check)
GET /readyz      200 once the index is open and the model loaded; 503 before and while draining;
                 ``reload_error`` when a newer snapshot could not be loaded (the old one serves)
GET /metrics     Prometheus text format
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from mmsearch.serve.files import FileChangedError, open_indexed_file, read_chunks
from mmsearch.serve.holder import IndexHolder
from mmsearch.serve.lifecycle import ServeState
from mmsearch.serve.observe import Metrics

WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_ITEM_ID = 2**63 - 1
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_INFO_PATH_KEYS = ("index_dir",)


def snapshot_body(index: Any) -> dict[str, Any]:
    """The served snapshot, as ``/readyz`` reports it."""
    snap = index.snapshot
    return {
        "table_version": snap.table_version,
        "generation": snap.generation,
        "model": snap.model_key,
    }


def add_ops_routes(
    app: FastAPI, config: Any, holder: IndexHolder, state: ServeState, metrics: Metrics
) -> None:
    """Adds the routes of this module's docstring to ``app``."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> HTMLResponse:
        html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(
            html, headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"}
        )

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        out = holder.get().info()
        out["reload_error"] = holder.reload_error
        if not config.expose_paths:
            for key in _INFO_PATH_KEYS:
                out.pop(key, None)
            if out["reload_error"]:
                out["reload_error"] = "the newest snapshot could not be opened (see the server log)"
        return out

    @app.get("/media/{item_id}")
    def media(item_id: Annotated[int, PathParam(ge=0, le=MAX_ITEM_ID)]) -> StreamingResponse:
        index = holder.get()
        item = holder.catalog(index).get(item_id)
        if item is None or item.kind != "image":
            metrics.media_refused.labels(reason="unknown_id").inc()
            raise HTTPException(404, "no image with that id")
        try:
            fd = open_indexed_file(item.path, item.root, size=item.size, mtime_ns=item.mtime_ns)
        except FileChangedError:
            metrics.media_refused.labels(reason="changed").inc()
            raise HTTPException(
                404,
                "this image changed since indexing; re-index it (mmsearch check lists such items)",
            ) from None
        size = os.fstat(fd).st_size
        media_type = (
            mimetypes.guess_type(os.path.basename(item.path))[0] or "application/octet-stream"
        )
        headers = {
            "Content-Length": str(size),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=60",
        }
        return StreamingResponse(read_chunks(fd), media_type=media_type, headers=headers)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    def _warm() -> None:
        index = holder.get()
        _ = index.encoder  # load the model now, not on the first query

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not state.ready:
            state.start_warming(_warm)
            body: dict[str, Any] = {"status": "starting"}
            if state.error:
                body = {
                    "status": "error",
                    "error": state.error if config.expose_paths else state.error.split(":")[0],
                }
            return JSONResponse(body, status_code=503)
        index = holder.get()
        snapshot = snapshot_body(index)
        body = {"status": "ready", "snapshot": snapshot, "items": len(index), "pid": os.getpid()}
        error = holder.reload_error  # still ready: the previous snapshot serves meanwhile
        if error is not None:
            body["reload_error"] = error if config.expose_paths else error.split(":")[0]
        return JSONResponse(body)

    @app.get("/metrics", include_in_schema=False)
    def metrics_route() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.state.warm = _warm
