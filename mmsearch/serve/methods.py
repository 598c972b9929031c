"""HTTP methods per path (``OPTIONS`` and ``Allow``), and the headers every answer carries.

Starlette matches a request to the first route whose path fits: for a path with a
GET route and a POST route, ``OPTIONS`` (or ``PUT``) met the GET route and came back
405 with ``Allow: GET`` only. Here ``Allow`` lists the methods of every route of the
path, on 405s and on ``OPTIONS`` (204).
"""

from __future__ import annotations

from typing import Any

from starlette.routing import Match

_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(router: Any, scope: dict[str, Any]) -> list[str]:
    """The methods the routes of ``scope``'s path take (with HEAD and OPTIONS); [] when none."""
    methods: set[str] = set()
    probe = {**scope, "type": "http"}
    for route in router.routes:
        route_methods = getattr(route, "methods", None)
        if not route_methods:
            continue
        match, _ = route.matches(probe)
        if match != Match.NONE:
            methods |= set(route_methods)
    if not methods:
        return []
    methods.add("OPTIONS")
    return sorted(methods, key=lambda m: _ORDER.index(m) if m in _ORDER else len(_ORDER))


class MethodsMiddleware:
    """Answers ``OPTIONS`` for any path the router knows: 204 with ``Allow``."""

    def __init__(self, app: Any, router: Any) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "OPTIONS":
            methods = allowed_methods(self.router, scope)
            if methods:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 204,
                        "headers": [(b"allow", ", ".join(methods).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """``X-Content-Type-Options: nosniff`` on every answer (JSON included), so no
    browser ever reads an answer as another type than it says."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
