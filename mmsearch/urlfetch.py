"""Fetch image URLs safely: a query's image (off unless the server turns it on), and
the images of records and product feeds at indexing time, under one policy.

Only http(s); the host must resolve to public addresses only (private, loopback,
link-local, multicast, reserved and unspecified addresses are refused — also after
every redirect, which is followed by hand and re-checked); the body is capped in
size and each attempt in time. :class:`UrlFetcher` keeps a pool of connections
(httpx) and retries timeouts and 5xx answers with backoff (tenacity).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from mmsearch.errors import BadQueryError


class UnsafeURLError(BadQueryError):
    """The URL is not allowed (scheme, address, size or time)."""


@dataclass(frozen=True)
class FetchPolicy:
    """The one policy of image-URL fetching: the server's ``--allow-urls`` queries and
    the indexing of records and feeds."""

    max_bytes: int = 10 * 1024 * 1024
    #: Seconds per attempt (connect, each read, and the whole body).
    timeout_s: float = 10.0
    max_redirects: int = 3
    #: Private, loopback and link-local hosts are refused unless this is set (an
    #: internal image host, a test server on 127.0.0.1).
    allow_private: bool = False
    #: Further attempts after a timeout, a broken connection or a 5xx/429 answer.
    retries: int = 2
    #: First pause between attempts; doubled each time.
    backoff_s: float = 0.25
    #: Pooled connections (and concurrent fetches) at most.
    max_connections: int = 16


def _check_address(host: str, port: int, policy: FetchPolicy) -> str | None:
    """Resolves ``host`` once; refuses it unless every address is public.

    Returns the address to connect to, so that the connection goes to the address that
    was checked (a second lookup could answer differently: DNS rebinding).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeURLError(f"cannot resolve host {host!r}") from exc
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if policy.allow_private:
            continue
        if not addr.is_global or addr.is_multicast or addr.is_reserved or addr.is_unspecified:
            raise UnsafeURLError(
                f"URL host {host!r} resolves to a non-public address ({addr}); refused"
            )
    return str(infos[0][4][0]).split("%", 1)[0] if infos else None


def check_url(url: str, policy: FetchPolicy = FetchPolicy()) -> str | None:
    """Raises :class:`UnsafeURLError` unless ``url`` is http(s) to a public address;
    returns the checked address to connect to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURLError(
            f"only http and https image URLs are allowed, not {parts.scheme or 'none'!r}"
        )
    if not parts.hostname:
        raise UnsafeURLError("image URL has no host")
    if parts.username or parts.password:
        raise UnsafeURLError("image URLs with credentials are refused")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return _check_address(parts.hostname, port, policy)


def _pinned(url: str, address: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL with its host replaced by the checked address, plus Host header and TLS name."""
    parts = urlsplit(url)
    if address is None or parts.hostname is None:
        return url, {}, {}
    host = f"[{address}]" if ":" in address else address
    netloc = host + (f":{parts.port}" if parts.port else "")
    pinned = parts._replace(netloc=netloc).geturl()
    return pinned, {"Host": parts.netloc}, {"sni_hostname": parts.hostname}


class FetchError(BadQueryError):
    """The URL could not be fetched: an HTTP error status, a timeout, a broken connection."""


class _RetryableStatus(Exception):
    """A 5xx answer (or 429): worth another try after a pause."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class UrlFetcher:
    """Fetches image URLs under one :class:`FetchPolicy`, with pooled connections.

    Every hop (the first and each redirect) is checked by :func:`check_url` and the
    connection goes to the checked address; timeouts, broken connections and 5xx/429
    answers are retried with exponential backoff (tenacity), other statuses fail at
    once; the body is capped at ``policy.max_bytes`` and must sniff as an image
    (``sniff=True``). The client is thread-safe: :meth:`fetch_many` runs fetches
    concurrently on one pool.

    >>> with UrlFetcher(FetchPolicy(allow_private=True)) as fetcher:  # doctest: +SKIP
    ...     data = fetcher.fetch("http://127.0.0.1:8000/a.jpg")
    """

    def __init__(self, policy: FetchPolicy = FetchPolicy(), *, sniff: bool = True) -> None:
        import httpx

        self.policy = policy
        self.sniff = sniff
        self._client = httpx.Client(
            follow_redirects=False,
            timeout=policy.timeout_s,
            limits=httpx.Limits(
                max_connections=policy.max_connections,
                max_keepalive_connections=policy.max_connections,
            ),
        )

    def __enter__(self) -> UrlFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def fetch(self, url: str) -> bytes:
        """The body of ``url`` (see the class docstring); raises :class:`UnsafeURLError`,
        :class:`FetchError` or :class:`~mmsearch.errors.ImageDecodeError` (not an image)."""
        import httpx
        import tenacity

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((httpx.TransportError, _RetryableStatus)),
            stop=tenacity.stop_after_attempt(self.policy.retries + 1),
            wait=tenacity.wait_exponential(
                multiplier=self.policy.backoff_s, max=5 * self.policy.backoff_s
            ),
            reraise=True,
        )
        try:
            body = retrying(self._fetch_once, url)
        except httpx.TimeoutException as exc:
            raise FetchError(f"image URL timed out after {self.policy.timeout_s:g}s") from exc
        except httpx.TransportError as exc:
            raise FetchError(f"could not fetch the image URL ({type(exc).__name__})") from exc
        except _RetryableStatus as exc:
            raise FetchError(f"image URL answered HTTP {exc.status}") from exc
        if self.sniff:
            from mmsearch.errors import ImageDecodeError
            from mmsearch.imageformats import SNIFF_BYTES, sniff_image_format

            if sniff_image_format(body[:SNIFF_BYTES]) is None:
                raise ImageDecodeError("the URL did not return an image (unrecognised content)")
        return body

    def fetch_many(self, urls: Sequence[str], *, workers: int = 16) -> list[bytes | Exception]:
        """Fetches ``urls`` concurrently; each entry is the body or the exception it raised."""
        from concurrent.futures import ThreadPoolExecutor

        def one(url: str) -> bytes | Exception:
            try:
                return self.fetch(url)
            except Exception as exc:  # noqa: BLE001 - reported per URL by the caller
                return exc

        if len(urls) <= 1:
            return [one(url) for url in urls]
        with ThreadPoolExecutor(
            max_workers=min(workers, len(urls)), thread_name_prefix="mmsearch-fetch"
        ) as pool:
            return list(pool.map(one, urls))

    def _fetch_once(self, url: str) -> bytes:
        policy = self.policy
        deadline = time.monotonic() + policy.timeout_s
        current = url
        for _ in range(policy.max_redirects + 1):
            address = check_url(current, policy)
            target, headers, extensions = _pinned(current, address)
            with self._client.stream(
                "GET", target, headers=headers, extensions=extensions
            ) as response:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise UnsafeURLError("redirect without a location")
                    current = urljoin(current, location)
                    continue
                if response.status_code >= 500 or response.status_code == 429:
                    raise _RetryableStatus(response.status_code)
                if response.status_code != 200:
                    raise FetchError(f"image URL answered HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise UnsafeURLError(f"image URL body is larger than {policy.max_bytes} bytes")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body.extend(chunk)
                    if len(body) > policy.max_bytes:
                        raise UnsafeURLError(
                            f"image URL body is larger than {policy.max_bytes} bytes"
                        )
                    if time.monotonic() > deadline:
                        raise FetchError(f"image URL took longer than {policy.timeout_s:g}s")
                return bytes(body)
        raise UnsafeURLError(f"more than {policy.max_redirects} redirects")


def fetch_image_bytes(url: str, policy: FetchPolicy = FetchPolicy()) -> bytes:
    """Downloads one image URL under ``policy`` (a query's image); returns the body bytes."""
    with UrlFetcher(policy, sniff=False) as fetcher:
        return fetcher.fetch(url)
