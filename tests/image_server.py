"""A real HTTP server on 127.0.0.1 serving images and the ways image URLs go wrong.

Routes (``ImageServer.routes`` maps a path to ``(status, headers, body)``; callables
compute the answer per request): images as added, plus

* ``/missing.jpg`` — 404;
* ``/slow.jpg`` — answers after ``slow_s`` seconds (a timeout for a short policy);
* ``/huge.png`` — a PNG header followed by more bytes than a small cap allows;
* ``/moved/<name>`` — a 302 redirect to ``/<name>``;
* ``/page.jpg`` — an HTML page named like an image;
* ``/flaky/<name>`` — a 503 the first time, then the image (a retry succeeds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, dict[str, str], bytes]


class ImageServer:
    """``with ImageServer() as srv: srv.add("a.png", data); url = srv.url("a.png")``."""

    def __init__(self, *, slow_s: float = 5.0, huge_bytes: int = 3_000_000) -> None:
        self.routes: dict[str, Answer | Callable[[], Answer]] = {}
        self.requests: list[str] = []
        self.slow_s = slow_s
        self._flaky_seen: set[str] = set()
        self._lock = threading.Lock()
        self.routes["/missing.jpg"] = (404, {"Content-Type": "text/plain"}, b"not found")
        self.routes["/page.jpg"] = (
            200,
            {"Content-Type": "image/jpeg"},
            b"<html><body>hello</body></html>",
        )
        self.routes["/huge.png"] = (
            200,
            {"Content-Type": "image/png"},
            b"\x89PNG\r\n\x1a\n" + b"\0" * huge_bytes,
        )
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                status, headers, body = server.answer(self.path)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add(self, name: str, data: bytes, content_type: str = "image/jpeg") -> str:
        self.routes["/" + name] = (200, {"Content-Type": content_type}, data)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"{self.base}/{name.lstrip('/')}"

    def answer(self, path: str) -> Answer:
        with self._lock:
            self.requests.append(path)
        if path == "/slow.jpg":
            time.sleep(self.slow_s)
            return 200, {"Content-Type": "image/jpeg"}, b"late"
        if path.startswith("/moved/"):
            return 302, {"Location": "/" + path[len("/moved/") :]}, b""
        if path.startswith("/flaky/"):
            with self._lock:
                first = path not in self._flaky_seen
                self._flaky_seen.add(path)
            if first:
                return 503, {"Content-Type": "text/plain"}, b"try again"
            path = "/" + path[len("/flaky/") :]
        route = self.routes.get(path)
        if route is None:
            return 404, {"Content-Type": "text/plain"}, b"not found"
        return route() if callable(route) else route
