"""Token authentication: bearer header, the gallery's signed session cookie, sign-in and
sign-out, and a per-client brake on failed attempts.

- With a token configured, every route but :data:`PUBLIC_PATHS` needs
  ``Authorization: Bearer <token>`` (compared in constant time) or a session cookie.
- The cookie is a signed, timestamped session id (``itsdangerous``, keyed by the
  token): it never holds the token, expires after :data:`SESSION_MAX_AGE_S`, stops
  working when the token changes, and ``POST /logout`` revokes it (for every worker
  when the server has a shared state folder). ``HttpOnly; SameSite=Strict``.
- Failed attempts (a wrong bearer token, a wrong sign-in) are counted per client
  address (``limits``' moving window): past :data:`MAX_FAILURES` a minute the client
  gets 429 with ``Retry-After`` until the window moves on.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import Request

from mmsearch.serve.failures import error_body, send_error

SESSION_COOKIE = "mmsearch_session"
SESSION_MAX_AGE_S = 12 * 3600
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
#: Paths that never need a token: liveness, and the forms that sign in and out.
PUBLIC_PATHS = frozenset({"/healthz", LOGIN_PATH, LOGOUT_PATH})
#: Failed attempts a client may make per minute before it is answered 429.
MAX_FAILURES = 10
_LOGIN_HTML = Path(__file__).resolve().parent / "web" / "login.html"
_LOGIN_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
_SALT = "mmsearch-session-v2"


class SessionKeeper:
    """Issues, checks and revokes signed session cookies for one token.

    Revoked session ids are kept until they would have expired anyway: in memory,
    and as empty files under ``state_dir/revoked`` when given (worker processes of
    one server share that folder, so a sign-out counts on all of them).
    """

    def __init__(
        self, token: str, *, state_dir: Path | None = None, max_age_s: int = SESSION_MAX_AGE_S
    ) -> None:
        self._signer = URLSafeTimedSerializer(token, salt=_SALT)
        self.max_age_s = max_age_s
        self._revoked: dict[str, float] = {}  # session id -> when it expires anyway
        self._lock = threading.Lock()
        self._dir = Path(state_dir) / "revoked" if state_dir is not None else None
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)

    def issue(self) -> str:
        """A new cookie value (a random session id, signed with the time)."""
        return str(self._signer.dumps(secrets.token_urlsafe(18)))

    def session_id(self, cookie: str) -> str | None:
        """The session id of a valid, unexpired, unrevoked cookie, else None."""
        try:
            sid = self._signer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:  # includes SignatureExpired
            return None
        if not isinstance(sid, str) or not sid.replace("-", "").replace("_", "").isalnum():
            return None
        if sid in self._revoked or (self._dir is not None and (self._dir / sid).exists()):
            return None
        return sid

    def revoke(self, cookie: str) -> None:
        """Makes ``cookie`` invalid from now on (a no-op for an invalid one)."""
        sid = self.session_id(cookie)
        if sid is None:
            return
        now = time.time()
        with self._lock:
            self._revoked[sid] = now + self.max_age_s
            for old in [s for s, until in self._revoked.items() if until < now]:
                del self._revoked[old]
        if self._dir is not None:
            (self._dir / sid).touch()
            for path in self._dir.iterdir():  # forget the ones that have expired anyway
                try:
                    if path.stat().st_mtime + self.max_age_s < now:
                        path.unlink()
                except OSError:
                    pass


class FailureThrottle:
    """Counts failed attempts per client; :meth:`retry_after` says how long one must wait."""

    def __init__(self, per_minute: int = MAX_FAILURES) -> None:
        self._item = RateLimitItemPerMinute(per_minute)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def retry_after(self, client: str) -> int:
        """0 when ``client`` may try now, else the seconds until it may."""
        if self._limiter.test(self._item, client):
            return 0
        reset = self._limiter.get_window_stats(self._item, client).reset_time
        return max(1, math.ceil(reset - time.time()))

    def failed(self, client: str) -> None:
        self._limiter.hit(self._item, client)


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


def client_of(scope: Mapping[str, Any]) -> str:
    """The client address a request came from (after ``--proxy-headers``)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def login_page(message: str = "") -> bytes:
    """The sign-in page, with an optional (escaped) message."""
    import html

    text = _LOGIN_HTML.read_text(encoding="utf-8")
    note = f'<p class="error">{html.escape(message)}</p>' if message else ""
    return text.replace("<!--message-->", note).encode()


async def _send_throttled(send: Any, wait_s: int) -> None:
    await send_error(
        send,
        429,
        f"too many failed attempts from this address; retry in {wait_s} s",
        "TooManyAttempts",
        [(b"retry-after", str(wait_s).encode())],
    )


class TokenAuthMiddleware:
    """Requires the token (header or session cookie) on every path but :data:`PUBLIC_PATHS`.

    Unauthenticated browsers asking for the gallery (``GET /``) get the sign-in page
    (status 401); everything else gets a 401 JSON error with ``WWW-Authenticate: Bearer``.
    A client past its failed attempts gets 429 until the window moves on.
    """

    def __init__(
        self, app: Any, token: str, sessions: SessionKeeper, throttle: FailureThrottle
    ) -> None:
        self.app = app
        self._token = token.encode()
        self.sessions = sessions
        self.throttle = throttle

    def _credential(self, scope: dict[str, Any]) -> tuple[bool, bool]:
        """(authorised, a wrong credential was presented)."""
        auth = _header(scope, b"authorization") or ""
        scheme, _, credential = auth.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            if hmac.compare_digest(credential.strip().encode(), self._token):
                return True, False
            return False, True
        cookie = _cookie(scope, SESSION_COOKIE)
        if cookie is not None:
            return self.sessions.session_id(cookie) is not None, False
        return False, bool(auth)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        client = client_of(scope)
        wait_s = self.throttle.retry_after(client)
        if wait_s:
            await _send_throttled(send, wait_s)
            return
        authorised, wrong = self._credential(scope)
        if authorised:
            await self.app(scope, receive, send)
            return
        if wrong:
            self.throttle.failed(client)
        if scope.get("path") == "/" and scope.get("method") in ("GET", "HEAD"):
            body = login_page()
            headers = [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-security-policy", _LOGIN_CSP.encode()),
            ]
        else:
            body = error_body(
                "authentication required: send Authorization: Bearer <token>", "Unauthorized"
            )
            headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def add_login_routes(
    app: Any, token: str, sessions: SessionKeeper, throttle: FailureThrottle
) -> None:
    """``POST /login`` (form field ``token``): sets a session cookie and goes back to the
    gallery. ``POST /logout``: revokes and deletes it."""
    from fastapi.responses import HTMLResponse, RedirectResponse, Response

    expected = token.encode()

    @app.post(LOGIN_PATH, include_in_schema=False)
    async def login(request: Request) -> Response:
        client = client_of(request.scope)
        wait_s = throttle.retry_after(client)
        if wait_s:
            return HTMLResponse(
                login_page(f"Too many wrong tokens from here; try again in {wait_s} s."),
                status_code=429,
                headers={"Content-Security-Policy": _LOGIN_CSP, "Retry-After": str(wait_s)},
            )
        form = await request.form()
        given = str(form.get("token") or "").strip().encode()
        if not hmac.compare_digest(given, expected):
            throttle.failed(client)
            return HTMLResponse(
                login_page("That token is not right."),
                status_code=401,
                headers={"Content-Security-Policy": _LOGIN_CSP},
            )
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            sessions.issue(),
            max_age=sessions.max_age_s,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post(LOGOUT_PATH, include_in_schema=False)
    async def logout(request: Request) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            sessions.revoke(cookie)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response
