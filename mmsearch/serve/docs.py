"""``/docs``: Swagger UI for ``/openapi.json``, served from the installed
``swagger-ui-bundle-v2`` package (the ``server`` extra), never from a CDN.

The page's one inline script runs by a per-answer CSP nonce; the UI's own files come
from ``/docs/assets`` (``'self'``). Without the package, ``/docs`` is not served
(``/openapi.json`` still is).
"""

from __future__ import annotations

import secrets

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
_CSP = (
    "default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def swagger_ui_dir() -> str | None:
    """The folder of the installed Swagger UI files, or None without the package."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return str(swagger_ui_bundle.swagger_ui_path)


def add_docs_route(app: FastAPI) -> bool:
    """Adds ``/docs`` (and its assets) to ``app``; False when Swagger UI is not installed."""
    folder = swagger_ui_dir()
    if folder is None:
        return False
    app.mount(ASSETS_PATH, StaticFiles(directory=folder), name="swagger-ui")

    @app.get(DOCS_PATH, include_in_schema=False)
    def docs() -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="mmsearch API",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        )
        html = bytes(page.body).decode("utf-8").replace("<script>", f'<script nonce="{nonce}">')
        return HTMLResponse(html, headers={"Content-Security-Policy": _CSP.format(nonce=nonce)})

    return True
