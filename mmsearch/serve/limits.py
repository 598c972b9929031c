"""Request limits: the body-size cap (413) and validation errors that never echo much input.

A 60 KB query string must not come back as a 60 KB 422: :func:`validation_error_body`
caps every echoed input at :data:`MAX_ECHO_CHARS` characters (and lists at
:data:`MAX_ECHO_ITEMS` items).
"""

from __future__ import annotations

import json
from typing import Any

MAX_ECHO_CHARS = 120
MAX_ECHO_ITEMS = 5
MAX_ERRORS_SHOWN = 5


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


def cap_echo(value: Any) -> Any:
    """``value`` with long strings cut to :data:`MAX_ECHO_CHARS` and containers to :data:`MAX_ECHO_ITEMS`."""
    if isinstance(value, str):
        return (
            value
            if len(value) <= MAX_ECHO_CHARS
            else f"{value[:MAX_ECHO_CHARS]}… ({len(value)} characters)"
        )
    if isinstance(value, bytes):
        return cap_echo(value.decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {
            str(k)[:MAX_ECHO_CHARS]: cap_echo(v) for k, v in list(value.items())[:MAX_ECHO_ITEMS]
        }
    if isinstance(value, (list, tuple)):
        return [cap_echo(v) for v in list(value)[:MAX_ECHO_ITEMS]]
    if value is None or isinstance(value, (bool, int, float)):
        return value
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
    return {"error": f"invalid request: {cap_echo(summary)}", "detail": detail}
