"""Who may ask: Host allowlist, bearer-token auth, the gallery's sign-in, the bind policy.

- **Host allowlist** (DNS rebinding): a request whose ``Host`` is not a loopback
  name, the bound address or an ``--allowed-host`` gets 400 (Starlette's
  ``TrustedHostMiddleware``). ``/healthz`` is exempt so load-balancer probes by IP work.
- **Token**: with a token configured, every route but ``/healthz`` (and the sign-in
  form) needs ``Authorization: Bearer <token>`` or the session cookie the sign-in
  form sets. Comparisons are constant-time (:func:`hmac.compare_digest`). The cookie
  holds an HMAC of the token, never the token, and is ``HttpOnly; SameSite=Strict``.
- **Bind policy**: :func:`check_bind_policy` refuses a non-loopback address without
  a token, before anything heavy is loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
from pathlib import Path
from typing import Any

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request

from mmsearch.errors import MMSearchError

SESSION_COOKIE = "mmsearch_session"
SESSION_MAX_AGE_S = 7 * 24 * 3600
LOGIN_PATH = "/login"
#: Paths that never need a token: liveness, and the form that accepts the token.
PUBLIC_PATHS = frozenset({"/healthz", LOGIN_PATH})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
_LOGIN_HTML = Path(__file__).resolve().parent / "web" / "login.html"
_LOGIN_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"


class InsecureBindError(MMSearchError):
    """Serving on a non-loopback address without a token was refused."""


def is_loopback(host: str) -> bool:
    """True for loopback names and addresses (``localhost``, ``127.x``, ``::1``)."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind_policy(host: str, token: str | None, insecure_no_auth: bool) -> None:
    """Raises :class:`InsecureBindError` for a non-loopback ``host`` without a token."""
    if token or insecure_no_auth or is_loopback(host):
        return
    raise InsecureBindError(
        f"refusing to serve on {host} without a token: anyone who can reach it could search the "
        "index and read its images; set MMSEARCH_TOKEN or pass --token "
        "(or --insecure-no-auth if a proxy in front does the authentication)"
    )


def allowed_hosts(bound_host: str, extra: list[str]) -> list[str]:
    """Host header values accepted: loopback names, the bound address, ``extra``.

    For a wildcard bind (``0.0.0.0`` / ``::``) the machine's host name is added, but
    clients reaching it by another name or address need ``--allowed-host``.
    ``*`` in ``extra`` turns the check off; ``*.example.com`` matches subdomains.
    """
    hosts = list(LOOPBACK_NAMES)
    if bound_host in ("0.0.0.0", "::", ""):
        name = socket.gethostname()
        hosts += [name, socket.getfqdn(name)]
    elif bound_host not in hosts:
        hosts.append(bound_host if ":" not in bound_host else f"[{bound_host.strip('[]')}]")
    for host in extra:
        if host not in hosts:
            hosts.append(host)
    return hosts


class HostCheckMiddleware:
    """Starlette's ``TrustedHostMiddleware`` on every path but ``/healthz``."""

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app = app
        self.checked = TrustedHostMiddleware(app, allowed_hosts=allowed, www_redirect=False)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == "/healthz":
            await self.app(scope, receive, send)
        else:
            await self.checked(scope, receive, send)


def session_value(token: str) -> str:
    """The cookie value for ``token``: an HMAC of it (the token itself never goes in a cookie)."""
    return hmac.new(token.encode(), b"mmsearch-session-v1", hashlib.sha256).hexdigest()


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _cookie(scope: dict[str, Any], name: str) -> str | None:
    from http.cookies import CookieError, SimpleCookie

    raw = _header(scope, b"cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def login_page(message: str = "") -> bytes:
    """The sign-in page, with an optional (escaped) message."""
    import html

    text = _LOGIN_HTML.read_text(encoding="utf-8")
    note = f'<p class="error">{html.escape(message)}</p>' if message else ""
    return text.replace("<!--message-->", note).encode()


class TokenAuthMiddleware:
    """Requires the token (header or session cookie) on every path but :data:`PUBLIC_PATHS`.

    Unauthenticated browsers asking for the gallery (``GET /``) get the sign-in page
    (status 401); everything else gets a 401 JSON error with ``WWW-Authenticate: Bearer``.
    """

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._token = token.encode()
        self._session = session_value(token).encode()

    def authorized(self, scope: dict[str, Any]) -> bool:
        auth = _header(scope, b"authorization") or ""
        scheme, _, credential = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), self._token
        ):
            return True
        cookie = _cookie(scope, SESSION_COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self._session)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope.get("path") == "/" and scope.get("method") in ("GET", "HEAD"):
            body = login_page()
            headers = [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-security-policy", _LOGIN_CSP.encode()),
                (b"x-content-type-options", b"nosniff"),
            ]
        else:
            body = json.dumps(
                {
                    "error": "authentication required: send Authorization: Bearer <token>",
                    "type": "Unauthorized",
                }
            ).encode()
            headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def add_login_route(app: Any, token: str) -> None:
    """``POST /login`` (form field ``token``): sets the session cookie and goes back to the gallery."""
    from fastapi.responses import HTMLResponse, RedirectResponse, Response

    expected = token.encode()
    session = session_value(token)

    @app.post(LOGIN_PATH, include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        given = str(form.get("token") or "").strip().encode()
        if not hmac.compare_digest(given, expected):
            return HTMLResponse(
                login_page("That token is not right."),
                status_code=401,
                headers={
                    "Content-Security-Policy": _LOGIN_CSP,
                    "X-Content-Type-Options": "nosniff",
                },
            )
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=SESSION_MAX_AGE_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response
