"""JSON bodies: answers serialised once (``orjson`` when installed), and requests that
must declare JSON (:func:`require_json`).

A FastAPI route that returns a dict has it validated against its return type and
encoded again (``jsonable_encoder`` + pydantic); a search answer is plain JSON data
already, so the search routes return :func:`json_response` instead: one
serialisation, in C with orjson (the ``server`` extra installs it), else ``json``.
NaN and infinity become ``null`` either way (JSON has no such numbers).

>>> json_response({"results": []}).body
b'{"results":[]}'
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

try:
    import orjson
except ImportError:  # pragma: no cover - the server extra installs it
    orjson = None  # type: ignore[assignment]

__all__ = ["dumps", "json_response", "require_json"]


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars/arrays turned into Python ones and non-finite floats into None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _plain(value.tolist())
    return value


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(data: Any) -> bytes:
    """``data`` as compact UTF-8 JSON bytes."""
    if orjson is not None:
        return orjson.dumps(data, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(
        _plain(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode()


def json_response(data: Any, status_code: int = 200) -> Response:
    """A ``200 application/json`` (or ``status_code``) response holding ``data``."""
    return Response(dumps(data), status_code=status_code, media_type="application/json")


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (``application/json`` or ``*/*+json``): a
    browser form cannot send that cross-site without a preflight, and a client that
    forgot the header learns it in one line. (A route dependency.)"""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not (
        content_type.startswith("application/") and content_type.endswith("+json")
    ):
        raise HTTPException(415, "send the body as JSON (Content-Type: application/json)")
