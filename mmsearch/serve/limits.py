"""Request limits: the body-size cap (413) and error bodies that never echo much input.

A 60 KB query string must not come back as a 60 KB 422: :func:`validation_error_body`
caps every echoed input at :data:`MAX_ECHO_CHARS` characters (and lists at
:data:`MAX_ECHO_ITEMS` items), and :func:`cap_text` caps every error message (which
may quote a filter column or a path) at :data:`MAX_MESSAGE_CHARS`.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_ECHO_CHARS = 120
MAX_ECHO_ITEMS = 5
MAX_ERRORS_SHOWN = 5
#: The longest error message sent (messages quote the user's input).
MAX_MESSAGE_CHARS = 400


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


def _printable(text: str) -> str:
    """``text`` with lone surrogates (from ``\\ud800`` escapes in JSON) made encodable."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cap_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to about ``limit`` characters: the start and the end, the middle elided.

    Error messages name the user's input (a column, a path, a filter); a 5 MB column
    name must not come back as a 5 MB error. Keeping both ends keeps the part of the
    message that says what to do, which usually follows the echoed value.
    """
    text = _printable(text)
    if len(text) <= limit:
        return text
    half = max(1, (limit - 40) // 2)
    return f"{text[:half]}… ({len(text) - 2 * half} characters elided) …{text[-half:]}"


def cap_echo(value: Any) -> Any:
    """``value`` made safe to echo: strings cut to :data:`MAX_ECHO_CHARS` characters,
    containers to :data:`MAX_ECHO_ITEMS` items, huge integers and non-finite numbers
    (which JSON cannot carry) described in a short string."""
    if isinstance(value, str):
        value = _printable(value)
        return (
            value
            if len(value) <= MAX_ECHO_CHARS
            else f"{value[:MAX_ECHO_CHARS]}… ({len(value)} characters)"
        )
    if isinstance(value, bytes):
        return cap_echo(value.decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {cap_echo(str(k)): cap_echo(v) for k, v in list(value.items())[:MAX_ECHO_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [cap_echo(v) for v in list(value)[:MAX_ECHO_ITEMS]]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # str() of a 5,000-digit integer fails (and 4,000 digits are 4 KB of echo).
        return value if value.bit_length() <= 63 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    return cap_echo(str(value))


def validation_error_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON body of a 422: a one-line summary plus the first errors, inputs capped."""
    summary = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
        for e in errors[:MAX_ERRORS_SHOWN]
    )
    detail = [
        {key: cap_echo(value) for key, value in error.items() if key != "url"}
        for error in errors[:MAX_ERRORS_SHOWN]
    ]
    return {
        "error": f"invalid request: {cap_text(summary)}",
        "type": "ValidationError",
        "detail": detail,
    }
