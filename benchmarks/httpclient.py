"""A cheap keep-alive HTTP client for load generation (stdlib ``http.client``).

A load generator that shares the server's cores must cost far less per request than
the server, or it measures itself. ``httpx`` spends about 1 ms of CPU per request on
its own (connection pool, header models, URL objects); one ``http.client``
connection per client thread, a pre-encoded query string and the body parsed with
``orjson`` (or ``json``) cost several times less. ``benchmarks/serve_cpu.py`` measures both.

>>> client = KeepAliveClient("127.0.0.1", 8000, {"authorization": "Bearer t"})  # doctest: +SKIP
>>> status, headers, body = client.get("/api/search?q=red&k=10")                # doctest: +SKIP
"""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlencode

try:  # a faster parser when installed (the server extra pulls it in)
    from orjson import loads as json_loads
except ImportError:  # pragma: no cover
    from json import loads as json_loads

__all__ = ["KeepAliveClient", "json_loads", "search_path"]


def search_path(query: str, k: int) -> str:
    """``/api/search?q=...&k=...`` for ``query``."""
    return "/api/search?" + urlencode({"q": query, "k": k})


class KeepAliveClient:
    """One persistent HTTP/1.1 connection (a new one after the server closed it)."""

    def __init__(
        self, host: str, port: int, headers: dict[str, str], timeout: float = 60.0
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.headers = dict(headers)
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            # http.client sets TCP_NODELAY on connect.
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def get(self, path: str) -> tuple[int, Any, bytes]:
        """(status, headers, body) of ``GET path``; a transport error is raised, never retried."""
        conn = self._connection()
        try:
            conn.request("GET", path, headers=self.headers)
            res = conn.getresponse()
            body = res.read()
        except BaseException:
            self.close()
            raise
        if res.will_close:
            self.close()
        return res.status, res.headers, body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
