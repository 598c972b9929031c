"""The server's non-search routes: gallery page, index info, media, health, readiness, metrics.

GET /            the gallery page (strict CSP: its one script runs by a per-answer nonce)
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
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response

from mmsearch.serve.drain import ServeState
from mmsearch.serve.failures import error_responses
from mmsearch.serve.files import FileChangedError, read_indexed_file
from mmsearch.serve.holder import IndexHolder
from mmsearch.serve.observe import Metrics

if TYPE_CHECKING:
    from mmsearch.engine import SearchIndex
    from mmsearch.serve.config import ServerConfig

WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_ITEM_ID = 2**63 - 1
_PAGE_CSP = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_INFO_PATH_KEYS = ("index_dir",)


_STATUS = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string"}},
}


def _json_ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def page_csp(nonce: str) -> str:
    """The gallery's Content-Security-Policy: only the script carrying ``nonce`` runs."""
    return _PAGE_CSP.format(nonce=nonce)


def gallery_page(nonce: str) -> str:
    """The gallery's HTML with ``nonce`` on its script tags."""
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    return html.replace("<script>", f'<script nonce="{nonce}">')


def snapshot_body(index: SearchIndex) -> dict[str, Any]:
    """The served snapshot, as ``/readyz`` reports it."""
    snap = index.snapshot
    return {
        "table_version": snap.table_version,
        "generation": snap.generation,
        "model": snap.model_key,
    }


def add_ops_routes(
    app: FastAPI, config: ServerConfig, holder: IndexHolder, state: ServeState, metrics: Metrics
) -> None:
    """Adds the routes of this module's docstring to ``app``."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page() -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(
            gallery_page(nonce),
            headers={"Content-Security-Policy": page_csp(nonce), "Cache-Control": "no-store"},
        )

    @app.get(
        "/api/info",
        responses={
            200: _json_ok(
                "The served index: items, model, ANN indexes, snapshot.", {"type": "object"}
            ),
            **error_responses(),
        },
        response_class=JSONResponse,
    )
    def info() -> dict[str, Any]:
        """What the server serves: the index's items, model and ANN indexes."""
        out = holder.get().info()
        out["reload_error"] = holder.reload_error
        if not config.expose_paths:
            for key in _INFO_PATH_KEYS:
                out.pop(key, None)
            if out["reload_error"]:
                out["reload_error"] = "the newest snapshot could not be opened (see the server log)"
        return out

    @app.get(
        "/media/{item_id}",
        responses={
            200: {
                "description": "The image's bytes, exactly as indexed.",
                "content": {
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **error_responses(404, 422),
        },
        response_class=Response,
    )
    def media(item_id: Annotated[int, PathParam(ge=0, le=MAX_ITEM_ID)]) -> Response:
        """The image file of an indexed item, while it is still the one that was indexed."""
        index = holder.get()
        item = holder.catalog(index).get(item_id)
        if item is None or item.kind != "image":
            metrics.media_refused.labels(reason="unknown_id").inc()
            raise HTTPException(404, "no image with that id")
        try:
            data = read_indexed_file(
                item.path, item.root, size=item.size, mtime_ns=item.mtime_ns, sha256=item.sha256
            )
        except FileChangedError:
            metrics.media_refused.labels(reason="changed").inc()
            raise HTTPException(
                404,
                "this image changed since indexing; re-index it (mmsearch check lists such items)",
            ) from None
        media_type = (
            mimetypes.guess_type(os.path.basename(item.path))[0] or "application/octet-stream"
        )
        headers = {"Cache-Control": "private, max-age=60"}
        return Response(data, media_type=media_type, headers=headers)

    @app.get(
        "/healthz",
        tags=["operations"],
        responses={
            200: _json_ok("The process runs (no token, no Host check).", _STATUS),
            **error_responses(),
        },
        response_class=JSONResponse,
    )
    def healthz() -> dict[str, str]:
        """Liveness, for load balancers."""
        return {"status": "alive"}

    def _warm() -> None:
        index = holder.get()
        _ = index.encoder  # load the model now, not on the first query

    @app.get(
        "/readyz",
        tags=["operations"],
        responses={
            200: _json_ok("Ready: the served snapshot, item count and worker pid.", _STATUS),
            **error_responses(),
            503: {
                "description": "Starting (index or model not loaded yet), failed, or draining.",
                "content": {
                    "application/json": {
                        "schema": {"anyOf": [_STATUS, {"$ref": "#/components/schemas/ErrorBody"}]}
                    }
                },
            },
        },
        response_class=JSONResponse,
    )
    def readyz() -> JSONResponse:
        """Readiness: 200 once the index is open and the model loaded."""
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

    @app.get(
        "/metrics",
        tags=["operations"],
        responses={
            200: {
                "description": "Prometheus text exposition.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **error_responses(),
        },
        response_class=Response,
    )
    def metrics_route() -> Response:
        """Prometheus metrics (see the README's Deploying section)."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.state.warm = _warm
