"""Readiness and graceful drain of one application (one worker process).

- :class:`ServeState`: ``ready`` once the index is open and the model loaded (a
  background warm-up starts at application start-up, or at the first ``/readyz``);
  ``draining`` once SIGTERM arrived.
- Graceful shutdown: on SIGTERM the application starts draining (``/readyz`` and
  every new request answer 503 with ``Connection: close``) for ``drain_s`` seconds,
  so a load balancer stops sending traffic; then uvicorn's own shutdown stops
  accepting, lets requests in flight finish, and exits. SIGINT (Ctrl-C) skips the drain.
  :class:`DrainMiddleware` answers the 503s.

Processes and sockets are :mod:`mmsearch.serve.lifecycle`.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ServeState:
    """Readiness and drain flags of one application (one worker process)."""

    drain_s: float = 2.0
    ready: bool = False
    draining: bool = False
    error: str | None = None
    _warming: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start_warming(self, warm: Callable[[], None]) -> None:
        """Runs ``warm`` once in a background thread; ``ready`` turns true when it succeeds."""
        with self._lock:
            if self._warming or self.ready:
                return
            self._warming = True

        def target() -> None:
            try:
                warm()
                self.ready, self.error = True, None
            except Exception as exc:  # reported by /readyz; the next /readyz retries
                self.error = f"{type(exc).__name__}: {exc}"
            finally:
                self._warming = False

        threading.Thread(target=target, name="mmsearch-warmup", daemon=True).start()

    def install_drain_handler(self, loop: Any) -> None:
        """Makes SIGTERM start draining, then hand over to the server's handler after ``drain_s``.

        Called from the application's start-up (main thread, after uvicorn installed its
        own handlers); does nothing elsewhere (tests that serve from a thread).
        """
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return

        def on_sigterm(sig: int, frame: Any) -> None:
            if self.draining:  # a second SIGTERM: stop now
                previous(sig, frame)
                return
            self.draining = True
            loop.call_soon_threadsafe(loop.call_later, self.drain_s, previous, sig, frame)

        signal.signal(signal.SIGTERM, on_sigterm)


class DrainMiddleware:
    """While draining, new requests get 503 (except ``/healthz``); requests in flight finish."""

    def __init__(self, app: Any, state: ServeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.state.draining or scope.get("path") == "/healthz":
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {"error": "the server is shutting down; retry on another instance", "type": "Draining"}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    (b"retry-after", b"1"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
