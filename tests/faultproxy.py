"""A TCP proxy in front of the test S3 server that breaks the connection on cue.

Modes: ``pass`` (forward), ``hang`` (accept, read, never answer), ``cut`` (reset the
connection, and every new one), ``refuse`` (stop listening: connections are refused).
:meth:`FaultProxy.fail_at` switches to a mode when a request line matches a pattern
(``PUT /bucket/prefix/snapshot.json``), so a fault lands in a chosen phase of a run:
HTTP/1.1 clients send one request at a time on a connection, so each request line
starts a fresh read.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from urllib.parse import urlparse


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a cut cable or a dead load balancer does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream`` (``http://host:port``) until told otherwise."""

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", int(parsed.port or 80))
        self.mode = "pass"
        self.requests: list[bytes] = []  # request lines seen, for debugging a test
        self.connections: list[tuple[float, str]] = []  # (time.monotonic(), mode) per accept
        self._trigger: tuple[re.Pattern[bytes], str] | None = None
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener

    # ---- control ------------------------------------------------------------------

    def fail_at(self, pattern: bytes, mode: str) -> None:
        """From the first request whose request line matches ``pattern`` on, act as ``mode``."""
        with self._lock:
            self._trigger = (re.compile(pattern), mode)

    def set_mode(self, mode: str) -> None:
        with self._lock:
            self._trigger = None
            self._switch(mode)

    def _switch(self, mode: str) -> None:
        self.mode = mode
        if mode == "refuse":
            self._listener.close()
        if mode in ("cut", "refuse"):
            held, self._held = self._held, []
            for sock in held:
                _reset(sock)

    def restore(self) -> None:
        """Back to forwarding (listening again on the same port after ``refuse``)."""
        with self._lock:
            was, self.mode, self._trigger = self.mode, "pass", None
            held, self._held = self._held, []
        for sock in held:
            _reset(sock)
        if was == "refuse":
            self._listener = self._listen(self.port)

    def close(self) -> None:
        self.set_mode("refuse")

    # ---- forwarding ---------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                mode = self.mode
                self.connections.append((time.monotonic(), mode))
                if mode == "hang":
                    self._held.append(client)
                    continue
            if mode in ("cut", "refuse"):
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._held += [client, server]
            threading.Thread(target=self._to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client), daemon=True).start()

    def _to_server(self, client: socket.socket, server: socket.socket) -> None:
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                return
            if not data:
                _reset(server)
                return
            with self._lock:
                line = data.split(b"\r\n", 1)[0]
                if re.match(rb"^[A-Z]+ /", line):
                    self.requests.append(line)
                    if self._trigger is not None and self._trigger[0].search(line):
                        self._switch(self._trigger[1])
                        self._trigger = None
                mode = self.mode
            if mode == "hang":
                return  # this request is never forwarded: the client waits for an answer
            if mode != "pass":
                _reset(client)
                _reset(server)
                return
            try:
                server.sendall(data)
            except OSError:
                _reset(client)
                return

    def _to_client(self, server: socket.socket, client: socket.socket) -> None:
        while True:
            try:
                data = server.recv(65536)
            except OSError:
                return
            if not data or self.mode != "pass":
                if self.mode != "hang":
                    _reset(client)
                return
            try:
                client.sendall(data)
            except OSError:
                return
