"""``ServerConfig``: everything ``mmsearch serve`` is told, in one dataclass.

:func:`mmsearch.serve.app.create_app` builds the application from it; the modules it is
assembled from read their settings here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmsearch.models.base import Encoder


@dataclass
class ServerConfig:
    """Settings of one server (every worker process builds its app from the same one)."""

    index_dir: Path
    device: str | None = None
    image_roots: list[Path] = field(default_factory=list)  # query image paths must be under one
    allow_urls: bool = False
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    url_allow_private: bool = False  # tests only
    url_timeout_s: float = 10.0
    # An encoder to use instead of loading the index's model: `mmsearch serve` passes the
    # one it loaded at start-up; tests pass a fake one.
    encoder: Encoder | None = None
    host: str = "127.0.0.1"  # the bound address: accepted as a Host header
    allowed_hosts: list[str] = field(default_factory=list)  # more Host values ("*" = any)
    token: str | None = None  # required on every route but /healthz when set
    docs: bool = True  # /docs and /openapi.json (behind the token like every route)
    expose_paths: bool = False  # absolute server paths in results and /api/info
    log_format: str = "text"  # access log: text, json or none
    log_queries: bool = False  # query strings in the access log
    drain_s: float = 2.0  # after SIGTERM: answer 503 this long, then shut down
    # ITM model for requests with rerank=true (registered name, folder or HF id; None:
    # the index's recorded one, else Salesforce/blip-itm-base-coco). Named: loaded at
    # start-up; else on first use. A failed load is remembered for a minute.
    rerank_model: str | None = None
    backend: str = "torch"  # model runtime of each worker: torch, onnx or auto
    quantize: str | None = None  # int8: quantised ONNX graphs
    # Searches one worker runs at once; the rest wait in arrival order (FIFO). Searches
    # are CPU-bound: running many at once in one process only interleaves them on the
    # GIL, which stretches the slowest answers (p99) without adding throughput.
    search_concurrency: int = 2
    # A folder the worker processes share (revoked sign-in sessions); None: in memory.
    state_dir: Path | None = None
    # Failed token attempts (wrong bearer token or sign-in) a client may make per minute.
    auth_failures_per_minute: int = 10
