"""Error answers: one JSON model for every failure, the handlers that produce it, and
what each route declares in ``/openapi.json``.

Every error the server sends is ``{"error": message, "type": name, "detail": ...}``
(``detail`` optional) with ``Content-Type: application/json``: library errors
(:class:`mmsearch.errors.MMSearchError`), framework errors (404, 405, 422), the
middlewares' own answers (400 Host, 401, 403 Origin, 413, 429, 503 draining) and,
as a last resort, unexpected exceptions (500, never a plain-text page). Messages are
capped (:func:`mmsearch.serve.limits.cap_text`): they may quote the user's input.

>>> error_body("no image with that id", "NotFound")
b'{"error":"no image with that id","type":"NotFound"}'
"""

from __future__ import annotations

import errno
import http
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from mmsearch.errors import (
    BadQueryError,
    ImageDecodeError,
    ImageNotFoundError,
    IndexCorruptError,
    IndexNotFoundError,
    MMSearchError,
    ModelLoadError,
    ModelMismatchError,
    UnsafePathError,
)
from mmsearch.serve.limits import cap_text, validation_error_body

_log = logging.getLogger("mmsearch.serve")


class ErrorBody(BaseModel):
    """What every error answer holds."""

    error: str = Field(description="One line: what went wrong and what to do about it.")
    type: str = Field(description="The kind of error (an exception or HTTP status name).")
    detail: Any = Field(None, description="More about it, where there is more (validation errors).")


#: What each error status means on this server (the schema's descriptions).
ERROR_MEANINGS = {
    400: "The request cannot be answered as asked, for a reason the schema cannot state: "
    "query-language syntax, a filter on a column this index does not have or with a "
    "value of the wrong type for it, terms that cancel out, an image URL that cannot be "
    "fetched, two Host headers or one this server does not answer to.",
    401: "A token is required: send `Authorization: Bearer <token>` (or sign in).",
    403: "Refused: an image path outside the allowed folders, or a cross-site request "
    "(its `Origin` is not this server).",
    404: "No such thing: an unknown id, an image changed since indexing, or an image "
    "path (inside the allowed folders) that names no file.",
    405: "The path does not take this method (`Allow` lists those it takes).",
    413: "The request body is larger than the server accepts.",
    415: "The request body has another content type than the route takes.",
    422: "The request does not match its schema, or an image cannot be decoded.",
    429: "Too many failed sign-ins from this client; retry after `Retry-After` seconds.",
    431: "The request headers are larger than the server accepts.",
    503: "Not now: the server is starting, shutting down or full, or a model it needs "
    "cannot be loaded; retry after `Retry-After` seconds where given.",
}

#: Statuses any route can answer: auth, Host check, size caps, drain and capacity.
COMMON_ERRORS = (400, 401, 413, 431, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status with the error model and its meaning."""
    return {
        status: {"model": ErrorBody, "description": ERROR_MEANINGS[status]}
        for status in sorted(set(statuses) | set(COMMON_ERRORS))
    }


def error_body(message: str, kind: str, detail: Any = None) -> bytes:
    """The JSON bytes of an error answer (message capped)."""
    body: dict[str, Any] = {"error": cap_text(message), "type": kind}
    if detail is not None:
        body["detail"] = detail
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def error_response(
    status: int, message: str, kind: str, detail: Any = None, headers: dict[str, str] | None = None
) -> Response:
    """An error answer as a Starlette response."""
    return Response(
        error_body(message, kind, detail),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def send_error(
    send: Any,
    status: int,
    message: str,
    kind: str,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> None:
    """Sends an error answer from an ASGI middleware (before any route ran)."""
    body = error_body(message, kind)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def status_name(status: int) -> str:
    """``404`` → ``"NotFound"``."""
    try:
        return http.HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")
    except ValueError:
        return f"Status{status}"


def status_of(exc: MMSearchError) -> int:
    """The HTTP status of a library error."""
    if isinstance(exc, UnsafePathError):
        return 403
    if isinstance(exc, ImageNotFoundError):
        return 404
    if isinstance(exc, BadQueryError):
        return 400
    if isinstance(exc, ImageDecodeError):
        return 422
    if isinstance(exc, (IndexNotFoundError, IndexCorruptError, ModelLoadError, ModelMismatchError)):
        return 503  # the server cannot answer until its index or model is fixed
    return 500


def install_error_handlers(app: FastAPI, allowed_methods: Any) -> None:
    """Makes every error ``app`` raises an :class:`ErrorBody` answer.

    ``allowed_methods(path)`` lists the methods of a path (for ``Allow`` on 405s).
    """

    @app.exception_handler(MMSearchError)
    async def _mmsearch_error(request: Request, exc: MMSearchError) -> Response:
        status = status_of(exc)
        retry = getattr(exc, "retry_after_s", None)
        headers = {"Retry-After": str(max(1, int(retry)))} if retry else None
        return error_response(status, str(exc), type(exc).__name__, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.scope))
        return error_response(
            exc.status_code, str(exc.detail), status_name(exc.status_code), headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
        body = validation_error_body(list(exc.errors()))
        return Response(
            json.dumps(body, ensure_ascii=False).encode(),
            status_code=422,
            media_type="application/json",
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            # Out of file descriptors: a capacity problem, not a bug; the client may retry.
            _log.warning("out of file descriptors answering %s", request.url.path)
            return error_response(
                503,
                "the server is out of open files right now; retry shortly",
                "ServerBusy",
                headers={"Retry-After": "1"},
            )
        _log.error("unexpected error answering %s", request.url.path, exc_info=exc)
        return error_response(500, "internal server error (see the server log)", "InternalError")
