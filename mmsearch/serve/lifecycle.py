"""Process lifecycle: binding, thread policy, and running one or several workers.

- Readiness and the graceful drain of one application are :mod:`mmsearch.serve.drain`.
- :func:`bind_socket` binds the listening socket first, so a busy port fails in one
  line before any model is loaded; :func:`run` then serves it with one process, or
  with ``workers`` processes sharing it (uvicorn's supervisor, spawn start method).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from mmsearch.errors import MMSearchError

if TYPE_CHECKING:
    from mmsearch.serve.config import ServerConfig


class BindError(MMSearchError):
    """The listening address cannot be bound (port in use, no permission, bad address)."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, or :class:`BindError` in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only for such
    # sockets; without it every response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = "the port is already in use" if exc.errno == 98 else (exc.strerror or str(exc))
        raise BindError(
            f"cannot listen on {host}:{port}: {why} (choose another --port or stop the other server)"
        ) from None
    sock.set_inheritable(True)
    return sock


def check_servable(
    index_dir: Any,
    *,
    device: str | None = None,
    load_model: bool = True,
    backend: str = "auto",
    quantize: str | None = None,
) -> Any:
    """Raises the one-line error that would stop serving ``index_dir``; returns its encoder.

    With ``load_model`` the index is opened and its model loaded (and returned, to be
    reused by the server); without it only the published snapshot is checked, which
    imports nothing heavy (a supervisor of worker processes stays small).
    """
    from mmsearch.errors import IndexNotFoundError
    from mmsearch.storage.objectstore import local_view
    from mmsearch.storage.snapshot import read_snapshot

    if load_model:
        from mmsearch.engine import SearchIndex

        return SearchIndex(index_dir, device=device, backend=backend, quantize=quantize).encoder
    if read_snapshot(local_view(index_dir)) is None:  # an object-store index: pulled first
        raise IndexNotFoundError(
            f"no searchable mmsearch index at {index_dir} "
            f"(create one with: mmsearch index PATH --index {index_dir})"
        )
    return None


#: Math-library threads per worker process. A server runs many small requests side by
#: side (a thread pool per worker, one process per worker): its parallelism is across
#: requests, so a request's matrix work runs on one thread. More threads per request
#: buy a lone request a little latency on an idle machine and cost every request under
#: load: measured on 2 cores, a FAISS flat search of 400 vectors takes 7x the CPU time
#: with 2 OpenMP threads (0.11 vs 0.015 ms), 100k vectors 9x. ``OMP_NUM_THREADS`` in
#: the environment overrides it.
SERVE_THREADS = 1


def apply_thread_policy(threads: int | None = SERVE_THREADS) -> None:
    """Sets this process's math-library thread policy, before the model runtime is imported.

    Variables already set in the environment win. Worker processes inherit them.

    - ``threads`` caps the thread pools (``OMP_NUM_THREADS`` and friends: FAISS's and
      torch's OpenMP, BLAS, and :func:`mmsearch.models.onnx_encoder.onnx_threads`);
    - ``OMP_WAIT_POLICY=PASSIVE``: idle pool threads sleep instead of spinning for the
      next job (OpenMP and ONNX Runtime's pool both follow it), so threads that are
      not working leave the cores to the requests that are.
    """
    import os

    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class AppFactory:
    """A picklable application factory: each worker process builds its own app from it,
    after :func:`apply_thread_policy` (``threads``: see :data:`SERVE_THREADS`)."""

    def __init__(self, config: ServerConfig, threads: int | None = SERVE_THREADS) -> None:
        self.config = config
        self.threads = threads

    def __call__(self) -> Any:
        from mmsearch.serve.app import create_app

        apply_thread_policy(self.threads)
        return create_app(self.config)


def log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's logging config plus the ``mmsearch.access`` logger (one line per request, to stderr)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["mmsearch_access"] = {"format": "%(message)s"}
    config["handlers"]["mmsearch_access"] = {
        "class": "logging.StreamHandler",
        "formatter": "mmsearch_access",
        "stream": "ext://sys.stderr",
    }
    level = "WARNING" if log_format == "none" else "INFO"
    config["loggers"]["mmsearch.access"] = {
        "handlers": ["mmsearch_access"],
        "level": level,
        "propagate": False,
    }
    return config


def run(
    server_config: Any,
    sock: socket.socket,
    *,
    workers: int = 1,
    proxy_headers: bool = False,
    forwarded_allow_ips: str = "127.0.0.1",
    log_format: str = "text",
    http: str = "auto",
    loop: str = "auto",
    limits: Any = None,
) -> None:
    """Serves ``create_app(server_config)`` on ``sock`` with ``workers`` processes until stopped.

    ``http`` (``auto``, ``httptools``, ``h11``) and ``loop`` (``auto``, ``uvloop``,
    ``asyncio``) pick uvicorn's HTTP parser and event loop; ``auto`` takes the C ones
    (httptools, uvloop) when installed. Either parser runs behind the connection
    guards of :mod:`mmsearch.serve.connections` (``limits``: a
    :class:`~mmsearch.serve.connections.ConnectionLimits`; None: the defaults).
    """

    import uvicorn

    from mmsearch.serve.connections import ConnectionLimits, open_file_limit, uvicorn_config

    open_file_limit()  # raise the soft limit now: worker processes inherit it
    config = uvicorn_config(
        AppFactory(server_config),
        http=http,
        limits=limits if limits is not None else ConnectionLimits(),
        factory=True,
        workers=workers,
        loop=loop,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        server_header=False,
        access_log=False,
        log_level="warning",
        log_config=log_config(log_format),
        timeout_graceful_shutdown=30,
    )
    if workers <= 1:
        uvicorn.Server(config).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    Multiprocess(config, sockets=[sock]).run()


@contextmanager
def prepare_workers(workers: int, server_config: Any = None) -> Iterator[None]:
    """With several workers, a fresh ``PROMETHEUS_MULTIPROC_DIR`` so ``/metrics`` merges
    all of them, and a state folder they share (``server_config.state_dir``: revoked
    sign-in sessions); both removed afterwards."""
    import os
    import shutil
    import tempfile

    if workers <= 1:
        yield
        return
    made: list[str] = []
    if server_config is not None and getattr(server_config, "state_dir", None) is None:
        made.append(tempfile.mkdtemp(prefix="mmsearch-state-"))
        from pathlib import Path

        server_config.state_dir = Path(made[-1])
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="mmsearch-metrics-")
        made.append(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        yield
    finally:
        if metrics_dir is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
