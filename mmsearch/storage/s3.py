"""Talking to an S3-compatible store: bounded calls, and failures as one line naming the URI.

Every call to the store is bounded: a connect timeout, a read timeout and a few
retries, for boto3 (ANN objects, the snapshot, the writer lease) and for LanceDB (the
table, through its ``storage_options``). The bounds come from the environment:

=================================  =======  ===========================================
``MMSEARCH_S3_CONNECT_TIMEOUT_S``  5        seconds to open a connection
``MMSEARCH_S3_TIMEOUT_S``          20       seconds one request may take (LanceDB: in
                                            all; boto3: between two reads of the answer)
``MMSEARCH_S3_ATTEMPTS``           3        attempts per request (the first + retries)
=================================  =======  ===========================================

A request to a store that refuses connections, cuts them or never answers fails after
at most ``ATTEMPTS × (CONNECT + TIMEOUT)`` seconds. A command stops at its first
failed request, except a table commit whose answer never came: LanceDB then asks
three more times whether it landed, so a run stops within
:meth:`StoreLimits.run_bound_s` (about five requests' worth). :func:`describe_store_error`
turns what boto3 and LanceDB raise into one line.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mmsearch.errors import StorageError

#: Error codes of a conditional write whose condition did not hold (412), or that
#: raced another conditional write of the same key (409 on AWS).
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
#: Error codes of a key that does not exist.
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


@dataclass(frozen=True)
class StoreLimits:
    """How long one store request may take, and how often it is tried."""

    connect_timeout_s: float = 5.0
    timeout_s: float = 20.0
    attempts: int = 3

    @classmethod
    def from_env(cls) -> StoreLimits:
        """The limits set by ``MMSEARCH_S3_*`` (see the module docstring), else the defaults."""
        base = cls()
        return cls(
            connect_timeout_s=_env_float("MMSEARCH_S3_CONNECT_TIMEOUT_S", base.connect_timeout_s),
            timeout_s=_env_float("MMSEARCH_S3_TIMEOUT_S", base.timeout_s),
            attempts=max(1, int(_env_float("MMSEARCH_S3_ATTEMPTS", base.attempts))),
        )

    @property
    def request_bound_s(self) -> float:
        """The longest one request may take, retries included."""
        return self.attempts * (self.connect_timeout_s + self.timeout_s)

    def run_bound_s(self) -> float:
        """The longest a command takes to stop once the store stops answering: an unanswered
        commit, LanceDB's three checks of it, and the release of the writer lease."""
        return 5 * self.request_bound_s

    def lance_options(self) -> dict[str, str]:
        """LanceDB (object_store) ``storage_options`` with these bounds."""
        return {
            "connect_timeout": f"{self.connect_timeout_s:g}s",
            "timeout": f"{self.timeout_s:g}s",
            "client_max_retries": str(self.attempts - 1),
            "client_retry_timeout": f"{max(1, round(self.request_bound_s))}",
        }


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise StorageError(f"{name}={raw!r} must be above zero")
    return value


def endpoint_from_env() -> str | None:
    """The S3 endpoint URL (``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT``), None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or None


def make_client(limits: StoreLimits | None = None) -> Any:
    """A boto3 S3 client for the ``AWS_*`` environment, with :class:`StoreLimits`."""
    import boto3
    from botocore.config import Config

    lim = limits or StoreLimits.from_env()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client(
        "s3",
        endpoint_url=endpoint_from_env(),
        region_name=region,
        config=Config(
            connect_timeout=lim.connect_timeout_s,
            read_timeout=lim.timeout_s,
            retries={"total_max_attempts": lim.attempts, "mode": "standard"},
        ),
    )


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (``PreconditionFailed``, ...), else None."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    if code is None:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return None if status is None else str(status)
    return str(code)


# LanceDB reports store failures as text (Rust error debug output); these say what happened.
_LANCE_REASONS = (
    (re.compile(r"TimedOut|timed out|Timeout", re.I), "no answer in time"),
    (re.compile(r"error sending request", re.I), "no answer, or the connection was cut"),
    (re.compile(r"Connection refused|ConnectError|tcp connect error", re.I), "connection refused"),
    (
        re.compile(r"IncompleteMessage|connection closed|reset by peer|broken pipe|EOF", re.I),
        "the connection was cut",
    ),
    (re.compile(r"NoSuchBucket"), "no such bucket"),
    (re.compile(r"AccessDenied|Forbidden|403"), "access denied"),
    (re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch"), "the credentials were refused"),
)
_LANCE_MARKERS = re.compile(
    r'store: "S3"|S3 error|object_store|ObjectStore|reqwest|RetryError|Generic \{|HttpError|'
    r"HTTP error|error sending request|dispatch failure",
)


def is_store_failure(exc: BaseException) -> bool:
    """True for errors that come from talking to the store (botocore, or LanceDB's I/O)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no boto3: only LanceDB reaches the store
        BotoCoreError = ClientError = ()  # type: ignore[assignment,misc]  # noqa: N806
    if isinstance(exc, (BotoCoreError, ClientError)):
        return True
    return isinstance(exc, (OSError, RuntimeError, ValueError)) and bool(
        _LANCE_MARKERS.search(str(exc))
    )


def describe_store_error(exc: BaseException, limits: StoreLimits | None = None) -> str:
    """What went wrong talking to the store, in a few words (no traceback, no Rust dump)."""
    from botocore import exceptions as bx

    lim = limits or StoreLimits.from_env()
    endpoint = endpoint_from_env()
    at = f" at {endpoint}" if endpoint else ""
    if isinstance(exc, bx.ConnectTimeoutError):
        return f"could not connect{at} within {lim.connect_timeout_s:g} s ({lim.attempts} attempts)"
    if isinstance(exc, bx.ReadTimeoutError):
        return f"the store{at} did not answer within {lim.timeout_s:g} s ({lim.attempts} attempts)"
    if isinstance(exc, bx.EndpointConnectionError):
        return f"could not connect to the store{at} (connection refused or unreachable)"
    if isinstance(exc, (bx.ConnectionClosedError, bx.ConnectionError)):
        return f"the connection to the store{at} was cut"
    if isinstance(exc, bx.NoCredentialsError):
        return "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)"
    code = error_code(exc)
    if code is not None:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message") or ""
        return f"{code}" + (f": {message}" if message else "")
    text = str(exc)
    unknown = " (its last commit may or may not have landed)" if "is unknown" in text else ""
    for pattern, reason in _LANCE_REASONS:
        if pattern.search(text):
            return f"{reason}{at}{unknown}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:200]


def store_error(uri: str, exc: BaseException, doing: str = "reach") -> StorageError:
    """A :class:`StorageError` of one line: ``cannot <doing> <uri>: <what happened>; ...``."""
    kept = " (work committed so far is kept)" if doing in ("write", "publish to") else ""
    return StorageError(
        f"cannot {doing} {uri}: {describe_store_error(exc)}; "
        f"check the endpoint and the network, then re-run{kept}"
    )


@contextlib.contextmanager
def store_errors(uri: str, doing: str = "reach") -> Iterator[None]:
    """Turns botocore's and LanceDB's store failures into one-line :class:`StorageError` s."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        if is_store_failure(exc):
            raise store_error(uri, exc, doing) from exc
        raise
