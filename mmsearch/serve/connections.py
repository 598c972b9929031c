"""Connection guards: uvicorn's HTTP protocols with limits on what one client may hold.

uvicorn's httptools protocol reads request headers without a size limit (a 48 MB
header took 7 s of the event loop's time, delaying every other client), never times
out a connection that has not sent a complete request (idle sockets and slowloris
clients stay open forever), and accepts connections until the process runs out of
file descriptors (then every search failed with 500 "Too many open files"). The
protocols here add, per connection:

- **header size**: past :attr:`ConnectionLimits.max_header_bytes` of request line and
  headers, the client gets 431 and the connection is closed, before auth and before
  the parser sees more (bytes are counted as they arrive, so no other client waits);
- **header timeout**: a connection that has not sent complete request headers within
  :attr:`ConnectionLimits.header_timeout_s` of opening (or of its last answer) is
  closed (408 if it had sent part of a request);
- **keep-alive timeout**: an idle connection after an answer is closed after
  :attr:`ConnectionLimits.keepalive_s` (uvicorn's own timer);
- **connection cap**: past :attr:`ConnectionLimits.max_connections` open connections
  in this worker (never more than half the open-file limit), a new connection gets
  503 at once and is closed, so the process keeps file descriptors for its index;
- **absolute-form targets** (``GET http://other.example/ HTTP/1.1``) naming another
  host than the ``Host`` header are refused (400): the Host allowlist sees ``Host``.

:func:`uvicorn_config` builds the uvicorn config that selects these protocols.
"""

from __future__ import annotations

import asyncio
import json
import resource
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - the server extra installs httptools
    httptools = None  # type: ignore[assignment]
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

#: Open files kept for the index, the model and logs, beyond connections (at least).
FD_RESERVE = 64


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may hold; see the module docstring."""

    max_header_bytes: int = 16 * 1024
    header_timeout_s: float = 10.0
    keepalive_s: float = 5.0
    max_connections: int = 1000


def open_file_limit() -> int:
    """This process's open-file limit, raised to the hard limit where allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(limits: ConnectionLimits, open_files: int) -> int:
    """Connections one worker accepts: the configured cap, within half the open-file limit."""
    return max(1, min(limits.max_connections, (open_files - FD_RESERVE) // 2))


class GuardedConfig(uvicorn.Config):
    """uvicorn's config plus :class:`ConnectionLimits` (picklable: worker processes get it)."""

    def __init__(self, *args: Any, connection_limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_limits = connection_limits


def _raw_response(status: int, reason: str, message: str, kind: str) -> bytes:
    body = json.dumps({"error": message, "type": kind}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-content-type-options: nosniff\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_CAPS: dict[ConnectionLimits, int] = {}  # limits -> cap, computed once per process


class _Guard:
    """The limits, for either HTTP protocol (mixed in before uvicorn's class)."""

    config: Any
    connections: set[Any]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def _guard_init(self) -> None:
        self._limits: ConnectionLimits = getattr(
            self.config, "connection_limits", ConnectionLimits()
        )
        self._timer: asyncio.TimerHandle | None = None
        self._counting = True  # bytes arriving now are request line and headers
        self._header_bytes = 0
        self._tail = b""

    def _cap(self) -> int:
        if self._limits not in _CAPS:
            _CAPS[self._limits] = connection_cap(self._limits, open_file_limit())
        return _CAPS[self._limits]

    def _refuse(self, status: int, reason: str, message: str, kind: str) -> None:
        self._cancel_timer()
        self._counting = False
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, reason, message, kind))
            self.transport.close()

    def _arm(self) -> None:
        """Starts waiting for the next request's headers."""
        self._cancel_timer()
        self._counting, self._header_bytes, self._tail = True, 0, b""
        self._timer = self.loop.call_later(self._limits.header_timeout_s, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._header_bytes:
            self._refuse(
                408, "Request Timeout", "request headers not received in time", "RequestTimeout"
            )
        else:
            self.transport.close()

    def _headers_done(self) -> None:
        self._cancel_timer()
        self._counting, self._header_bytes, self._tail = False, 0, b""

    def _over_header_limit(self, data: bytes) -> bool:
        """True when ``data`` carries the request headers past the limit."""
        if self._header_bytes + len(data) <= self._limits.max_header_bytes:
            return False
        window = self._tail + data
        end = window.find(b"\r\n\r\n")
        if end < 0:
            return True
        used = self._header_bytes + end + 4 - len(self._tail)
        return used > self._limits.max_header_bytes

    def _count(self, data: bytes) -> None:
        if self._counting:
            self._header_bytes += len(data)
            self._tail = (self._tail + data)[-3:]

    def _admit(self) -> bool:
        """False (and 503 sent) when this connection is over the worker's cap."""
        if len(self.connections) > self._cap():
            self._refuse(
                503,
                "Service Unavailable",
                "this server has too many open connections; retry shortly",
                "TooManyConnections",
            )
            return False
        self._arm()
        return True


def _authority(value: bytes) -> bytes:
    host = value.strip().lower()
    for default in (b":80", b":443"):
        if host.endswith(default):
            return host[: -len(default)]
    return host


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):
        """uvicorn's httptools protocol with the limits of :mod:`mmsearch.serve.connections`."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._guard_init()
            self._message_done = False
            self._refusal: tuple[int, str, str, str] | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._admit()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return
            if self._counting and self._over_header_limit(data):
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    f"request headers larger than {self._limits.max_header_bytes} bytes",
                    "HeadersTooLarge",
                )
                return
            self._message_done = False
            super().data_received(data)
            if self._message_done:  # a request ended in this chunk: count from the next one
                self._header_bytes, self._tail = 0, b""
            else:
                self._count(data)

        def send_400_response(self, msg: str) -> None:
            status, reason, message, kind = self._refusal or (400, "Bad Request", msg, "BadRequest")
            self._refuse(status, reason, message, kind)

        def on_headers_complete(self) -> None:
            self._headers_done()
            if not self.url.startswith(b"/") and self.url != b"*":  # absolute form
                target = httptools.parse_url(self.url)
                authority = target.host + (b":%d" % target.port if target.port else b"")
                host = next((v for k, v in self.headers if k == b"host"), b"")
                if _authority(authority) != _authority(host):
                    self._refusal = (
                        400,
                        "Bad Request",
                        "the request target names another host than the Host header",
                        "BadHost",
                    )
                    raise ValueError("absolute-form target with another host")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._message_done = True
            self._counting = True
            if self.cycle is None or self.cycle.response_complete:
                self._arm()  # answered before the body ended: wait for the next request

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._counting:
                self._arm()


class GuardedH11Protocol(_Guard, H11Protocol):
    """uvicorn's h11 protocol with the timeouts and the connection cap (h11 itself
    refuses headers past ``h11_max_incomplete_event_size``, with a 400)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_init()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._admit()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        import h11

        self._count(data)
        super().data_received(data)
        if self._counting and self.conn.their_state is not h11.IDLE:
            self._headers_done()

    def on_response_complete(self) -> None:
        import h11

        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()


def protocol_path(http: str) -> str:
    """The import path of the guarded protocol for ``--http`` (auto, httptools, h11)."""
    if http == "h11" or (http == "auto" and HttpToolsProtocol is None):
        return "mmsearch.serve.connections:GuardedH11Protocol"
    return "mmsearch.serve.connections:GuardedHttpToolsProtocol"


def uvicorn_config(
    app: Any, *, http: str, limits: ConnectionLimits, **kwargs: Any
) -> GuardedConfig:
    """A uvicorn config serving ``app`` through the guarded protocol for ``http``."""
    return GuardedConfig(
        app,
        http=protocol_path(http),
        timeout_keep_alive=max(1, round(limits.keepalive_s)),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        connection_limits=limits,
        **kwargs,
    )
