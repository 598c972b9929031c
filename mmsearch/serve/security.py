"""Where requests may come from: Host allowlist, Origin check, the bind and token policies.

- **Host allowlist** (DNS rebinding): a request whose ``Host`` is not a loopback
  name, the bound address or an ``--allowed-host`` gets 400 (Starlette's
  ``TrustedHostMiddleware``), and so does one with two ``Host`` headers.
  ``/healthz`` is exempt so load-balancer probes by IP work. (Absolute-form request
  targets naming another host are refused by the connection layer,
  :mod:`mmsearch.serve.connections`, which sees the raw target.)
- **Origin** (cross-site requests): a ``POST``, ``PUT``, ``PATCH`` or ``DELETE``
  whose ``Origin`` is not this server (or ``null``) gets 403, with or without a
  token: a web page elsewhere cannot make a visitor's browser upload, sign in or write.
- **Bind policy**: :func:`check_bind_policy` refuses a non-loopback address without
  a token, and :func:`check_token` a token shorter than :data:`MIN_TOKEN_CHARS`
  characters, blank, or with spaces at either end, before anything heavy is loaded.
  Token checks themselves live in :mod:`mmsearch.serve.auth`.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from starlette.middleware.trustedhost import TrustedHostMiddleware

from mmsearch.errors import MMSearchError
from mmsearch.serve.failures import send_error

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
#: The shortest token accepted (a guessable token is no protection).
MIN_TOKEN_CHARS = 16
#: Methods that change something or upload: their Origin is checked.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class InsecureBindError(MMSearchError):
    """Serving on a non-loopback address without a token was refused."""


class InsecureTokenError(MMSearchError):
    """The access token is too short, blank, or has spaces at either end."""


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


def check_token(token: str) -> None:
    """Raises :class:`InsecureTokenError` unless ``token`` is usable: at least
    :data:`MIN_TOKEN_CHARS` characters, not blank, no white space at either end
    (the sign-in form strips what is typed, so such a token could never match)."""
    if token != token.strip():
        raise InsecureTokenError(
            "the token has spaces or line breaks at either end; remove them "
            "(e.g. MMSEARCH_TOKEN=\"$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\")"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise InsecureTokenError(
            f"the token is shorter than {MIN_TOKEN_CHARS} characters; use a random one, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
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
    """One ``Host`` header, and (unless ``allowed`` is None) one that Starlette's
    ``TrustedHostMiddleware`` accepts; on every path but ``/healthz``. Refusals are
    JSON errors (400)."""

    def __init__(self, app: Any, allowed: list[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == "/healthz":
            await self.app(scope, receive, send)
            return
        hosts = [v for k, v in scope.get("headers", []) if k == b"host"]
        if len(hosts) > 1:
            await send_error(send, 400, "more than one Host header", "BadHost")
            return
        if self.allowed is None:
            await self.app(scope, receive, send)
            return
        passed = []

        async def through(scope: Any, receive: Any, send: Any) -> None:
            passed.append(True)
            await self.app(scope, receive, send)

        async def refused(message: Any) -> None:  # Starlette's own plain-text 400
            if passed:
                await send(message)

        checked = TrustedHostMiddleware(through, allowed_hosts=self.allowed, www_redirect=False)
        await checked(scope, receive, refused)
        if not passed:
            await send_error(
                send,
                400,
                "this server does not answer to that Host header (start it with --allowed-host NAME)",
                "BadHost",
            )


def _origin_authority(origin: str) -> str | None:
    """``https://a.example:443`` → ``a.example``; None for ``null`` or anything unparsable."""
    try:
        parts = urlsplit(origin)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    shown = f"[{host}]" if ":" in host else host
    return shown if port in (None, default) else f"{shown}:{port}"


def _host_authority(host: str) -> str:
    name, _, port = host.lower().rpartition(":") if not host.endswith("]") else (host, "", "")
    if not name or not port.isdigit():
        return host.lower()
    return name if port in ("80", "443") else f"{name}:{port}"


class OriginCheckMiddleware:
    """Refuses (403) a POST, PUT, PATCH or DELETE from another origin.

    Browsers send ``Origin`` with such requests; it must name this server (the host
    and port of the ``Host`` header). Requests without ``Origin`` (curl, backends)
    pass unless ``Sec-Fetch-Site`` says a browser sent them cross-site.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        origin = next((v.decode("latin-1") for k, v in headers if k == b"origin"), None)
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), "")
        fetch_site = next((v for k, v in headers if k == b"sec-fetch-site"), b"")
        if origin is not None:
            same = _origin_authority(origin.strip()) == _host_authority(host.strip())
        else:
            same = fetch_site not in (b"cross-site", b"same-site")
        if same:
            await self.app(scope, receive, send)
            return
        await send_error(
            send,
            403,
            "cross-site request refused: its Origin is not this server",
            "CrossOriginRequest",
        )
