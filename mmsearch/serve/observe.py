"""Observability: Prometheus metrics and structured access logs, from one ASGI middleware.

Every request gets an :class:`Observation` (a context variable the handlers can
reach): the search handlers record their result count and per-stage timings with
:func:`record_results`, the index holder records the snapshot it served with
:func:`record_snapshot`. When the response has gone out, :class:`ObserveMiddleware`
turns the observation into metrics and one access-log line.

Metrics (all named ``mmsearch_*``; with several worker processes they are merged
through ``prometheus_client``'s multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``):

- ``mmsearch_http_requests_total{route,method,status}`` and
  ``mmsearch_http_request_duration_seconds{route,method,status}`` (histogram);
  ``route`` is the route template (``/media/{item_id}``), ``other`` when none matched.
- ``mmsearch_query_stage_seconds{stage}``: time per query stage (encode, retrieve, ...).
- ``mmsearch_query_results``: results per answered query (histogram).
- ``mmsearch_snapshot_table_version`` / ``mmsearch_snapshot_generation``: the snapshot served.
- ``mmsearch_items{kind}``: items in the served snapshot.
- ``mmsearch_reload_failures_total{reason}`` / ``mmsearch_reload_failing``: failed moves
  to a newer snapshot (``store``: the object store unreachable; ``open``: it did not open).
- ``mmsearch_upload_rejections_total{reason}``: refused image uploads (too_large, bad_image, bad_request).
- ``mmsearch_media_refused_total{reason}``: ``/media`` answers refused (changed since indexing, unknown id).

Access log (logger ``mmsearch.access``): time, method, route, status, latency,
result count, snapshot; client address. Never the token or cookies; the query
text (and the query string) only with ``log_queries``. ``router`` (the app's) names
the route of requests answered before routing (401, 400, 413, 503).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

ACCESS_LOGGER = "mmsearch.access"
SNAPSHOT_HEADER = b"x-mmsearch-snapshot"
_UPLOAD_ROUTE = "/api/search/image"


@dataclass
class Observation:
    """What one request did, filled in while it runs."""

    results: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    snapshot: tuple[int, int] | None = None  # (table_version, generation)


_current: ContextVar[Observation | None] = ContextVar("mmsearch_observation", default=None)


def record_results(results: Any) -> None:
    """Notes a query's result count and its ``timings`` (seconds per stage), if it has them."""
    obs = _current.get()
    if obs is None:
        return
    obs.results = len(results)
    timings = getattr(results, "timings", None) or {}
    obs.timings = {str(k): float(v) for k, v in dict(timings).items()}


def record_snapshot(snapshot: Any) -> None:
    """Notes which snapshot served the request (sent back in ``X-Mmsearch-Snapshot``)."""
    obs = _current.get()
    if obs is not None and snapshot is not None:
        obs.snapshot = (int(snapshot.table_version), int(snapshot.generation))


class Metrics:
    """The server's Prometheus metrics, in their own registry (or the multiprocess files)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        reg = self.registry
        labels = ["route", "method", "status"]
        self.requests = Counter(
            "mmsearch_http_requests", "HTTP requests answered.", labels, registry=reg
        )
        self.latency = Histogram(
            "mmsearch_http_request_duration_seconds",
            "Time from request to the end of the response.",
            labels,
            registry=reg,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.stages = Histogram(
            "mmsearch_query_stage_seconds",
            "Time per query stage.",
            ["stage"],
            registry=reg,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.results = Histogram(
            "mmsearch_query_results",
            "Results per answered query.",
            registry=reg,
            buckets=(0, 1, 5, 10, 20, 50, 100, 1000),
        )
        self.table_version = Gauge(
            "mmsearch_snapshot_table_version", "Table version of the served snapshot.",
            registry=reg, multiprocess_mode="liveall",
        )  # fmt: skip
        self.generation = Gauge(
            "mmsearch_snapshot_generation", "Generation of the served snapshot.",
            registry=reg, multiprocess_mode="liveall",
        )  # fmt: skip
        self.items = Gauge(
            "mmsearch_items",
            "Items in the served snapshot.",
            ["kind"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.upload_rejections = Counter(
            "mmsearch_upload_rejections", "Image uploads refused.", ["reason"], registry=reg
        )
        self.media_refused = Counter(
            "mmsearch_media_refused", "/media requests refused.", ["reason"], registry=reg
        )
        self.reload_failures = Counter(
            "mmsearch_reload_failures",
            "Failed attempts to move to a newer snapshot (the store unreachable, or a "
            "snapshot that does not open); the previous one stays in service.",
            ["reason"],
            registry=reg,
        )
        self.reload_failing = Gauge(
            "mmsearch_reload_failing",
            "1 while the newest published snapshot cannot be loaded, else 0.",
            registry=reg, multiprocess_mode="livemax",
        )  # fmt: skip

    def set_reload_error(self, reason: str | None, *, failing: bool) -> None:
        """Counts a failed reload (``reason``: ``store`` or ``open``; None: a failure
        cleared) and whether the newest snapshot is still not served (``failing``)."""
        if reason is not None:
            self.reload_failures.labels(reason=reason).inc()
        self.reload_failing.set(1 if failing else 0)

    def set_snapshot(self, snapshot: Any, items: dict[str, int]) -> None:
        """Publishes the snapshot now served and its item counts."""
        self.table_version.set(snapshot.table_version)
        self.generation.set(snapshot.generation)
        for kind, count in items.items():
            self.items.labels(kind=kind).set(count)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _route_of(scope: dict[str, Any], router: Any) -> str:
    """The route template that served (or would have served) the request; "other" if none."""
    route = scope.get("route")
    if route is None and router is not None:  # answered before routing (401, 400, 413, 503)
        from starlette.routing import Match

        route = next((r for r in router.routes if r.matches(scope)[0] == Match.FULL), None)
    path = getattr(route, "path", None)
    return str(path) if path else "other"


def _client_of(scope: dict[str, Any]) -> str | None:
    client = scope.get("client")
    return f"{client[0]}" if client else None


class ObserveMiddleware:
    """Times each request, counts it in :class:`Metrics` and writes one access-log line.

    ``log_format`` is ``"json"``, ``"text"`` or ``"none"``. ``log_queries`` adds the
    query string to the line (off by default: queries can be personal data).
    """

    def __init__(
        self,
        app: Any,
        metrics: Metrics,
        log_format: str = "text",
        log_queries: bool = False,
        router: Any = None,
    ) -> None:
        self.app = app
        self.router = router
        self.metrics = metrics
        self.log_format = log_format
        self.log_queries = log_queries
        self.logger = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        obs = Observation()
        token = _current.set(obs)
        status = [500]
        start = time.perf_counter()

        async def observed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                if obs.snapshot is not None:
                    header = f"{obs.snapshot[0]}.{obs.snapshot[1]}".encode()
                    message = {
                        **message,
                        "headers": [*message.get("headers", []), (SNAPSHOT_HEADER, header)],
                    }
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            _current.reset(token)
            self._finish(scope, obs, status[0], time.perf_counter() - start)

    def _finish(self, scope: dict[str, Any], obs: Observation, status: int, elapsed: float) -> None:
        route, method = _route_of(scope, self.router), scope.get("method", "")
        labels = {"route": route, "method": method, "status": str(status)}
        m = self.metrics
        m.requests.labels(**labels).inc()
        m.latency.labels(**labels).observe(elapsed)
        for stage, seconds in obs.timings.items():
            m.stages.labels(stage=stage).observe(seconds)
        if obs.results is not None:
            m.results.observe(obs.results)
        if route == _UPLOAD_ROUTE and status >= 400:
            reason = {413: "too_large", 422: "bad_image"}.get(status, "bad_request")
            m.upload_rejections.labels(reason=reason).inc()
        if self.log_format != "none" and self.logger.isEnabledFor(logging.INFO):
            self.logger.info(self._line(scope, route, method, status, elapsed, obs))

    def _line(
        self,
        scope: dict[str, Any],
        route: str,
        method: str,
        status: int,
        elapsed: float,
        obs: Observation,
    ) -> str:
        now = time.time()
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now * 1000) % 1000:03d}Z",
            "method": method,
            "route": route,
            "status": status,
            "latency_ms": round(elapsed * 1000, 2),
            "results": obs.results,
            "snapshot": f"{obs.snapshot[0]}.{obs.snapshot[1]}" if obs.snapshot else None,
            "client": _client_of(scope),
        }
        if self.log_queries:
            record["path"] = scope.get("path")
            record["query"] = scope.get("query_string", b"").decode("latin-1")
        if self.log_format == "json":
            return json.dumps(record, ensure_ascii=False)
        shown = {k: v for k, v in record.items() if v is not None and k != "time"}
        return " ".join(f"{k}={v}" for k, v in shown.items())
