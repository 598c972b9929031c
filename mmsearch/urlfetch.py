"""Fetch an image URL for a query, safely (off unless the caller turns it on).

Only http(s); the host must resolve to public addresses only (private, loopback,
link-local, multicast, reserved and unspecified addresses are refused — also after
every redirect, which is followed by hand and re-checked); the body is capped in
size and the whole fetch in time.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from mmsearch.errors import BadQueryError


class UnsafeURLError(BadQueryError):
    """The URL is not allowed (scheme, address, size or time)."""


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 3
    allow_private: bool = False  # tests only: lets a fetch reach a loopback test server


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
            raise UnsafeURLError(f"URL host {host!r} resolves to a non-public address ({addr}); refused")
    return str(infos[0][4][0]).split("%", 1)[0] if infos else None


def check_url(url: str, policy: FetchPolicy = FetchPolicy()) -> str | None:
    """Raises :class:`UnsafeURLError` unless ``url`` is http(s) to a public address;
    returns the checked address to connect to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURLError(f"only http and https image URLs are allowed, not {parts.scheme or 'none'!r}")
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


def fetch_image_bytes(url: str, policy: FetchPolicy = FetchPolicy()) -> bytes:
    """Downloads an image URL under ``policy``; returns the body bytes."""
    import httpx

    deadline = time.monotonic() + policy.timeout_s
    current = url
    with httpx.Client(follow_redirects=False, timeout=policy.timeout_s) as client:
        for _ in range(policy.max_redirects + 1):
            address = check_url(current, policy)
            target, headers, extensions = _pinned(current, address)
            with client.stream("GET", target, headers=headers, extensions=extensions) as response:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise UnsafeURLError("redirect without a location")
                    current = urljoin(current, location)
                    continue
                if response.status_code != 200:
                    raise BadQueryError(f"image URL answered HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise UnsafeURLError(f"image URL body is larger than {policy.max_bytes} bytes")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body.extend(chunk)
                    if len(body) > policy.max_bytes:
                        raise UnsafeURLError(f"image URL body is larger than {policy.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise UnsafeURLError(f"image URL took longer than {policy.timeout_s:g}s")
                return bytes(body)
    raise UnsafeURLError(f"more than {policy.max_redirects} redirects")
